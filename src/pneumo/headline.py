"""The headline figures: what `dvc metrics diff` and `dvc exp show` print, picked from the detail.

Each stage writes its full results to ``data/detail/<stage>.json`` (the model card reads them)
and the few figures a reviewer compares to ``metrics/<stage>.json``, the top-level ``metrics:``
of dvc.yaml. A headline keeps the detail's key paths (``test.auroc``, ``test.op.recall``), so a
figure has one name in both files, in every commit before and after the split into two files.

At most ``MAX_KEYS`` keys in all: with the default two thresholds, 16 (evaluate) + 5 (cam) +
3 (train) + 3 (export; 6 with an int8 model) = 27 (30). The README's "Results" says why these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_KEYS = 30  # issue 13: `dvc metrics show` readable in one screen
# test split, threshold-free: count, AUROC with its 95 % bootstrap interval, ranking of the
# positives (AUPRC), calibration (Brier, ECE) after the temperature; test.uncalibrated.ece before
EVAL_FIGURES = ("n", "auroc", "auroc_lo", "auroc_hi", "auprc", "brier", "ece")
DECISION_FIGURES = ("recall", "specificity")  # at each fixed threshold and the operating point
HEADLINE_DECISIONS_SKIP = ("youden",)  # a second chosen threshold: in the detail only
CAM_FIGURES = ("cam.pointing", "cam.iou", "baseline.pointing", "baseline.iou", "sanity.random_corr")
TRAIN_FIGURES = ("best_val_auroc", "best_epoch", "epochs")  # no timing: it is not reproducible


def decision_keys(split: Mapping[str, Any]) -> list[str]:
    """The decision blocks of one split's detail (``t050``, ``t025``, ``op``, ...), in order."""
    return [k for k, v in split.items() if isinstance(v, Mapping) and "threshold" in v]


def eval_headline(detail: Mapping[str, Any]) -> dict[str, Any]:
    """Test figures of the evaluate stage's detail: threshold-free ones (of the calibrated
    probabilities, and the ECE before calibration), then sensitivity and specificity per fixed
    threshold and at the operating point (with its threshold); and the temperature."""
    test = detail["test"]
    out: dict[str, Any] = {k: test[k] for k in EVAL_FIGURES}
    out["uncalibrated"] = {"ece": test["uncalibrated"]["ece"]}
    for key in decision_keys(test):
        if key in HEADLINE_DECISIONS_SKIP:
            continue
        block = {"threshold": test[key]["threshold"]} if key == "op" else {}
        out[key] = block | {k: test[key][k] for k in DECISION_FIGURES}
    return {"test": out, "calibration": {"temperature": detail["calibration"]["temperature"]}}


def cam_headline(detail: Mapping[str, Any]) -> dict[str, Any]:
    """The maps' localisation against the boxes, the centred baseline's, the sanity check."""
    return {k: detail[k] for k in CAM_FIGURES}


def train_headline(detail: Mapping[str, Any]) -> dict[str, Any]:
    """Best val AUROC, its epoch and the epochs run (all deterministic on one CPU type)."""
    return {k: detail[k] for k in TRAIN_FIGURES}


def flat_keys(obj: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves of a nested dict, as `dvc metrics show` names them."""
    if not isinstance(obj, Mapping):
        return [prefix]
    paths = ((f"{prefix}.{key}" if prefix else str(key), v) for key, v in obj.items())
    return [k for path, v in paths for k in flat_keys(v, path)]
