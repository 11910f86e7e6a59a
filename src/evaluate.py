"""Stage evaluate: metrics, operating point and plot data from the stored predictions.

Reads only data/predictions/ and the evaluate params, so a new threshold or target sensitivity
re-runs this cheap step and not inference.
"""

from __future__ import annotations

from pathlib import Path

from pneumo.eval_outputs import write_evaluation
from pneumo.evaluation import evaluate, read_predictions
from pneumo.params import load_or_exit

PREDICTIONS = Path("data/predictions")
METRICS = Path("metrics/eval.json")
PLOTS = Path("plots/eval")
OPERATING_POINT = Path("data/operating_point.json")


def main() -> None:
    params = load_or_exit("evaluate")
    result = evaluate(
        read_predictions(PREDICTIONS / "val.csv"),
        read_predictions(PREDICTIONS / "test.csv"),
        thresholds=params.thresholds,
        target_sensitivity=params.target_sensitivity,
        bootstrap=params.bootstrap,
        seed=params.seed,
        calibration_bins=params.calibration_bins,
        age_bands=params.age_bands,
    )
    write_evaluation(result, METRICS, PLOTS, OPERATING_POINT)
    test = result.metrics["test"]
    print(
        f"test AUROC {test['auroc']} [{test['auroc_lo']}, {test['auroc_hi']}]; operating point "
        f"{result.operating_point['threshold']:.4f} (val sensitivity >= "
        f"{params.target_sensitivity}): test sensitivity {test['op']['recall']}, "
        f"specificity {test['op']['specificity']}"
    )


if __name__ == "__main__":
    main()
