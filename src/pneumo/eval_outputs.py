"""What the evaluate stage writes: the metrics (rounded for readable diffs; the headline and the
detail, ``pneumo.headline``), the operating point, and the plot data read by the top-level
``plots:`` section of dvc.yaml."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from pneumo.atomic import atomic_dir, write_json
from pneumo.eval_checks import EvaluationError
from pneumo.headline import eval_headline
from pneumo.scores import calibration_table

LABELS = {0: "negative", 1: "positive"}  # confusion-matrix plot labels
SIGNIFICANT_DIGITS = 6  # rounding of the metrics and plot data, so diffs stay readable


@dataclass(frozen=True)
class Evaluation:
    """What the evaluate stage writes: metrics (JSON-ready), the operating point, plot data."""

    metrics: dict[str, Any]
    operating_point: dict[str, Any]
    plots: dict[str, list[dict[str, Any]]]  # file name under plots/eval -> rows


def round_floats(obj: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """Floats rounded to ``digits`` significant digits, recursively; numpy scalars to Python."""
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, digits) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise EvaluationError(f"non-finite value {obj} cannot be written to JSON")
        return float(f"{obj:.{digits}g}")
    return obj


def plot_data(
    arrays: Mapping[str, tuple[np.ndarray, np.ndarray]],
    decisions: Mapping[str, float],
    calibration_bins: int,
    uncalibrated: Mapping[str, tuple[np.ndarray, np.ndarray]],
    grid_step: float = 0.01,
) -> dict[str, list[dict[str, Any]]]:
    """Plot rows, by file name under plots/eval.

    Per split: ROC, PR, calibration and sensitivity/specificity against threshold; the
    calibration of the ``uncalibrated`` probabilities too (the reliability plot shows both); the
    ideal calibration diagonal as a reference line; ``confusion/<decision>.json`` per decision
    on test, one row per case (DVC's confusion template counts them), in one folder so that one
    dvc.yaml entry covers any list of thresholds.
    """
    plots: dict[str, list[dict[str, Any]]] = {}
    grid = np.round(np.arange(0.0, 1.0 + grid_step / 2, grid_step), 10)
    for name, (y, p) in arrays.items():
        fpr, tpr, thr = roc_curve(y, p, drop_intermediate=True)
        thr = np.minimum(thr, 1.0)  # inf ("nothing positive") does not survive CSV/JSON tools
        plots[f"roc_{name}.csv"] = _rows(fpr=fpr, tpr=tpr, threshold=thr)
        precision, recall, thr = precision_recall_curve(y, p)
        # thresholds descending, without scikit-learn's appended (recall 0, precision 1) end
        plots[f"pr_{name}.csv"] = _rows(
            recall=recall[-2::-1], precision=precision[-2::-1], threshold=thr[::-1]
        )
        plots[f"calibration_{name}.csv"] = _calibration_rows(y, p, calibration_bins)
        pred = p[None, :] >= grid[:, None]
        sens = (pred & (y == 1)).sum(axis=1) / y.sum()
        spec = (~pred & (y == 0)).sum(axis=1) / (len(y) - y.sum())
        plots[f"threshold_{name}.csv"] = _rows(threshold=grid, sensitivity=sens, specificity=spec)
    for name, (y, p) in uncalibrated.items():
        plots[f"calibration_{name}_uncalibrated.csv"] = _calibration_rows(y, p, calibration_bins)
    plots["calibration_ideal.csv"] = _rows(
        mean_prob=np.array([0.0, 1.0]), frac_pos=np.array([0.0, 1.0])
    )
    y, p = arrays["test"]
    for key, t in decisions.items():
        plots[f"confusion/{key}.json"] = [
            {"actual": LABELS[int(a)], "predicted": LABELS[int(b)]}
            for a, b in zip(y, p >= t, strict=True)
        ]
    return plots


def _calibration_rows(y: np.ndarray, p: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    cal = calibration_table(y, p, n_bins)
    used = cal["count"] > 0
    return _rows(
        mean_prob=cal["mean_prob"][used], frac_pos=cal["frac_pos"][used], n=cal["count"][used]
    )


def _rows(**columns: np.ndarray) -> list[dict[str, Any]]:
    names = list(columns)
    return [
        {k: round_floats(v.item()) for k, v in zip(names, vals, strict=True)}
        for vals in zip(*columns.values(), strict=True)
    ]


def write_evaluation(
    evaluation: Evaluation,
    metrics_path: str | Path,
    detail_path: str | Path,
    plots_dir: str | Path,
    op_path: str | Path,
) -> None:
    """Write the headline metrics and their detail (JSON), the plot files (a fresh directory,
    swapped in whole) and the operating point."""
    with atomic_dir(plots_dir) as tmp:
        for name, rows in evaluation.plots.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            if name.endswith(".csv"):
                pd.DataFrame(rows).to_csv(tmp / name, index=False)
            else:
                with (tmp / name).open("w") as f:
                    json.dump(rows, f, allow_nan=False)
    write_json(op_path, evaluation.operating_point)
    write_json(detail_path, evaluation.metrics)
    write_json(metrics_path, eval_headline(evaluation.metrics))
