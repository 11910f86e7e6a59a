"""The cam stage's inputs: one processed split with its predictions, and the decision threshold."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumo.boxes import parse_boxes

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class CamInputs:
    """One processed split (val or test) with its predictions, row-aligned."""

    images: np.ndarray  # uint8 (N, S, S), possibly a memmap
    patient_ids: list[str]
    targets: np.ndarray  # int (N,)
    boxes: list[np.ndarray]  # (K, 4) per row, S frame
    probs: np.ndarray  # float64 (N,) from the predictions file: the network's, uncalibrated
    logits: np.ndarray  # float64 (N,) from the predictions file
    # what decisions use: the probabilities on the operating point's (calibrated) scale
    decision_probs: np.ndarray | None = None

    def calibrated(self, temperature: float) -> CamInputs:
        """These inputs with ``decision_probs`` = sigmoid(logit / temperature) (evaluate's T)."""
        from pneumo.runtime import apply_temperature

        return replace(self, decision_probs=apply_temperature(self.logits, temperature))

    def decisions(self) -> np.ndarray:
        """The probabilities decisions are made on (``probs`` before :meth:`calibrated`)."""
        return self.probs if self.decision_probs is None else self.decision_probs


def read_predicted_split(processed_dir: Path, predictions_csv: Path, split: str) -> CamInputs:
    """Load <split>.npy + <split>.csv from ``processed_dir``; check the predictions file matches."""
    npy, csv = processed_dir / f"{split}.npy", processed_dir / f"{split}.csv"
    images = np.load(npy, mmap_mode="r")
    if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1] != images.shape[2]:
        raise ValueError(f"{npy}: expected uint8 (N, S, S), got {images.dtype} {images.shape}")
    index = _read_csv(csv, ["patientId", "target", "boxes"])
    preds = _read_csv(predictions_csv, ["patientId", "prob", "logit"])
    if len(index) != len(images):
        raise ValueError(f"{csv} has {len(index)} rows but {npy} has {len(images)} images")
    if (
        len(preds) != len(index)
        or not (preds["patientId"].values == index["patientId"].values).all()
    ):
        raise ValueError(
            f"{predictions_csv} does not list the patients of {csv} in the same order "
            "(stale predictions? run `dvc repro infer`)"
        )
    probs = preds["prob"].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(probs) | (probs < 0) | (probs > 1))
    if bad.size:
        raise ValueError(
            f"{predictions_csv} row {bad[0] + 2}: prob {probs[bad[0]]!r} not in [0, 1]"
        )
    boxes = [parse_boxes(b, f"{csv} row {i + 2}") for i, b in enumerate(index["boxes"])]
    return CamInputs(
        images=images,
        patient_ids=[str(p) for p in index["patientId"]],
        targets=index["target"].to_numpy(dtype=np.int64),
        boxes=boxes,
        probs=probs,
        logits=preds["logit"].to_numpy(dtype=np.float64),
    )


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    df = pd.read_csv(path, dtype={"patientId": str})
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    return df
