"""Percentile bootstrap intervals: of AUROC, sensitivity and specificity at fixed thresholds, of
an operating point chosen again on each resample, and of a mean (the CAM scores).

Hand-written because scikit-learn scores one sample per call: the AUROC of 1,000 resamples of
300 cases takes about 0.1 s as one batched rank computation and 6 to 10 s as 1,000
``roc_auc_score`` calls on this machine (bench/metrics.py). Conventions: ``pneumo.eval_checks``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pneumo.eval_checks import check_binary
from pneumo.operating_point import threshold_for_sensitivity


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles, linearly interpolated."""
    lo, hi = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def resample_indices(n_resamples: int, n: int, seed: int) -> np.ndarray:
    """``(n_resamples, n)`` case indices drawn with replacement, the same for a given seed."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def batched_auroc(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC along the last axis by the Mann-Whitney statistic (ties count one half)."""
    # scipy.stats here, not at the top: pneumo.cam imports this module for mean_interval, and
    # through it the predict command, whose cold start should not pay about a second for scipy
    from scipy.stats import rankdata

    ranks = rankdata(p, axis=-1)  # average ranks: a tied pair contributes 1/2
    n_pos = y.sum(axis=-1)
    n_neg = y.shape[-1] - n_pos
    rank_sum = (ranks * y).sum(axis=-1)
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def auroc_sens_spec_intervals(
    y: Any,
    p: Any,
    thresholds: Mapping[str, float],
    n_resamples: int,
    seed: int,
    level: float = 0.95,
    chunk: int = 200,
) -> dict[str, Any]:
    """Percentile bootstrap intervals of AUROC and of sensitivity / specificity at each threshold.

    The resamples are drawn once (``resample_indices``) and shared by every statistic. A resample
    with one class only (AUROC, sensitivity or specificity undefined) is skipped for all of them
    and counted in ``skipped``. Interval ends are ``percentile_interval`` of the kept values; None
    when no resample was kept. The threshold is held fixed, so an interval at an operating point
    leaves out the uncertainty of choosing it (``operating_point_interval`` adds it).
    """
    y, p = check_binary(y, p)
    n = len(y)
    idx = resample_indices(n_resamples, n, seed)
    n_pos = y[idx].sum(axis=1)
    kept = idx[(n_pos > 0) & (n_pos < n)]
    stats: dict[str, list[np.ndarray]] = {"auroc": []}
    for key in thresholds:
        stats[f"{key}.recall"], stats[f"{key}.specificity"] = [], []
    for start in range(0, len(kept), chunk):  # bounded memory on large test splits
        yb, pb = y[kept[start : start + chunk]], p[kept[start : start + chunk]]
        stats["auroc"].append(batched_auroc(yb, pb))
        pos = yb.sum(axis=1)
        for key, t in thresholds.items():
            pred = pb >= t
            stats[f"{key}.recall"].append((pred & (yb == 1)).sum(axis=1) / pos)
            stats[f"{key}.specificity"].append((~pred & (yb == 0)).sum(axis=1) / (n - pos))
    out: dict[str, Any] = {"n_resamples": n_resamples, "skipped": n_resamples - len(kept)}
    for name, parts in stats.items():
        out[name] = percentile_interval(np.concatenate(parts), level) if parts else (None, None)
    return out


def operating_point_interval(
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    target_sensitivity: float,
    n_resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, float | None]:
    """How far the operating point moves with the validation sample it was chosen on.

    The threshold is chosen again (``threshold_for_sensitivity``) on each bootstrap resample of
    the validation split, and test sensitivity and specificity are read at each re-chosen
    threshold: percentile intervals of the three. This adds the uncertainty of choosing the
    threshold, which with a few dozen validation positives dominates. Resamples with one class
    are skipped; None when none is left.
    """
    (vy, vp), (ty, tp) = val, test
    n = len(vy)
    chosen = [
        threshold_for_sensitivity(vy[row], vp[row], target_sensitivity)
        for row in resample_indices(n_resamples, n, seed)
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
    out: dict[str, float | None] = {}
    for key, v in values.items():
        out[f"{key}_lo"], out[f"{key}_hi"] = percentile_interval(v, level)
    return out


def mean_interval(
    values: Sequence[float] | np.ndarray, n_resamples: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaN, NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or n_resamples <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    step = max(1, 2_000_000 // v.size)  # bounds the index matrix for large test sets
    for start in range(0, n_resamples, step):
        m = min(step, n_resamples - start)
        means[start : start + m] = v[rng.integers(0, v.size, size=(m, v.size))].mean(axis=1)
    return percentile_interval(means, level)
