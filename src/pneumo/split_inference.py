"""The infer stage's work: the exported model's logits and probabilities for the processed val
and test arrays, one batched, gradient-free pass each, written as data/predictions/<split>.csv,
with the sha256 of the model that made them in data/predictions/model.json (evaluate writes it
beside the temperature it fits, so that prediction applies T to this model only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo.atomic import atomic_dir, write_json
from pneumo.layout import PREDICTED_SPLITS, PREDICTION_COLUMNS, PREDICTIONS_MODEL
from pneumo.model import Exported, load_exported, predict_logits, probabilities
from pneumo.progress import track_batches

CHUNK_BATCHES = 8  # batches between two progress updates


def predict_split(
    model: Exported, images: np.ndarray, index: pd.DataFrame, batch_size: int, source: str
) -> pd.DataFrame:
    """The prediction rows of one split, in the processed row order."""
    s = model.image_size
    if images.ndim != 3 or images.shape[1:] != (s, s):
        raise ValueError(
            f"{source}.npy holds images of shape {images.shape[1:]} but the model expects "
            f"({s}, {s}) (preprocess.image_size at training time): re-run preprocess and train "
            "with the same preprocess.image_size"
        )
    if len(images) != len(index):
        raise ValueError(
            f"{source}.npy has {len(images)} images but {source}.csv {len(index)} rows"
        )
    # in chunks of whole batches, so each batch (and each probability) is what one call gives
    step = batch_size * CHUNK_BATCHES
    parts = [
        predict_logits(model.net, images[chunk], model.mean, model.std, batch_size)
        for chunk in track_batches(len(images), step, f"infer: {Path(source).name}", "images")
    ]
    logit = np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)
    return index.assign(prob=probabilities(logit), logit=logit.astype(np.float64))[
        list(PREDICTION_COLUMNS)
    ]


def run(model_path: Path, processed: Path, out_dir: Path, batch_size: int) -> None:
    """Predict every split into a fresh directory, swapped in whole when complete."""
    model = load_exported(model_path)
    with (processed / "stats.json").open() as f:
        mode = json.load(f)["resize_mode"]
    if mode != model.resize_mode:
        raise ValueError(
            f"{processed / 'stats.json'} says resize_mode {mode!r} but {model_path} was trained "
            f"on {model.resize_mode!r}: re-run preprocess and train with the same setting"
        )
    with atomic_dir(out_dir) as tmp:
        for split in PREDICTED_SPLITS:
            images = np.load(processed / f"{split}.npy", mmap_mode="r")
            # read every column as text so view/sex/age pass through unchanged (empty stays empty)
            index = pd.read_csv(processed / f"{split}.csv", dtype=str, keep_default_na=False)
            rows = predict_split(model, images, index, batch_size, str(processed / split))
            rows.to_csv(tmp / f"{split}.csv", index=False)
        write_json(tmp / PREDICTIONS_MODEL, {"sha256": model.sha256})
