"""Evaluation of predicted probabilities: threshold-free and thresholded metrics, operating points
chosen on validation, bootstrap confidence intervals, calibration, subgroups, and the eval outputs.

Conventions used throughout:

- ``y`` is the 0/1 ground truth, ``p`` the predicted probability of the positive class; a case is
  called positive when ``p >= threshold``.
- A ratio whose denominator is zero (precision with no predicted positives, specificity with no
  negatives, ...) is ``None``, written as JSON ``null``: never NaN, which is not valid JSON.
- AUROC needs both classes. For a whole split that is an error (``EvaluationError``): no
  operating point can be chosen and no test result means anything. For a subgroup it is ``None``
  with an ``auroc_note`` saying why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from pneumo.atomic import atomic_dir, write_json

EPS = float(np.finfo(np.float64).eps)  # log-loss clipping, the same as scikit-learn's
PREDICTION_COLUMNS = ("patientId", "target", "prob", "view", "sex", "age")
SUBGROUP_LEVELS = {"view": ("PA", "AP"), "sex": ("M", "F")}  # always reported, for stable keys
LABELS = {0: "negative", 1: "positive"}  # confusion-matrix plot labels
SIGNIFICANT_DIGITS = 6  # rounding of eval.json and plot data, so diffs stay readable


class EvaluationError(ValueError):
    """The predictions or the evaluate params cannot be evaluated; the message says why."""


# ----------------------------------------------------------------------------------------------
# Validation


def check_binary(y: Any, p: Any, source: str = "predictions") -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(y int64 0/1, p float64 in [0, 1])``; errors name ``source`` and the row."""
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise EvaluationError(f"{source}: target and prob must be 1-D of equal length")
    bad_y = ~np.isin(y, (0, 1))
    if bad_y.any():
        i = int(np.argmax(bad_y))
        raise EvaluationError(f"{source}: row {i}: target {y[i].item()!r} is not 0 or 1")
    bad_p = ~((p >= 0.0) & (p <= 1.0))  # NaN fails both comparisons
    if bad_p.any():
        i = int(np.argmax(bad_p))
        raise EvaluationError(
            f"{source}: row {i}: prob {p[i].item()} is not a probability in [0, 1]"
        )
    return y.astype(np.int64), p


def _require_both_classes(y: np.ndarray, source: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        only = "positive" if n_pos else "negative"
        raise EvaluationError(
            f"{source}: all {len(y)} cases are {only}; AUROC, sensitivity and specificity need "
            "both classes, so nothing can be evaluated or chosen on it (check the split)"
        )


def check_thresholds(thresholds: Iterable[Any], name: str = "thresholds") -> list[float]:
    """Thresholds as floats, each in [0, 1] and distinct; errors name ``name`` and the index."""
    out: list[float] = []
    for i, t in enumerate(thresholds):
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise EvaluationError(f"{name}[{i}]={t!r} must be a number in [0, 1]")
        if float(t) in out:
            raise EvaluationError(f"{name}[{i}]={t!r} is listed twice")
        out.append(float(t))
    return out


def threshold_key(threshold: float) -> str:
    """A short, collision-free key: 0.5 -> t050, 0.25 -> t025, 0.125 -> t0125, 1 -> t100.

    The key is "t", the integer digit, then the decimals of the shortest exact decimal form,
    padded to two digits; distinct values in [0, 1] give distinct keys.
    """
    if not 0.0 <= threshold <= 1.0:
        raise EvaluationError(f"threshold {threshold!r} must be in [0, 1]")
    whole, _, frac = np.format_float_positional(float(threshold), trim="-").partition(".")
    return f"t{whole}{frac.ljust(2, '0')}"


# ----------------------------------------------------------------------------------------------
# Threshold-free metrics


def _auc_rank(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC along the last axis by the Mann-Whitney statistic (ties count one half)."""
    ranks = rankdata(p, axis=-1)  # average ranks: a tied pair contributes 1/2
    n_pos = y.sum(axis=-1)
    n_neg = y.shape[-1] - n_pos
    rank_sum = (ranks * y).sum(axis=-1)
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def auroc(y: Any, p: Any) -> float:
    """Area under the ROC curve; an EvaluationError when ``y`` has only one class."""
    y, p = check_binary(y, p)
    _require_both_classes(y, "auroc")
    return float(_auc_rank(y, p))


def _counts_at_scores(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tp, fp, threshold) at each distinct score, thresholds descending (``p >= threshold``)."""
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(p_sorted)), len(p_sorted) - 1]
    tp = np.cumsum(y_sorted)[last_of_run]
    fp = last_of_run + 1 - tp
    return tp, fp, p_sorted[last_of_run]


