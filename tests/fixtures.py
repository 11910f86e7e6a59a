"""Fixtures for tests and benchmarks, kept out of the modules the stages depend on (editing one
would re-run the pipeline): the Kaggle archive of a synthetic raw dir, a small learnable dataset
in the processed layout, and the global-statistics bound of the synthetic task."""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from pneumo.atomic import atomic_path
from pneumo.rsna import CLASS_INFO_CSV, LABELS_CSV, TEST_IMAGES, TRAIN_IMAGES
from pneumo.synthetic.files import write_patients

# what the Kaggle client saves `kaggle competitions download` as
KAGGLE_ZIP_NAME = "rsna-pneumonia-detection-challenge.zip"


def write_kaggle_zip(raw_dir: Path, zip_path: Path, n_test_images: int = 2) -> Path:
    """Pack a raw dir as the Kaggle archive (same member names at the zip root).

    Adds ``n_test_images`` unlabelled test DICOMs, the sample submission and the credits note the
    real archive carries, so that extraction of only what the pipeline needs is exercised.
    """
    raw_dir, zip_path = Path(raw_dir), Path(zip_path)
    labels = raw_dir / LABELS_CSV
    images = sorted((raw_dir / TRAIN_IMAGES).glob("*.dcm"))
    if not labels.is_file() or not (raw_dir / CLASS_INFO_CSV).is_file() or not images:
        raise FileNotFoundError(f"{raw_dir} is not a raw dir (labels, class info, images)")
    size = int(pydicom.dcmread(images[0], stop_before_pixels=True).Rows)
    # test patients get their own random stream, derived from the labels so ids never collide
    test_seed = int.from_bytes(hashlib.sha256(labels.read_bytes()).digest()[:8], "big")
    with (
        atomic_path(zip_path) as tmp_zip,
        tempfile.TemporaryDirectory() as td,
        zipfile.ZipFile(tmp_zip, "w") as zf,
    ):
        test_rows = write_patients(test_seed, 0, n_test_images, size, td)
        for r in test_rows:
            name = f"{TEST_IMAGES}/{r['patientId']}.dcm"
            zf.write(Path(td) / f"{r['patientId']}.dcm", name, zipfile.ZIP_STORED)
        for path in images:
            zf.write(path, f"{TRAIN_IMAGES}/{path.name}", zipfile.ZIP_STORED)
        for name in (LABELS_CSV, CLASS_INFO_CSV):
            zf.write(raw_dir / name, name, zipfile.ZIP_DEFLATED)
        sub = "patientId,PredictionString\n" + "".join(
            f"{r['patientId']},0.5 0 0 100 100\n" for r in test_rows
        )
        zf.writestr("stage_2_sample_submission.csv", sub, zipfile.ZIP_DEFLATED)
        zf.writestr(
            "GCP Credits Request Link - RSNA.txt", "https://www.kaggle.com/\n", zipfile.ZIP_DEFLATED
        )
    return zip_path


def blob_images(
    n: int, size: int, rng: np.random.Generator, positive_fraction: float = 0.4
) -> tuple[np.ndarray, np.ndarray, list[list[list[float]]]]:
    """uint8 images ``(n, size, size)`` (noisy gradients; positives get a bright blob) + labels."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    targets = (rng.random(n) < positive_fraction).astype(np.int64)
    images = np.empty((n, size, size), dtype=np.uint8)
    boxes: list[list[list[float]]] = []
    for i in range(n):
        base = 60 + 60 * (yy / size) * rng.uniform(0.5, 1.5) + rng.normal(0, 12, (size, size))
        box: list[list[float]] = []
        if targets[i]:
            r = size * rng.uniform(0.08, 0.16)
            cy, cx = rng.uniform(0.25, 0.75, 2) * size
            base += rng.uniform(60, 110) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            box = [[float(cx - 2 * r), float(cy - 2 * r), float(4 * r), float(4 * r)]]
        images[i] = np.clip(base, 0, 255).astype(np.uint8)
        boxes.append(box)
    return images, targets, boxes


def write_blob_dataset(
    out_dir: str | Path,
    sizes: Mapping[str, int],
    image_size: int = 32,
    seed: int = 0,
    label_noise: float | Mapping[str, float] = 0.0,
) -> Path:
    """Write ``data/processed``'s layout (npy, index CSVs, stats.json) from :func:`blob_images`.

    ``label_noise`` (one number, or one per split) flips that fraction of the labels, so a model
    cannot reach AUROC 1.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_pixels = None
    for split, n in sizes.items():
        images, targets, boxes = blob_images(n, image_size, rng)
        noise = label_noise.get(split, 0.0) if isinstance(label_noise, Mapping) else label_noise
        flip = rng.random(n) < noise
        targets = np.where(flip, 1 - targets, targets)
        np.save(out / f"{split}.npy", images)
        ids = [f"{split}-{i:05d}" for i in range(n)]
        pd.DataFrame(
            {
                "patientId": ids,
                "groupId": ids,
                "target": targets,
                "class": np.where(targets == 1, "Lung Opacity", "Normal"),
                "view": "PA",
                "sex": "F",
                "age": 50,
                "boxes": [json.dumps(b) for b in boxes],
            }
        ).to_csv(out / f"{split}.csv", index=False)
        if split == "train":
            train_pixels = images.astype(np.float64) / 255.0
    if train_pixels is None:
        raise ValueError("sizes must include 'train' (stats.json comes from it)")
    stats = {
        "mean": float(train_pixels.mean()),
        "std": float(train_pixels.std()),
        "image_size": image_size,
        "resize_mode": "pad",
        "n_train": len(train_pixels),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return out


def global_features(image: np.ndarray) -> np.ndarray:
    """Global statistics of a uint8 image: mean, std and a 16-bin normalised histogram."""
    img = np.asarray(image, dtype=np.float64)
    hist = np.histogram(img, bins=16, range=(0, 256))[0] / img.size
    return np.concatenate([[img.mean() / 255, img.std() / 255], hist])


def global_stats_auroc(features: np.ndarray, target: np.ndarray, folds: int = 5) -> float:
    """Cross-validated AUROC of a logistic regression on ``features`` (the shortcut bound)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    return float(cross_val_score(model, features, target, cv=cv, scoring="roc_auc").mean())
