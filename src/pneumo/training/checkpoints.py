"""Checkpoints that are complete or absent, and free of the machine's paths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pneumo.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside it, fsync, then rename over the old one.

    Lightning's own ``_atomic_save`` goes through fsspec, which writes to ``tempfile.mkstemp()``
    (the system temp dir) and ``shutil.move``s the file: where /tmp is another filesystem (tmpfs)
    that move is a copy into the final name, so a kill mid-copy leaves a torn ``best.ckpt``.
    A rename within one directory is atomic: readers see the old file or the new one.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            torch.save(_without_machine_paths(checkpoint, os.getcwd()), f)
            f.flush()
            os.fsync(f.fileno())
        fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _without_machine_paths(obj: Any, root: str) -> Any:
    """``obj`` with every string naming a path under ``root`` made relative to it.

    ModelCheckpoint keeps its ``dirpath`` and best/last paths as absolute, real paths in the
    checkpoint, so two clones of one commit wrote different checkpoint bytes, and a different
    ``data/model`` hash in ``dvc.lock``. Relative to the repository root they are the same.
    """
    if isinstance(obj, str):
        prefix = root.rstrip(os.sep) + os.sep
        return os.path.relpath(obj, root) if obj.startswith(prefix) or obj == root else obj
    if isinstance(obj, dict):
        # keys too: best_k_models maps checkpoint paths to scores
        return {
            _without_machine_paths(k, root): _without_machine_paths(v, root) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return type(obj)(_without_machine_paths(v, root) for v in obj)
    return obj


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete ``*.tmp`` files a killed run left in ``directory``; returns what was removed."""
    directory = Path(directory)
    stale = sorted(directory.glob("*.tmp")) if directory.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
