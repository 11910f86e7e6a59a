"""Where an exported model comes from: data source, split counts, data hash and train params.

The train stage stores this dict in ``model.pt`` and prediction reads it back (``None`` for model
files from before it). Everything in it is a function of the code, params and data, because the
model file's bytes are compared across runs: no time and no git commit. The commit that made a
model is the git history of its hash: ``git log -S <md5> dvc.lock`` finds the commit whose
``dvc.lock`` records ``data/model``'s hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _file_md5(path: Path) -> str:
    with path.open("rb") as f:  # in chunks: a processed split of the full RSNA set is over a GB
        return hashlib.file_digest(f, "md5").hexdigest()


def dvc_dir_md5(root: str | Path) -> str:
    """The md5 DVC gives a directory (``<md5>.dir``, as in ``dvc.lock``): that of its sorted
    ``[{"md5", "relpath"}, ...]`` listing in JSON. Equal to ``dvc.lock``'s value as long as no
    ``.dvcignore`` hides a file of the directory."""
    root = Path(root)
    entries = [
        {"md5": _file_md5(p), "relpath": p.relative_to(root).as_posix()}
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]
    entries.sort(key=lambda e: e["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode()
    return hashlib.md5(listing).hexdigest() + ".dir"


def split_summary(targets: np.ndarray) -> dict[str, Any]:
    """Count, positives and prevalence of one split's 0/1 targets."""
    n = int(len(targets))
    positives = int(np.sum(targets))
    return {"n": n, "positives": positives, "prevalence": positives / n if n else None}


def training_provenance(
    source: str,
    train_targets: np.ndarray,
    val_targets: np.ndarray,
    processed_md5: str | None,
    train_params: Mapping[str, Any],
) -> dict[str, Any]:
    """The provenance dict of a model trained on ``source`` (data.source) with ``train_params``."""
    return {
        "data_source": source,
        "train": split_summary(train_targets),
        "val": split_summary(val_targets),
        # DVC's directory hash: compare with dvc.lock's entry for data/processed
        "data_processed_md5": processed_md5,
        "params": {"train": dict(train_params)},
    }


def provenance_warning(provenance: Mapping[str, Any] | None) -> str | None:
    """The warning every answer of a model trained on synthetic data carries; None otherwise."""
    if provenance is None or provenance.get("data_source") != "synthetic":
        return None
    return (
        "this model was trained on synthetic phantoms (data.source: synthetic): "
        "its predictions mean nothing for real patients"
    )
