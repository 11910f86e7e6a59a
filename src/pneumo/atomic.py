"""Outputs that are complete or absent: write beside the target, then rename over it.

A rename within one directory is atomic, so a reader (or DVC, hashing a stage's outputs) sees the
old file or folder or the new one, never a half-written one left by an interrupted stage.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON. NaN and infinity are refused: they are not JSON, and
    ``dvc metrics`` cannot read a file that has them (write ``None`` for a missing value)."""
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def remove(path: str | Path) -> None:
    """Delete a file, a link or a whole folder; nothing if it does not exist."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def swap_in(new: str | Path, target: str | Path) -> None:
    """Put ``new`` (a folder or a file beside ``target``) at ``target``, replacing what was there.

    The old ``target`` is renamed aside first and deleted last, so at every moment ``target`` is
    the old one or the new one (a folder cannot be renamed over a non-empty folder).
    """
    new, target = Path(new), Path(target)
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    remove(old)
    if target.exists() or target.is_symlink():
        os.replace(target, old)
    os.replace(new, target)
    remove(old)


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside ``target``; on success it replaces ``target`` whole.

    On an exception the folder is deleted and ``target`` is left as it was. What a killed run
    left beside ``target`` (``kill -9`` and SIGTERM run no ``finally``) is removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    )
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        swap_in(tmp, target)
    finally:
        remove(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(target: str | Path) -> list[Path]:
    """Delete the temporary files and folders beside ``target`` whose writer process is dead.

    Every temporary name here carries its writer's pid (``.<name>.<pid>.*``), so a run never
    removes what a live run, a parallel ``dvc exp run`` in the same folder say, is writing.
    """
    target = Path(target)
    removed = []
    for path in sorted(target.parent.glob(f".{target.name}.*")):
        pid = path.name[len(target.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            remove(path)
            removed.append(path)
    return removed
