"""The out-of-distribution score on real files a clone does not have: CT, MR and ultrasound
DICOMs, and real chest radiographs (out of distribution too for a model trained on synthetic
phantoms), against the test split.

Reads ``../shared/data`` (or ``PNEUMO_SHARED_DATA``): ``dicom-zoo/zoo.csv`` and its files, and
``real-cxr/`` (PNG and JPEG, recursively). Every file goes through the predict command's reader
(``pneumo.imaging.load_square``, the intended-use gate skipped: the point is the score), and the
model is the export stage's ``data/export/model.onnx``. Prints, per group, the files scored, the
AUROC of the score for telling them from the test split, and the fraction flagged.

    python bench/ood.py
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from pneumo.image_io.errors import ImageReadError
from pneumo.imaging import load_square
from pneumo.layout import ONNX_MODEL, PROCESSED
from pneumo.runtime.onnx_model import load_onnx

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PNEUMO_SHARED_DATA", ROOT.parent / "shared" / "data"))
NON_CHEST = ("CT", "MR", "US")
SUFFIXES = (".png", ".jpg", ".jpeg")


def scores(model, images: np.ndarray) -> np.ndarray:
    return model.ood.score(model.scan(images, 64)[1])


def load_all(model, paths: list[Path]) -> tuple[np.ndarray, int]:
    """The files as the model sees them, and how many could not be read."""
    images, failed = [], 0
    for path in paths:
        try:
            images.append(load_square(path, model.image_size, model.resize_mode).image)
        except ImageReadError:
            failed += 1
    return np.stack(images) if images else np.empty((0, model.image_size, model.image_size)), failed


def main() -> None:
    os.chdir(ROOT)
    if not (SHARED / "dicom-zoo" / "zoo.csv").is_file():
        sys.exit(f"{SHARED} has no dicom-zoo/zoo.csv: set PNEUMO_SHARED_DATA")
    model = load_onnx(ONNX_MODEL)
    if model.ood is None:
        sys.exit(f"{ONNX_MODEL} carries no out-of-distribution statistics: run `dvc repro export`")
    test = scores(model, np.load(PROCESSED / "test.npy"))
    with (SHARED / "dicom-zoo" / "zoo.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["Modality"] in NON_CHEST and r["decode"] == "ok"]
    groups = {
        "zoo CT, MR, US DICOMs": [SHARED / "dicom-zoo" / r["file"] for r in rows],
        "real chest X-rays (PNG, JPEG)": sorted(
            p for p in (SHARED / "real-cxr").rglob("*") if p.suffix.lower() in SUFFIXES
        ),
    }
    print(
        f"{ONNX_MODEL} (threshold {model.ood.threshold:.2f}, the {model.ood.quantile} quantile "
        f"of val); test split: {len(test)} films, {np.mean(model.ood.flag(test)):.3f} flagged"
    )
    for name, paths in groups.items():
        images, failed = load_all(model, paths)
        other = scores(model, images)
        auroc = roc_auc_score(np.r_[np.zeros(len(test)), np.ones(len(other))], np.r_[test, other])
        print(
            f"{name}: {len(other)} scored ({failed} unreadable), AUROC against the test split "
            f"{auroc:.3f}, flagged {np.mean(model.ood.flag(other)):.3f}, median score "
            f"{np.median(other):.1f} (test {np.median(test):.1f})"
        )


if __name__ == "__main__":
    main()
