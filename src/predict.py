"""Predict pneumonia for DICOM, PNG and JPEG files or folders with the exported model.

    python src/predict.py scan.dcm                       # probability and decisions
    python src/predict.py scans/ --json > preds.jsonl    # a folder, one JSON object per line
    python src/predict.py scan.dcm --cam heatmaps/       # plus the X-ray and its heat map

Exit status: 0 all predicted, 1 some files failed (each has a line with its reason), 2 usage
error (no model, bad operating point or arguments).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

# Before torch is imported: OpenMP threads that spin while waiting steal the cores from each
# other and from the image decoders whenever anything else runs; sleeping threads made one
# image's forward pass 30x and a batch 2x faster on a busy 2-core machine (bench/predict.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pneumo.predict import (  # noqa: E402
    CAM_METHODS,
    DEFAULT_MODEL,
    DEFAULT_OPERATING_POINT,
    run_command,
)


def probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def integer(text: str) -> int:  # argparse names the type in its message: "invalid integer"
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be >= {minimum}")
        return value

    return integer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (argparse exits with status 2 on a usage error)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (recursive)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="exported model file")
    p.add_argument(
        "--threshold", type=probability, help="decision threshold (overrides the operating point)"
    )
    p.add_argument(
        "--operating-point",
        type=Path,
        help=f"evaluate's operating point file (default {DEFAULT_OPERATING_POINT}; 0.5 if absent)",
    )
    p.add_argument("--cam", type=Path, metavar="DIR", help="write a heat-map PNG per image here")
    p.add_argument("--cam-method", choices=CAM_METHODS, default="cam")
    p.add_argument("--json", action="store_true", help="one JSON object per line (JSONL)")
    p.add_argument("--batch-size", type=_count(1), default=32)
    p.add_argument(
        "--workers", type=_count(0), default=2, help="image-decoding threads (0: decode inline)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(
        args.paths,
        model_path=args.model,
        threshold=args.threshold,
        operating_point=args.operating_point,
        cam_dir=args.cam,
        cam_method=args.cam_method,
        as_json=args.json,
        batch_size=args.batch_size,
        workers=args.workers,
    )


if __name__ == "__main__":
    sys.exit(main())
