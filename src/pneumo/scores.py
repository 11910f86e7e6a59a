"""Scores of one set of predictions: threshold-free (AUROC, AUPRC, Brier, ECE, log loss),
counts and rates at a threshold, and the calibration bins. Conventions: ``pneumo.eval_checks``."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    log_loss,
    roc_auc_score,
)

from pneumo.eval_checks import check_binary, require_both_classes


def ratio(num: int, den: int) -> float | None:
    """``num / den``, or None when ``den`` is 0 (JSON null, never NaN)."""
    return num / den if den else None


def threshold_free(y: Any, p: Any, n_bins: int) -> dict[str, float | int]:
    """Count, prevalence, AUROC, AUPRC, Brier, ECE and log loss of one split (both classes)."""
    y, p = check_binary(y, p)
    require_both_classes(y, "threshold_free")
    return {
        "n": len(y),
        "positives": int(y.sum()),
        "prevalence": float(y.mean()),
        "auroc": float(roc_auc_score(y, p)),
        "auprc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p, n_bins),
        "logloss": float(log_loss(y, p, labels=[0, 1])),  # clips p to float64 eps, as before
    }


def confusion_counts(y: Any, p: Any, threshold: float) -> dict[str, int]:
    """tp, fp, tn, fn with the decision ``p >= threshold``."""
    y, p = check_binary(y, p)
    if len(y) == 0:  # scikit-learn refuses empty input; a subgroup level can be empty
        return {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    pred = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel().tolist()
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def threshold_metrics(y: Any, p: Any, threshold: float) -> dict[str, float | int | None]:
    """Accuracy, precision, recall (sensitivity), specificity, NPV, F1 and the counts.

    A ratio with a zero denominator is None (not NaN). F1 = 2tp / (2tp + fp + fn), so it is 0,
    not None, when there are positives but none is predicted.
    """
    c = confusion_counts(y, p, threshold)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    return {
        "threshold": float(threshold),
        "accuracy": ratio(tp + tn, tp + fp + tn + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        **c,
    }


def calibration_table(y: Any, p: Any, n_bins: int) -> dict[str, np.ndarray]:
    """Per equal-width bin of [0, 1]: lower/upper edge, count, mean probability, fraction positive.

    Bin ``b`` holds ``b/n_bins <= p < (b+1)/n_bins``; the last bin also holds ``p == 1``. Empty bins
    have count 0 and NaN means (the caller drops them; they are never written to JSON).

    Written here rather than taken from scikit-learn's ``calibration_curve``, which returns neither
    the counts (the ECE weights and the plot's ``n`` column) nor the empty bins, and puts a
    probability on an inner edge (0.3 of tied scores, say) in the bin below, not the one above.
    """
    y, p = check_binary(y, p)
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(b, weights=p, minlength=n_bins) / count
        frac_pos = np.bincount(b, weights=y, minlength=n_bins) / count
    edges = np.arange(n_bins + 1) / n_bins
    return {
        "lo": edges[:-1],
        "hi": edges[1:],
        "count": count,
        "mean_prob": mean_prob,
        "frac_pos": frac_pos,
    }


def expected_calibration_error(y: Any, p: Any, n_bins: int) -> float:
    """ECE = sum over non-empty bins of (n_bin / n) * |mean prob in bin - fraction positive in bin|.

    Bins as in ``calibration_table`` (``n_bins`` equal-width bins of [0, 1]).
    """
    t = calibration_table(y, p, n_bins)
    used = t["count"] > 0
    weights = t["count"][used] / t["count"].sum()
    return float(np.sum(weights * np.abs(t["mean_prob"][used] - t["frac_pos"][used])))
