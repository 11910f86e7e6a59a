"""The data/raw layout check, ``SourceError``, and the rule that links stay inside the source."""

from __future__ import annotations

import csv
from pathlib import Path

from pneumo.rsna import (
    CLASS_INFO_CSV,
    LABEL_COLUMNS,
    LABELS_CSV,
    TRAIN_IMAGES,
)


class SourceError(RuntimeError):
    """A data source cannot become data/raw/; the message says what is wrong and what to do."""


def check_raw(raw_dir: Path) -> None:
    """Raise SourceError naming whatever the Kaggle layout needs and ``raw_dir`` lacks."""
    raw_dir = Path(raw_dir)
    missing = [name for name in (LABELS_CSV, CLASS_INFO_CSV) if not (raw_dir / name).is_file()]
    images = raw_dir / TRAIN_IMAGES
    if not images.is_dir():
        missing.append(f"{TRAIN_IMAGES}/")
    elif not any(p.is_file() for p in images.iterdir()):
        missing.append(f"{TRAIN_IMAGES}/ (it is empty)")
    if missing:
        raise SourceError(f"{raw_dir} lacks {', '.join(missing)}")
    with open(raw_dir / LABELS_CSV, newline="") as f:
        header = next(csv.reader(f), [])
    absent = [c for c in LABEL_COLUMNS if c not in header]
    if absent:
        raise SourceError(f"{raw_dir / LABELS_CSV}: header lacks column(s) {', '.join(absent)}")


def outside(path: Path, root: Path) -> str | None:
    """Why ``path`` (a link) must not be read, or None: links are followed only inside ``root``."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.is_relative_to(root.resolve()):
        return None
    return f"a symbolic link to {target}, outside {root}"


def refuse_outside(path: Path, root: Path) -> None:
    """Raise SourceError when ``path`` is a symbolic link leading outside ``root``."""
    reason = outside(path, root)
    if reason:
        # what is copied enters data/raw, the DVC cache and the team remote
        raise SourceError(f"{path}: {reason}: refused (copy the file itself into the folder)")
