"""The operating point: the decision threshold chosen on validation (for a target sensitivity;
Youden's J beside it), the file evaluate writes it to (data/operating_point.json), and the one
reader that the cam stage and the predict command use.

Thresholds are chosen on the counts at each distinct score, so a chosen threshold is one of the
scores and ``p >= threshold`` reproduces exactly what was found. Conventions:
``pneumo.eval_checks``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.eval_checks import EvaluationError, check_binary, require_both_classes

# the reference pipelines' threshold, used where evaluate has not chosen one (no file yet)
FALLBACK_THRESHOLD = 0.5


class OperatingPointError(ValueError):
    """A threshold or an operating-point file that cannot be used; the message names it."""


@dataclass(frozen=True)
class OperatingPoint:
    """The decision threshold and where it came from (reported with every decision); from
    evaluate's file also the temperature its threshold is on and the model it was fitted for."""

    threshold: float
    source: str
    temperature: float | None = None  # None: a --threshold, the fallback or an older file
    model_sha256: str | None = None  # of the model.pt whose val logits the temperature fits


def operating_point_record(
    threshold: float,
    target_sensitivity: float,
    spread: dict[str, float | None],
    n_val_positives: int,
    youden_threshold: float,
) -> dict[str, object]:
    """What evaluate writes: the threshold chosen on val, how, and how far it moves."""
    return {
        "threshold": threshold,
        "target_sensitivity": target_sensitivity,
        "method": "target_sensitivity",
        # the threshold chosen again on bootstrap resamples of val (operating_point_interval)
        "threshold_lo": spread["threshold_lo"],
        "threshold_hi": spread["threshold_hi"],
        "n_val_positives": n_val_positives,
        "youden_threshold": youden_threshold,
    }


def check_threshold(value: object, where: str) -> float:
    """``value`` as a float in [0, 1]; an OperatingPointError naming ``where`` otherwise."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise OperatingPointError(f"{where}: threshold must be a number in [0, 1], got {value!r}")
    return float(value)


def read_operating_point(path: Path) -> OperatingPoint:
    """The threshold in evaluate's file; an OperatingPointError naming the file if unusable."""
    try:
        with Path(path).open() as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise OperatingPointError(f"cannot read the operating point {path}: {e}") from None
    if not isinstance(data, dict):
        raise OperatingPointError(f"{path}: expected a JSON object with a 'threshold'")
    threshold = check_threshold(data.get("threshold"), str(path))
    target = data.get("target_sensitivity")
    how = f", target sensitivity {target}" if isinstance(target, (int, float)) else ""
    temperature = data.get("temperature")
    if temperature is not None and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise OperatingPointError(f"{path}: temperature must be a positive number")
    return OperatingPoint(
        threshold,
        f"{path}{how}",
        None if temperature is None else float(temperature),
        data.get("model_sha256"),
    )


def operating_point_or_fallback(path: Path) -> tuple[OperatingPoint, str | None]:
    """The operating point in ``path``, or the fallback threshold and a note when it is absent."""
    if not Path(path).is_file():
        note = (
            f"no operating point ({path} not found: run `dvc repro evaluate` or `dvc pull`); "
            f"deciding at {FALLBACK_THRESHOLD}"
        )
        return OperatingPoint(FALLBACK_THRESHOLD, f"default {FALLBACK_THRESHOLD}"), note
    return read_operating_point(path), None


def _counts_at_scores(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tp, fp, threshold) at each distinct score, thresholds descending (``p >= threshold``).

    scikit-learn's ``roc_curve`` gives rates, not these counts, which the choices below compare
    exactly; and it takes about 8x as long, which ``operating_point_interval`` pays once per
    resample (bench/metrics.py measures both).
    """
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(p_sorted)), len(p_sorted) - 1]
    tp = np.cumsum(y_sorted)[last_of_run]
    fp = last_of_run + 1 - tp
    return tp, fp, p_sorted[last_of_run]


def threshold_for_sensitivity(y: Any, p: Any, target: float) -> float:
    """The highest threshold whose sensitivity is at least ``target``.

    Candidates are the ROC curve's thresholds (the distinct scores), so the returned value is one
    of the scores and ``p >= threshold`` reproduces exactly the sensitivity found. "At least" is
    decided on counts, ``tp >= ceil(target * positives)`` (with a 1e-9 slack so that a decimal
    target such as 0.9 of 10 positives asks for 9, not 10).
    """
    # kept beside EvaluateParams' range: above 1 no threshold qualifies and argmax would return
    # the highest score without an error
    if not 0.0 < target <= 1.0:
        raise EvaluationError(f"target sensitivity {target!r} must be in (0, 1]")
    y, p = check_binary(y, p)
    require_both_classes(y, "threshold_for_sensitivity")
    tp, _, thr = _counts_at_scores(y, p)
    need = math.ceil(target * tp[-1] - 1e-9)
    return float(thr[np.argmax(tp >= need)])  # tp rises as the threshold falls: first = highest


def youden_threshold(y: Any, p: Any) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 (highest on ties).

    J is compared exactly, as the integer ``tp * negatives - fp * positives``, so ties are real
    ties and not rounding noise.
    """
    y, p = check_binary(y, p)
    require_both_classes(y, "youden_threshold")
    tp, fp, thr = _counts_at_scores(y, p)
    j = tp * fp[-1] - fp * tp[-1]
    return float(thr[np.argmax(j)])
