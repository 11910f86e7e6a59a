"""Stage cam: CAM gallery of the test split (TP/FP/FN/TN) and localization scores vs the boxes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before torch is imported: OpenMP threads that sleep instead of spinning while they wait; beside
# one busy process a training step is 1.8x faster on 2 cores, alone 5 % slower (bench/omp.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pneumo.atomic import write_json
from pneumo.cam.analysis import analyse, tune_on_val
from pneumo.cam.gallery import write_gallery
from pneumo.cam.inputs import read_predicted_split
from pneumo.headline import cam_headline
from pneumo.layout import DETAIL, METRICS_DIR, MODEL, OPERATING_POINT, PREDICTIONS, PROCESSED
from pneumo.model import load_exported
from pneumo.operating_point import operating_point_or_fallback
from pneumo.params import load_or_exit

GALLERY = Path("plots/cam")


def main() -> None:
    params = load_or_exit("cam")
    model = load_exported(MODEL)
    op, note = operating_point_or_fallback(OPERATING_POINT)
    if op.model_sha256 is not None and op.model_sha256 != model.sha256:
        sys.exit(
            f"cam: {OPERATING_POINT} was fitted for another {MODEL} (run `dvc repro evaluate`)"
        )
    # the operating point's threshold and the gates are on evaluate's calibrated scale
    temperature = op.temperature or 1.0
    val = read_predicted_split(PROCESSED, PREDICTIONS / "val.csv", "val").calibrated(temperature)
    tuning = tune_on_val(
        model,
        val,
        params.thresholds,
        params.gates,
        stitch=params.stitch,
        batch_size=params.batch_size,
    )
    for kind, t in tuning.table.items():
        print(
            f"{kind}: map threshold {t['threshold']} (val IoU {t['val_iou']:.4f}), "
            f"gate {t['gate']} (val gated mIoU {t['val_miou_gated']:.4f})"
        )
    test = read_predicted_split(PROCESSED, PREDICTIONS / "test.csv", "test").calibrated(temperature)
    print(
        note
        or f"decision threshold {op.threshold:.4f} from {op.source}, temperature {temperature:.4f}"
    )
    result = analyse(
        model,
        test,
        tuning,
        decision_threshold=op.threshold,
        method=params.method,
        k=params.k,
        pointing_tolerance=params.pointing_tolerance,
        stitch=params.stitch,
        batch_size=params.batch_size,
        bootstrap=params.bootstrap,
        seed=params.seed,
    )
    write_gallery(GALLERY, result, test, alpha=params.alpha)
    write_json(DETAIL / "cam.json", result.metrics)
    write_json(METRICS_DIR / "cam.json", cam_headline(result.metrics))
    m = result.metrics
    print(
        f"{m['method']} on {m['n_images']} positive test images with boxes: "
        f"pointing {m['cam.pointing']} (baseline {m['baseline.pointing']}), "
        f"IoU {m['cam.iou']} (baseline {m['baseline.iou']}), "
        f"gated mIoU {m['cam.miou_gated']} (baseline {m['baseline.miou_gated']}), "
        f"random-weights correlation {m['sanity.random_corr']}"
    )


if __name__ == "__main__":
    main()
