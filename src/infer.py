"""Stage infer: probabilities of the exported model for the val and test arrays.

One batched, gradient-free pass per model; the evaluate stage computes every metric from these
files, so changing thresholds never re-runs the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Before torch is imported: OpenMP threads that sleep instead of spinning while they wait; beside
# one busy process a training step is 1.8x faster on 2 cores, alone 5 % slower (bench/omp.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd

from pneumo.atomic import atomic_dir
from pneumo.model import Exported, load_exported, predict_proba
from pneumo.params import load_or_exit

MODEL = Path("data/model/model.pt")
PROCESSED = Path("data/processed")
PREDICTIONS = Path("data/predictions")
SPLITS = ("val", "test")
COLUMNS = ["patientId", "target", "prob", "view", "sex", "age"]  # the data/predictions contract


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
    prob = predict_proba(model.net, images, model.mean, model.std, batch_size)
    return index.assign(prob=prob)[COLUMNS]


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
        for split in SPLITS:
            images = np.load(processed / f"{split}.npy", mmap_mode="r")
            # read every column as text so view/sex/age pass through unchanged (empty stays empty)
            index = pd.read_csv(processed / f"{split}.csv", dtype=str, keep_default_na=False)
            rows = predict_split(model, images, index, batch_size, str(processed / split))
            rows.to_csv(tmp / f"{split}.csv", index=False)


def main() -> None:
    params = load_or_exit("evaluate")
    run(MODEL, PROCESSED, PREDICTIONS, params.batch_size)
    print(f"wrote {', '.join(str(PREDICTIONS / f'{s}.csv') for s in SPLITS)}")


if __name__ == "__main__":
    main()