def roc_curve(
    y: Any, p: Any, drop_intermediate: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) as scikit-learn's, starting at (0, 0) with threshold ``inf``.

    ``thresholds`` are the distinct scores, descending. ``drop_intermediate`` keeps only the
    corners of the staircase (same plot, fewer points), as scikit-learn does.
    """
    y, p = check_binary(y, p)
    _require_both_classes(y, "roc_curve")
    tp, fp, thr = _counts_at_scores(y, p)
    if drop_intermediate and len(tp) > 2:
        keep = np.r_[True, np.logical_or(np.diff(fp, 2), np.diff(tp, 2)), True]
        tp, fp, thr = tp[keep], fp[keep], thr[keep]
    tp, fp, thr = np.r_[0, tp], np.r_[0, fp], np.r_[np.inf, thr]
    return fp / fp[-1], tp / tp[-1], thr


def precision_recall_points(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) at each distinct score, thresholds descending."""
    y, p = check_binary(y, p)
    _require_both_classes(y, "precision_recall")
    tp, fp, thr = _counts_at_scores(y, p)
    return tp / (tp + fp), tp / tp[-1], thr


def average_precision(y: Any, p: Any) -> float:
    """AP = sum over thresholds of (R_k - R_{k-1}) * P_k, scikit-learn's (no interpolation)."""
    precision, recall, _ = precision_recall_points(y, p)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def brier_score(y: Any, p: Any) -> float:
    """Mean squared difference between probability and outcome."""
    y, p = check_binary(y, p)
    return float(np.mean((p - y) ** 2))


