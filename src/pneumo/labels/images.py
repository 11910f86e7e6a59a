"""Each labelled patientId -> its one image file under the train images folder."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pneumo.labels.errors import LabelError, listed
from pneumo.rsna import TRAIN_IMAGES
from pneumo.sniff import IMAGE_SUFFIXES

# the names the download stage stores images under (pneumo.sources.folder.sniff_image)
IMAGE_FILE_SUFFIXES = (".dcm", *IMAGE_SUFFIXES)


def match_images(table: pd.DataFrame, raw_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Add the `image` path (relative to raw_dir); return the names of images that have no label."""
    images_dir = Path(raw_dir) / TRAIN_IMAGES
    if not images_dir.is_dir():
        raise LabelError(f"{images_dir} not found (the download stage writes it)")
    by_stem: dict[str, str] = {}
    duplicates = []
    with os.scandir(images_dir) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if entry.name.startswith(".") or suffix.lower() not in IMAGE_FILE_SUFFIXES:
                continue
            if stem in by_stem:
                duplicates.append(f"{by_stem[stem]} / {entry.name}")
            by_stem[stem] = entry.name
    if duplicates:
        raise LabelError(
            f"{images_dir}: {len(duplicates):,} patientId(s) have more than one image file: "
            f"{listed(sorted(duplicates))}"
        )
    missing = [pid for pid in table["patientId"] if pid not in by_stem]
    if missing:
        # RSNA ships every labelled image, so a gap means a broken download or a wrong folder:
        # dropping the rows silently would change the data set under the experiment
        raise LabelError(
            f"{len(missing):,} labelled patientId(s) have no image file "
            f"({'/'.join(IMAGE_FILE_SUFFIXES)}) in {images_dir}: {listed(missing)}"
        )
    labelled = set(table["patientId"])
    unlabelled = sorted(name for stem, name in by_stem.items() if stem not in labelled)
    out = table.copy()
    out["image"] = [f"{TRAIN_IMAGES}/{by_stem[pid]}" for pid in table["patientId"]]
    return out, unlabelled
