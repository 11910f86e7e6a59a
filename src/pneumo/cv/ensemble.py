"""The folds together (stage cv_aggregate): each fold's validation figures, their mean and sd,
and the fold ensemble's test figures.

Each fold's temperature is fitted on its own validation fold, as evaluate fits the single
model's. The ensemble's probability for a test image is the mean of the k calibrated fold
probabilities; its operating point is chosen on the out-of-fold probabilities (every train+val
image predicted by the one model that did not train on it), and test is scored by
:func:`pneumo.evaluation.split_metrics`, as the single model is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.calibration import fit_temperature
from pneumo.eval_checks import check_thresholds, threshold_key
from pneumo.eval_outputs import round_floats
from pneumo.evaluation import read_predictions, split_metrics
from pneumo.operating_point import threshold_for_sensitivity
from pneumo.runtime import apply_temperature
from pneumo.scores import threshold_free

FOLD_FIGURES = ("auroc", "auprc", "brier", "ece")  # of each fold's calibrated val probabilities
ENSEMBLE_FIGURES = ("n", "auroc", "auroc_lo", "auroc_hi", "auprc", "brier", "ece")
ENSEMBLE_DECISION_FIGURES = ("threshold", "recall", "specificity")  # at the operating point
UNCERTAINTY_BINS = 3  # of the members' sd on test: tertiles, enough cases per bin at n = 300


def read_folds(fold_dirs: Sequence[Path]) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """(val, test) predictions of each fold, validated; every fold's test rows in one order."""
    folds = [(read_predictions(d / "val.csv"), read_predictions(d / "test.csv")) for d in fold_dirs]
    first = folds[0][1]["patientId"]
    for d, (_, test) in zip(fold_dirs, folds, strict=True):
        if not test["patientId"].equals(first):
            raise ValueError(f"{d / 'test.csv'}: not the test rows of {fold_dirs[0]}, in order")
    return folds


def aggregate(
    folds: Sequence[tuple[pd.DataFrame, pd.DataFrame]],
    *,
    thresholds: Sequence[float],
    target_sensitivity: float,
    bootstrap: int,
    seed: int,
    calibration_bins: int,
) -> dict[str, Any]:
    """The detail of ``metrics/cv.json``: per fold, across folds (mean, sd) and the ensemble."""
    per_fold, oof, test_probs = [], [], []
    for val, test in folds:
        t = fit_temperature(val["target"].to_numpy(), val["logit"].to_numpy())
        p_val = apply_temperature(val["logit"].to_numpy(), t)
        free = threshold_free(val["target"].to_numpy(), p_val, calibration_bins)
        per_fold.append({"n_val": free["n"], "temperature": t} | {k: free[k] for k in FOLD_FIGURES})
        oof.append((val["target"].to_numpy(), p_val))
        test_probs.append(apply_temperature(test["logit"].to_numpy(), t))
    y_oof, p_oof = (np.concatenate(a) for a in zip(*oof, strict=True))
    op = threshold_for_sensitivity(y_oof, p_oof, target_sensitivity)
    decisions = {threshold_key(t): t for t in check_thresholds(thresholds)} | {"op": op}
    y_test, p_test = folds[0][1]["target"].to_numpy(), np.mean(test_probs, axis=0)
    sd_test = np.std(test_probs, axis=0)  # what prediction reports as prob_sd
    ensemble = split_metrics(y_test, p_test, decisions, bootstrap, seed, calibration_bins)
    across = {}
    for key in (*FOLD_FIGURES, "temperature"):
        values = [f[key] for f in per_fold]
        across[key] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1))}
    return round_floats(
        {
            "folds": len(folds),
            "val": across,
            "ensemble": {
                "method": "mean",
                "test": ensemble,
                "error_by_sd": error_by_uncertainty(y_test, p_test, sd_test, op),
                # what prediction with the ensemble decides at (data/cv_operating_point.json)
                "operating_point": {
                    "threshold": op,
                    "target_sensitivity": target_sensitivity,
                    "method": "target_sensitivity",
                    "chosen_on": "out-of-fold probabilities",
                    "n_val_positives": int(y_oof.sum()),
                },
            },
            "per_fold": per_fold,
        }
    )


def error_by_uncertainty(
    y: np.ndarray, p: np.ndarray, sd: np.ndarray, threshold: float, bins: int = UNCERTAINTY_BINS
) -> list[dict[str, Any]]:
    """The error rate at ``threshold`` per bin of the members' sd (equal-count bins, lowest sd
    first): if the uncertainty means something, the error rate rises from bin to bin."""
    order = np.argsort(sd, kind="stable")
    wrong = (p >= threshold).astype(int) != y
    return [
        {
            "sd_lo": float(sd[rows[0]]),
            "sd_hi": float(sd[rows[-1]]),
            "n": len(rows),
            "error_rate": float(wrong[rows].mean()),
        }
        for rows in np.array_split(order, bins)
        if len(rows)
    ]


def cv_headline(detail: dict[str, Any]) -> dict[str, Any]:
    """``metrics/cv.json``: folds, the folds' val figures (mean and sd), the ensemble's test
    figures with the AUROC interval and the operating point's trade-off."""
    test = detail["ensemble"]["test"]
    return {
        "folds": detail["folds"],
        "val": {k: detail["val"][k] for k in FOLD_FIGURES},
        "ensemble": {
            "test": {k: test[k] for k in ENSEMBLE_FIGURES}
            | {"op": {k: test["op"][k] for k in ENSEMBLE_DECISION_FIGURES}}
        },
    }