def log_loss(y: Any, p: Any, eps: float = EPS) -> float:
    """Mean negative log-likelihood, probabilities clipped to [eps, 1 - eps] as in scikit-learn."""
    y, p = check_binary(y, p)
    q = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def calibration_table(y: Any, p: Any, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per equal-width bin of [0, 1]: lower/upper edge, count, mean probability, fraction positive.

    Bin ``b`` holds ``b/n_bins <= p < (b+1)/n_bins``; the last bin also holds ``p == 1``. Empty bins
    have count 0 and NaN means (the caller drops them; they are never written to JSON).
    """
    y, p = check_binary(y, p)
    if n_bins < 1:
        raise EvaluationError(f"calibration bins must be >= 1, got {n_bins}")
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


def expected_calibration_error(y: Any, p: Any, n_bins: int = 10) -> float:
    """ECE = sum over non-empty bins of (n_bin / n) * |mean prob in bin - fraction positive in bin|.

    Bins as in ``calibration_table`` (``n_bins`` equal-width bins of [0, 1]).
    """
    t = calibration_table(y, p, n_bins)
    used = t["count"] > 0
    weights = t["count"][used] / t["count"].sum()
    return float(np.sum(weights * np.abs(t["mean_prob"][used] - t["frac_pos"][used])))


def threshold_free(y: Any, p: Any, n_bins: int = 10) -> dict[str, float | int]:
    """Count, prevalence, AUROC, AUPRC, Brier, ECE and log loss of one split."""
    y, p = check_binary(y, p)
    return {
        "n": len(y),
        "positives": int(y.sum()),
        "prevalence": float(y.mean()),
        "auroc": auroc(y, p),
        "auprc": average_precision(y, p),
        "brier": brier_score(y, p),
        "ece": expected_calibration_error(y, p, n_bins),
        "logloss": log_loss(y, p),
    }


# ----------------------------------------------------------------------------------------------
# Metrics at a threshold


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def confusion_counts(y: Any, p: Any, threshold: float) -> dict[str, int]:
    """tp, fp, tn, fn with the decision ``p >= threshold``."""
    y, p = check_binary(y, p)
    pred = p >= threshold
    pos = y == 1
    return {
        "tp": int(np.sum(pred & pos)),
        "fp": int(np.sum(pred & ~pos)),
        "tn": int(np.sum(~pred & ~pos)),
        "fn": int(np.sum(~pred & pos)),
    }


def threshold_metrics(y: Any, p: Any, threshold: float) -> dict[str, float | int | None]:
    """Accuracy, precision, recall (sensitivity), specificity, NPV, F1 and the counts.

    A ratio with a zero denominator is None (not NaN). F1 = 2tp / (2tp + fp + fn), so it is 0,
    not None, when there are positives but none is predicted.
    """
    c = confusion_counts(y, p, threshold)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    return {
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        **c,
    }


# ----------------------------------------------------------------------------------------------
# Operating points (chosen on validation, applied unchanged to test)


def threshold_for_sensitivity(y: Any, p: Any, target: float) -> float:
    """The highest threshold whose sensitivity is at least ``target``.

    Candidates are the ROC curve's thresholds (the distinct scores), so the returned value is one
    of the scores and ``p >= threshold`` reproduces exactly the sensitivity found. "At least" is
    decided on counts, ``tp >= ceil(target * positives)`` (with a 1e-9 slack so that a decimal
    target such as 0.9 of 10 positives asks for 9, not 10).
    """
    if not 0.0 < target <= 1.0:
        raise EvaluationError(f"target sensitivity {target!r} must be in (0, 1]")
    y, p = check_binary(y, p)
    _require_both_classes(y, "threshold_for_sensitivity")
    tp, _, thr = _counts_at_scores(y, p)
    need = math.ceil(target * tp[-1] - 1e-9)
    return float(thr[np.argmax(tp >= need)])  # tp rises as the threshold falls: first = highest


def youden_threshold(y: Any, p: Any) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 (highest on ties).

    J is compared exactly, as the integer ``tp * negatives - fp * positives``, so ties are real
    ties and not rounding noise.
    """
    y, p = check_binary(y, p)
    _require_both_classes(y, "youden_threshold")
    tp, fp, thr = _counts_at_scores(y, p)
    j = tp * fp[-1] - fp * tp[-1]
    return float(thr[np.argmax(j)])


# ----------------------------------------------------------------------------------------------
# Bootstrap


def bootstrap_ci(
    y: Any,
    p: Any,
    thresholds: Mapping[str, float],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    chunk: int = 200,
) -> dict[str, Any]:
    """Percentile bootstrap intervals of AUROC and of sensitivity / specificity at each threshold.

    The resamples are drawn once, as ``np.random.default_rng(seed).integers(0, n, size=
    (n_resamples, n))``, and shared by every statistic. A resample with one class only (AUROC,
    sensitivity or specificity undefined) is skipped for all of them and counted in ``skipped``.
    Interval ends are ``np.percentile`` (linear interpolation) at (1 - level) / 2 and
    (1 + level) / 2 of the kept values; None when no resample was kept. The threshold is held
    fixed, so an interval at an operating point leaves out the uncertainty of choosing it.
    """
    y, p = check_binary(y, p)
    if n_resamples < 0:
        raise EvaluationError(f"bootstrap resamples must be >= 0, got {n_resamples}")
    n = len(y)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    n_pos = y[idx].sum(axis=1)
    kept = idx[(n_pos > 0) & (n_pos < n)]
    stats: dict[str, list[np.ndarray]] = {"auroc": []}
    for key in thresholds:
        stats[f"{key}.recall"], stats[f"{key}.specificity"] = [], []
    for start in range(0, len(kept), chunk):  # bounded memory on large test splits
        yb, pb = y[kept[start : start + chunk]], p[kept[start : start + chunk]]
        stats["auroc"].append(_auc_rank(yb, pb))
        pos = yb.sum(axis=1)
        for key, t in thresholds.items():
            pred = pb >= t
            stats[f"{key}.recall"].append((pred & (yb == 1)).sum(axis=1) / pos)
            stats[f"{key}.specificity"].append((~pred & (yb == 0)).sum(axis=1) / (n - pos))
    q = [50.0 * (1.0 - level), 50.0 * (1.0 + level)]
    out: dict[str, Any] = {"n_resamples": n_resamples, "skipped": n_resamples - len(kept)}
    for name, parts in stats.items():
        if parts:
            lo, hi = np.percentile(np.concatenate(parts), q)
            out[name] = (float(lo), float(hi))
        else:
            out[name] = (None, None)
    return out


def operating_point_interval(
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    target_sensitivity: float,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | None]:
    """How far the operating point moves with the validation sample it was chosen on.

    The threshold is chosen again (``threshold_for_sensitivity``) on each bootstrap resample of
    the validation split, and test sensitivity and specificity are read at each re-chosen
    threshold: percentile intervals of the three. ``bootstrap_ci`` holds the threshold fixed; this
    adds the uncertainty of choosing it, which with a few dozen validation positives dominates.
    Resamples with one class are skipped; None when none is left.
    """
    (vy, vp), (ty, tp) = val, test
    n = len(vy)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    chosen = [
        threshold_for_sensitivity(vy[row], vp[row], target_sensitivity)
        for row in idx
        if 0 < vy[row].sum() < n
    ]
    keys = ("threshold", "recall_rechosen", "specificity_rechosen")
    if not chosen:
        return {f"{k}_{end}": None for k in keys for end in ("lo", "hi")}
    thr = np.asarray(chosen)
    pos, neg = np.sort(tp[ty == 1]), np.sort(tp[ty == 0])
    values = {
        "threshold": thr,
        "recall_rechosen": 1.0 - np.searchsorted(pos, thr, side="left") / max(len(pos), 1),
        "specificity_rechosen": np.searchsorted(neg, thr, side="left") / max(len(neg), 1),
    }
    q = [50.0 * (1.0 - level), 50.0 * (1.0 + level)]
    out: dict[str, float | None] = {}
    for key, v in values.items():
        lo, hi = np.percentile(v, q)
        out[f"{key}_lo"], out[f"{key}_hi"] = float(lo), float(hi)
    return out


# ----------------------------------------------------------------------------------------------
# Subgroups


def age_band_labels(edges: Sequence[int]) -> list[str]:
    """Labels of the bands ``[e_k, e_{k+1})``, the last one closed: [0, 40, 60, 120] -> 0-39,
    40-59, 60-120."""
    labels = []
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        top = hi if k == len(edges) - 2 else hi - 1
        labels.append(str(lo) if top == lo else f"{lo}-{top}")
    return labels


def assign_age_bands(ages: Any, edges: Sequence[int]) -> np.ndarray:
    """The band label of each age; missing ages and ages outside the edges are "unknown"."""
    edges = list(edges)
    if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=False)):
        raise EvaluationError(f"age band edges {edges} must be at least two increasing numbers")
    a = pd.to_numeric(pd.Series(ages), errors="coerce").to_numpy(dtype=np.float64)
    labels = np.array(age_band_labels(edges) + ["unknown"], dtype=object)
    band = np.searchsorted(np.asarray(edges, dtype=np.float64), a, side="right") - 1
    band[a == edges[-1]] = len(edges) - 2  # the last band is closed on the right
    band[~((a >= edges[0]) & (a <= edges[-1]))] = len(edges) - 1  # also NaN -> unknown
    return labels[band]


