"""Checks of what evaluate is given: 0/1 targets with probabilities, and decision thresholds.

Conventions of every evaluation module (scores, thresholds, bootstrap, subgroups):

- ``y`` is the 0/1 ground truth, ``p`` the predicted probability of the positive class; a case is
  called positive when ``p >= threshold``.
- A ratio whose denominator is zero (precision with no predicted positives, specificity with no
  negatives, ...) is ``None``, written as JSON ``null``: never NaN, which is not valid JSON.
- AUROC needs both classes. For a whole split that is an error (``EvaluationError``): no
  operating point can be chosen and no test result means anything. For a subgroup it is ``None``
  with an ``auroc_note`` saying why.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


class EvaluationError(ValueError):
    """The predictions or the evaluate params cannot be evaluated; the message says why."""


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


def require_both_classes(y: np.ndarray, source: str) -> None:
    """An EvaluationError naming ``source`` when ``y`` holds one class only."""
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
