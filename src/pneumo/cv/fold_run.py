"""One cross-validation fold: train on the other folds, then predict the fold's own images
(its validation) and the test split with the fold's model, as the infer stage does.

Writes ``data/cv/fold<f>/`` whole or not at all: ``model.pt``, ``val.csv`` and ``test.csv`` (the
prediction columns, logits included), ``calibration.json`` (the temperature fitted on the fold's
val logits, with the model's sha256: what an ensemble prediction applies to this member) and
``train.json`` (the fit's summary). The fold's data and
checkpoints live in a temporary directory: only the model is worth caching.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.atomic import atomic_dir, write_json
from pneumo.calibration import fit_temperature
from pneumo.cv.folds import write_fold_data
from pneumo.model import Exported, load_exported
from pneumo.params import CvParams, TrainParams
from pneumo.split_inference import predict_split
from pneumo.training.run import train_and_export

FOLD_MODEL, FOLD_SUMMARY, FOLD_CALIBRATION = "model.pt", "train.json", "calibration.json"


def run_fold(
    processed: Path,
    out: Path,
    fold: int,
    cv: CvParams,
    train: TrainParams,
    source: str,
    batch_size: int,
) -> dict[str, Any] | None:
    """Train fold ``fold`` and write ``out``; the fit's summary (None on a DDP rank other than
    the first, which only trains)."""
    if fold not in cv.fold_ids:
        raise ValueError(f"fold {fold} is not one of cv.fold_ids {cv.fold_ids}")
    with tempfile.TemporaryDirectory(prefix=f"pneumo-cv-fold{fold}-") as work:
        data, model_dir = Path(work) / "processed", Path(work) / "model"
        write_fold_data(processed, data, fold, cv.folds, cv.seed)
        run = train_and_export(data, model_dir, train, source, plots_dir=None)
        if not run.is_global_zero:
            return None
        with atomic_dir(out) as tmp:
            shutil.move(model_dir / FOLD_MODEL, tmp / FOLD_MODEL)
            model = load_exported(tmp / FOLD_MODEL)
            sources = {"val": data, "test": processed}  # the fold's own images, the test split
            rows = {split: _predict(model, sources[split], split, batch_size) for split in sources}
            for split, df in rows.items():
                df.to_csv(tmp / f"{split}.csv", index=False)
            t = fit_temperature(rows["val"]["target"].astype(int), rows["val"]["logit"])
            write_json(tmp / FOLD_CALIBRATION, {"temperature": t, "model_sha256": model.sha256})
            write_json(tmp / FOLD_SUMMARY, run.summary)
    return run.summary


def _predict(model: Exported, processed: Path, split: str, batch_size: int) -> pd.DataFrame:
    images = np.load(processed / f"{split}.npy", mmap_mode="r")
    index = pd.read_csv(processed / f"{split}.csv", dtype=str, keep_default_na=False)
    return predict_split(model, images, index, batch_size, str(processed / split))