def subgroup_labels(values: Any) -> np.ndarray:
    """Category labels with missing or empty values as "unknown"."""
    s = pd.Series(values, dtype=object)
    s = s.where(s.notna(), "").astype(str).str.strip()
    return s.where(s != "", "unknown").to_numpy(dtype=object)


def subgroup_metrics(
    y: Any,
    p: Any,
    labels: Any,
    decisions: Mapping[str, float],
    levels: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """Per label: count, positives, prevalence, AUROC and sensitivity / specificity per decision.

    ``levels`` are always reported (count 0 and nulls when absent) so that keys stay stable;
    other labels found in the data follow, "unknown" last. A subgroup with one class has AUROC
    None and an ``auroc_note`` saying why.
    """
    y, p = check_binary(y, p)
    labels = np.asarray(labels, dtype=object)
    found = sorted(set(labels) - set(levels) - {"unknown"})
    order = [*levels, *found, *(["unknown"] if "unknown" in set(labels) else [])]
    out = {}
    for level in order:
        mask = labels == level
        out[str(level)] = _one_subgroup(y[mask], p[mask], decisions)
    return out


def _one_subgroup(y: np.ndarray, p: np.ndarray, decisions: Mapping[str, float]) -> dict[str, Any]:
    n, n_pos = len(y), int(y.sum())
    g: dict[str, Any] = {"n": n, "positives": n_pos, "prevalence": _ratio(n_pos, n)}
    if n == 0:
        g["auroc"], g["auroc_note"] = None, "no cases"
    elif n_pos in (0, n):
        g["auroc"] = None
        g["auroc_note"] = "only positives" if n_pos else "only negatives"
    else:
        g["auroc"] = float(_auc_rank(y, p))
    for key, t in decisions.items():
        m = threshold_metrics(y, p, t)
        g[key] = {"recall": m["recall"], "specificity": m["specificity"]}
    return g


# ----------------------------------------------------------------------------------------------
# The whole evaluation


@dataclass(frozen=True)
class Evaluation:
    """What the evaluate stage writes: metrics (JSON-ready), the operating point, plot data."""

    metrics: dict[str, Any]
    operating_point: dict[str, Any]
    plots: dict[str, list[dict[str, Any]]]  # file name under plots/eval -> rows


def evaluate(
    val: pd.DataFrame,
    test: pd.DataFrame,
    *,
    thresholds: Sequence[float] = (0.5, 0.25),
    target_sensitivity: float = 0.9,
    bootstrap: int = 1000,
    seed: int = 0,
    calibration_bins: int = 10,
    age_bands: Sequence[int] = (0, 40, 60, 120),
) -> Evaluation:
    """Choose the operating points on ``val``, report both splits, subgroups of test, plot data.

    ``val`` and ``test`` have the prediction columns (``PREDICTION_COLUMNS``). Bad params raise an
    EvaluationError naming the ``evaluate.*`` key.
    """
    fixed = _check_params(thresholds, target_sensitivity, bootstrap, calibration_bins, age_bands)
    arrays = {}
    for name, df in (("val", val), ("test", test)):
        y, p = check_binary(df["target"].to_numpy(), df["prob"].to_numpy(), f"{name} predictions")
        _require_both_classes(y, f"{name} predictions")
        arrays[name] = (y, p)
    op = threshold_for_sensitivity(*arrays["val"], target_sensitivity)
    youden = youden_threshold(*arrays["val"])
    decisions = {**fixed, "op": op, "youden": youden}
    metrics: dict[str, Any] = {}
    for name, (y, p) in arrays.items():
        metrics[name] = _split_metrics(y, p, decisions, bootstrap, seed, calibration_bins)
        metrics[name]["op"]["target"] = target_sensitivity
    spread = operating_point_interval(
        arrays["val"], arrays["test"], target_sensitivity, bootstrap, seed
    )
    metrics["test"]["op"].update(spread)
    y, p = arrays["test"]
    groups = {
        "view": subgroup_labels(test["view"]),
        "sex": subgroup_labels(test["sex"]),
        "age": assign_age_bands(test["age"], age_bands),
    }
    for attr, labels in groups.items():
        levels = SUBGROUP_LEVELS.get(attr, age_band_labels(age_bands))
        metrics["test"][attr] = subgroup_metrics(y, p, labels, decisions, levels)
    operating_point = {
        "threshold": op,
        "target_sensitivity": target_sensitivity,
        "method": "target_sensitivity",
        # the threshold chosen again on bootstrap resamples of val (operating_point_interval)
        "threshold_lo": spread["threshold_lo"],
        "threshold_hi": spread["threshold_hi"],
        "n_val_positives": int(arrays["val"][0].sum()),
        "youden_threshold": youden,
    }
    plots = plot_data(arrays, decisions, calibration_bins)
    return Evaluation(round_floats(metrics), operating_point, plots)


def _check_params(
    thresholds: Sequence[float],
    target_sensitivity: float,
    bootstrap: int,
    calibration_bins: int,
    edges: Sequence[int],
) -> dict[str, float]:
    fixed = check_thresholds(thresholds, "evaluate.thresholds")
    if not 0.0 < target_sensitivity <= 1.0:
        raise EvaluationError(
            f"evaluate.target_sensitivity={target_sensitivity!r} must be in (0, 1]"
        )
    if bootstrap < 0:
        raise EvaluationError(f"evaluate.bootstrap={bootstrap!r} must be >= 0 (0 = no intervals)")
    if calibration_bins < 1:
        raise EvaluationError(f"evaluate.calibration_bins={calibration_bins!r} must be >= 1")
    if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=False)):
        raise EvaluationError(f"evaluate.age_bands={list(edges)} must be increasing, >= 2 edges")
    return {threshold_key(t): t for t in fixed}


