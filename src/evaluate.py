"""Stage evaluate: metrics, operating point and plot data from the stored predictions.

Reads only data/predictions/ and the evaluate params, so a new threshold or target sensitivity
re-runs this cheap step and not inference.
"""

from __future__ import annotations

from pathlib import Path

from pneumo.atomic import write_json
from pneumo.calibration import CALIBRATION_KEYS
from pneumo.eval_outputs import write_evaluation
from pneumo.evaluation import evaluate, read_model_sha256, read_predictions
from pneumo.layout import CALIBRATION, DETAIL, METRICS_DIR, OPERATING_POINT, PREDICTIONS
from pneumo.params import kwargs_for, load_or_exit

PLOTS = Path("plots/eval")


def main() -> None:
    params = load_or_exit("evaluate")
    result = evaluate(
        read_predictions(PREDICTIONS / "val.csv"),
        read_predictions(PREDICTIONS / "test.csv"),
        **kwargs_for(evaluate, params),
        model_sha256=read_model_sha256(PREDICTIONS),
    )
    headline, detail = METRICS_DIR / "eval.json", DETAIL / "eval.json"
    write_evaluation(result, headline, detail, PLOTS, OPERATING_POINT)
    # the temperature alone too: what the export stage depends on, so that a new operating
    # point (evaluate.target_sensitivity) does not re-export an unchanged model
    write_json(CALIBRATION, {k: result.operating_point[k] for k in CALIBRATION_KEYS})
    test = result.metrics["test"]
    before = test["uncalibrated"]
    print(
        f"temperature {result.metrics['calibration']['temperature']:.4f} (fitted on val): test "
        f"ECE {before['ece']} -> {test['ece']}, Brier {before['brier']} -> {test['brier']}"
    )
    print(
        f"test AUROC {test['auroc']} [{test['auroc_lo']}, {test['auroc_hi']}]; operating point "
        f"{result.operating_point['threshold']:.4f} (val sensitivity >= "
        f"{params.target_sensitivity}): test sensitivity {test['op']['recall']}, "
        f"specificity {test['op']['specificity']}"
    )
    for block in test["negatives_by_class"].values():
        print(
            f"test specificity among {block['n']} negatives of class {block['class']!r}: "
            f"{block['op']['specificity']} at the operating point"
        )


if __name__ == "__main__":
    main()
