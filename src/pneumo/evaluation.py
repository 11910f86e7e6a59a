"""The evaluate stage's work: read the stored predictions, fit the temperature on validation
(``pneumo.calibration``), choose the operating points on the calibrated validation
probabilities, and score both splits' calibrated probabilities (with intervals), the subgroups of
test and its negatives by detailed class; the uncalibrated Brier, ECE and log loss beside them.

Conventions: ``pneumo.eval_checks``; the scores themselves live in ``scores``, ``bootstrap``,
``operating_point`` and ``subgroups``, and the written form in ``eval_outputs``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.bootstrap import auroc_sens_spec_intervals, operating_point_interval
from pneumo.calibration import fit_temperature
from pneumo.eval_checks import (
    EvaluationError,
    check_binary,
    check_thresholds,
    require_both_classes,
    threshold_key,
)
from pneumo.eval_outputs import Evaluation, plot_data, round_floats
from pneumo.layout import PREDICTION_COLUMNS, PREDICTIONS_MODEL
from pneumo.operating_point import (
    operating_point_record,
    threshold_for_sensitivity,
    youden_threshold,
)
from pneumo.runtime import apply_temperature
from pneumo.scores import threshold_free, threshold_metrics
from pneumo.subgroups import specificity_by_class, subgroups_by_attribute

# what each split reports of its probabilities before the temperature (AUROC and AUPRC do not
# change: the temperature keeps the order of the scores)
UNCALIBRATED_FIGURES = ("brier", "ece", "logloss")


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
    logit = pd.to_numeric(df["logit"], errors="coerce")
    for column, bad, want in (
        ("target", ~target.isin((0, 1)), "0 or 1"),
        ("prob", ~((prob >= 0) & (prob <= 1)), "a probability in [0, 1]"),  # NaN is bad too
        ("logit", ~np.isfinite(logit), "a finite number"),
    ):
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise EvaluationError(
                f"{path}: line {i + 2} (patientId {df['patientId'].iat[i]}): "
                f"{column} {df[column].iat[i]!r} is not {want}"
            )
    return df.assign(
        target=target.astype(np.int64), prob=prob.astype(np.float64), logit=logit.astype(np.float64)
    )


def read_model_sha256(predictions: Path) -> str | None:
    """The sha256 of the model that made the predictions (the infer stage's ``model.json``);
    None for predictions from before it."""
    path = Path(predictions) / PREDICTIONS_MODEL
    if not path.is_file():
        return None
    with path.open() as f:
        return json.load(f)["sha256"]


def evaluate(
    val: pd.DataFrame,
    test: pd.DataFrame,
    *,
    thresholds: Sequence[float],
    target_sensitivity: float,
    bootstrap: int,
    seed: int,
    calibration_bins: int,
    age_bands: Sequence[int],
    model_sha256: str | None = None,
) -> Evaluation:
    """Fit the temperature on ``val``, choose the operating points on its calibrated
    probabilities, report both splits, subgroups of test, plot data.

    ``val`` and ``test`` have the prediction columns (``PREDICTION_COLUMNS``); their ``prob`` is
    replaced by the calibrated probability, sigmoid(logit / T), for every figure except the
    ``uncalibrated`` block of each split. ``model_sha256`` (the infer stage's ``model.json``)
    goes into the operating point beside the temperature, so that prediction applies both to
    that model only. ``EvaluateParams`` ranges the settings; what is refused here is what would
    otherwise give a wrong result without an error (a repeated threshold, a target sensitivity
    outside (0, 1], age bands out of order).
    """
    # the one check params.py does not make: a threshold listed twice would share one key
    fixed = {threshold_key(t): t for t in check_thresholds(thresholds, "evaluate.thresholds")}
    raw = {}
    for name, df in (("val", val), ("test", test)):
        y, p = check_binary(df["target"].to_numpy(), df["prob"].to_numpy(), f"{name} predictions")
        require_both_classes(y, f"{name} predictions")
        raw[name] = (y, p)
    temperature = fit_temperature(val["target"].to_numpy(), val["logit"].to_numpy())
    val, test = (df.assign(prob=apply_temperature(df["logit"], temperature)) for df in (val, test))
    arrays = {
        name: (raw[name][0], df["prob"].to_numpy()) for name, df in (("val", val), ("test", test))
    }
    op = threshold_for_sensitivity(*arrays["val"], target_sensitivity)
    youden = youden_threshold(*arrays["val"])
    decisions = {**fixed, "op": op, "youden": youden}
    metrics: dict[str, Any] = {}
    for name, (y, p) in arrays.items():
        metrics[name] = split_metrics(y, p, decisions, bootstrap, seed, calibration_bins)
        metrics[name]["op"]["target"] = target_sensitivity
        before = threshold_free(*raw[name], calibration_bins)
        metrics[name]["uncalibrated"] = {k: before[k] for k in UNCALIBRATED_FIGURES}
    metrics["calibration"] = {"method": "temperature", "temperature": temperature}
    spread = operating_point_interval(
        arrays["val"], arrays["test"], target_sensitivity, bootstrap, seed
    )
    metrics["test"]["op"].update(spread)
    metrics["test"].update(subgroups_by_attribute(test, decisions, age_bands))
    metrics["test"]["negatives_by_class"] = specificity_by_class(test, decisions)
    n_val_positives = int(arrays["val"][0].sum())
    operating_point = operating_point_record(
        op, target_sensitivity, spread, n_val_positives, youden
    ) | {"temperature": temperature, "model_sha256": model_sha256}
    plots = plot_data(arrays, decisions, calibration_bins, uncalibrated=raw)
    return Evaluation(round_floats(metrics), operating_point, plots)


def split_metrics(
    y: np.ndarray,
    p: np.ndarray,
    decisions: Mapping[str, float],
    bootstrap: int,
    seed: int,
    calibration_bins: int,
) -> dict[str, Any]:
    """One split's threshold-free figures (AUROC with its bootstrap interval) and, per decision
    (name -> threshold), the counts and rates with sensitivity and specificity intervals."""
    ci = auroc_sens_spec_intervals(y, p, decisions, n_resamples=bootstrap, seed=seed)
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