def _split_metrics(
    y: np.ndarray,
    p: np.ndarray,
    decisions: Mapping[str, float],
    bootstrap: int,
    seed: int,
    calibration_bins: int,
) -> dict[str, Any]:
    ci = bootstrap_ci(y, p, decisions, n_resamples=bootstrap, seed=seed)
    out: dict[str, Any] = {}
    for name, value in threshold_free(y, p, calibration_bins).items():
        out[name] = value
        if name == "auroc":  # each interval right after its estimate, for a human reading
            out["auroc_lo"], out["auroc_hi"] = ci["auroc"]
    out["boot_skipped"] = ci["skipped"]  # resamples with one class, left out of every interval
    for key, t in decisions.items():
        block = threshold_metrics(y, p, t)
        for stat in ("recall", "specificity"):
            block[f"{stat}_lo"], block[f"{stat}_hi"] = ci[f"{key}.{stat}"]
        out[key] = block
    return out


# ----------------------------------------------------------------------------------------------
# Plot data (read by the top-level `plots:` section of dvc.yaml)


def plot_data(
    arrays: Mapping[str, tuple[np.ndarray, np.ndarray]],
    decisions: Mapping[str, float],
    calibration_bins: int,
    grid_step: float = 0.01,
) -> dict[str, list[dict[str, Any]]]:
    """Plot rows, by file name under plots/eval.

    Per split: ROC, PR, calibration and sensitivity/specificity against threshold; the ideal
    calibration diagonal as a reference line; ``confusion/<decision>.json`` per decision on test,
    one row per case (DVC's confusion template counts them), in one folder so that one dvc.yaml
    entry covers any list of thresholds.
    """
    plots: dict[str, list[dict[str, Any]]] = {}
    grid = np.round(np.arange(0.0, 1.0 + grid_step / 2, grid_step), 10)
    for name, (y, p) in arrays.items():
        fpr, tpr, thr = roc_curve(y, p, drop_intermediate=True)
        thr = np.minimum(thr, 1.0)  # inf ("nothing positive") does not survive CSV/JSON tools
        plots[f"roc_{name}.csv"] = _rows(fpr=fpr, tpr=tpr, threshold=thr)
        precision, recall, thr = precision_recall_points(y, p)
        plots[f"pr_{name}.csv"] = _rows(recall=recall, precision=precision, threshold=thr)
        cal = calibration_table(y, p, calibration_bins)
        used = cal["count"] > 0
        plots[f"calibration_{name}.csv"] = _rows(
            mean_prob=cal["mean_prob"][used], frac_pos=cal["frac_pos"][used], n=cal["count"][used]
        )
        pred = p[None, :] >= grid[:, None]
        sens = (pred & (y == 1)).sum(axis=1) / y.sum()
        spec = (~pred & (y == 0)).sum(axis=1) / (len(y) - y.sum())
        plots[f"threshold_{name}.csv"] = _rows(threshold=grid, sensitivity=sens, specificity=spec)
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


