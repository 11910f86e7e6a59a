"""Stage export: the trained model as ONNX for prediction without torch (data/export/model.onnx),
held to the torch model's test probabilities; with export.int8, an int8 file beside it."""

from __future__ import annotations

import os
import sys

# Before torch is imported: OpenMP threads that sleep instead of spinning while they wait; beside
# one busy process a training step is 1.8x faster on 2 cores, alone 5 % slower (bench/omp.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pneumo.atomic import write_json
from pneumo.exporting import ExportError, run
from pneumo.layout import (
    CALIBRATION,
    EXPORT_DIR,
    EXPORT_METRICS,
    MODEL,
    PREDICTIONS,
    PROCESSED,
)
from pneumo.params import load_or_exit


def main() -> None:
    params = load_or_exit("export")
    try:
        metrics = run(MODEL, PROCESSED, PREDICTIONS, CALIBRATION, EXPORT_DIR, params)
    except ExportError as e:
        sys.exit(f"export: {e}")
    write_json(EXPORT_METRICS, metrics)
    for name, m in metrics.items():
        auroc = f", test AUROC {m['test_auroc']:.4f}" if "test_auroc" in m else ""
        print(f"{name}: largest |delta p| against torch {m['max_abs_prob_diff']:.2g}{auroc}")
    ood = metrics["onnx"]
    print(
        f"out of distribution: {ood['ood_test_flagged']:.3f} of the test split flagged; AUROC "
        f"{ood['ood_auroc_generated']:.3f} against generated non-chest images"
    )


if __name__ == "__main__":
    main()
