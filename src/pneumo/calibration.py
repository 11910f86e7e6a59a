"""Post-hoc calibration by temperature scaling (Guo et al. 2017): one number T, fitted on the
validation split's logits, turns a logit z into the probability sigmoid(z / T).

T > 1 softens an over-confident network, T < 1 sharpens an under-confident one; dividing by a
positive number keeps the order of the scores, so AUROC and AUPRC do not move, only the
probabilities (Brier, ECE, log loss) and the thresholds that name them. The evaluate stage fits
T; the export stage stores it in the ONNX file; prediction applies it with
:func:`pneumo.runtime.apply_temperature`, the one formula every side uses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.eval_checks import EvaluationError, check_binary, require_both_classes

# log T is searched in [log 1/20, log 20]: a network that needs more than a 20-fold change is
# broken rather than miscalibrated, and the bound keeps a separable validation split (whose
# NLL falls towards T -> 0 for ever) from giving T = 0
LOG_T_BOUNDS = (-math.log(20.0), math.log(20.0))
XATOL = 1e-9  # on log T: far below what moves a probability at 6 significant digits
# a calibration file (evaluate's data/calibration.json, a fold's calibration.json): the
# temperature and the sha256 of the model.pt whose val logits it was fitted on
CALIBRATION_KEYS = ("temperature", "model_sha256")


def nll(y: Any, logits: Any, temperature: float) -> float:
    """Mean negative log-likelihood of labels ``y`` under sigmoid(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(y, dtype=np.float64)
    # log(1 + e^z) - y z, computed without overflow at either end
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(y: Any, logits: Any) -> float:
    """The temperature minimising the validation NLL (bounded 1-D search on log T).

    The NLL is convex in 1/T, so the bounded Brent search that scipy runs finds its one
    minimum; it is deterministic (no random start). Both classes must be present.
    """
    from scipy.optimize import minimize_scalar  # here: prediction never fits, never imports it

    z = np.asarray(logits, dtype=np.float64)
    if z.shape != np.shape(y) or not np.all(np.isfinite(z)):
        raise EvaluationError("fit_temperature: the logits must be finite, one per target")
    y, _ = check_binary(y, np.zeros_like(z), "fit_temperature")
    require_both_classes(y, "fit_temperature")
    res = minimize_scalar(
        lambda log_t: nll(y, z, math.exp(log_t)),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": XATOL},
    )
    return float(math.exp(res.x))


def read_calibration(path: str | Path) -> tuple[float, str | None]:
    """(temperature, model sha256 or None) of a calibration file; ValueError if it has none."""
    with Path(path).open() as f:
        data = json.load(f)
    temperature = data.get("temperature") if isinstance(data, dict) else None
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"{path}: no positive temperature")
    return float(temperature), data.get("model_sha256")