def _rows(**columns: np.ndarray) -> list[dict[str, Any]]:
    names = list(columns)
    return [
        {k: round_floats(v.item()) for k, v in zip(names, vals, strict=True)}
        for vals in zip(*columns.values(), strict=True)
    ]


# ----------------------------------------------------------------------------------------------
# Rounding and files


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


def read_predictions(path: str | Path) -> pd.DataFrame:
    """One predictions CSV, validated; an error names the file, the line and the patientId."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path} not found (run `dvc repro infer`)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise EvaluationError(f"{path}: missing column(s) {', '.join(missing)}")
    if df.empty:
        raise EvaluationError(f"{path}: no rows")
    target = pd.to_numeric(df["target"], errors="coerce")
    prob = pd.to_numeric(df["prob"], errors="coerce")
    for column, bad, want in (
        ("target", ~target.isin((0, 1)), "0 or 1"),
        ("prob", ~((prob >= 0) & (prob <= 1)), "a probability in [0, 1]"),  # NaN is bad too
    ):
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise EvaluationError(
                f"{path}: line {i + 2} (patientId {df['patientId'].iat[i]}): "
                f"{column} {df[column].iat[i]!r} is not {want}"
            )
    return df.assign(target=target.astype(np.int64), prob=prob.astype(np.float64))


def write_evaluation(
    evaluation: Evaluation, metrics_path: str | Path, plots_dir: str | Path, op_path: str | Path
) -> None:
    """Write metrics JSON, plot files (a fresh directory, swapped in whole) and the op point."""
    with atomic_dir(plots_dir) as tmp:
        for name, rows in evaluation.plots.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            if name.endswith(".csv"):
                pd.DataFrame(rows).to_csv(tmp / name, index=False)
            else:
                with (tmp / name).open("w") as f:
                    json.dump(rows, f, allow_nan=False)
    write_json(op_path, evaluation.operating_point)
    write_json(metrics_path, evaluation.metrics)
