"""Files that are complete or absent: write beside the target, then rename over it.

A rename within one directory is atomic, so a reader (or DVC, hashing a stage's outputs) sees the
old file or the new one, never a half-written file left by an interrupted stage.
"""

from __future__ import annotations

import json
import os
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
