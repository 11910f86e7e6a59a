"""Predict pneumonia for DICOM, PNG and JPEG files or folders with the exported model.

    python src/predict.py scan.dcm                       # probability and decisions
    python src/predict.py scans/ --json > preds.jsonl    # a folder, one JSON object per line
    python src/predict.py scan.dcm --cam heatmaps/       # plus the X-ray and its heat map

A DICOM file that is not a frontal chest radiograph (by its header: Modality, BodyPartExamined,
ViewPosition, frames, colour; see ``pneumo.intended_use``) is refused with its reason; ``--no-gate``
predicts it anyway, for research, and every answer then says ``gate: off``. PNG and JPEG files have
no header to check. Every answer has an out-of-distribution score (``pneumo.ood``; onnxruntime only)
and is marked unreliable when the score lies above the export stage's threshold. A model trained on
synthetic data gets a warning with every answer.

Exit status: 0 all predicted, 1 some files failed or were refused (each has a line with its
reason), 2 usage error (no model, bad operating point or arguments).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before torch is imported (--runtime torch): OpenMP threads that spin while waiting steal the
# cores from each other and from the image decoders whenever anything else runs; sleeping threads
# made one image's forward pass 30x and a batch 2x faster on a busy 2-core machine
# (bench/predict.py). onnxruntime's threads are told the same by pneumo.runtime.onnx_model.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pneumo.atomic import write_bytes  # noqa: E402
from pneumo.cam.head import METHODS as CAM_METHODS  # noqa: E402
from pneumo.deployment import (  # noqa: E402
    DEFAULT_MODELS,
    DEFAULT_OPERATING_POINT,
    DEFAULT_RUNTIME,
    UsageError,
    default_operating_point,
    load_model,
    model_identity,
    resolve_operating_point,
    runtime_for,
)
from pneumo.file_inference import find_images, predict_files  # noqa: E402
from pneumo.intended_use import OFF as GATE_OFF  # noqa: E402
from pneumo.operating_point import OperatingPoint  # noqa: E402
from pneumo.provenance import provenance_warning  # noqa: E402
from pneumo.results import (  # noqa: E402
    CAM_ALPHA,
    Failure,
    Refusal,
    cam_names,
    error_record,
    heatmap_png,
    record,
    refused_record,
    verdict,
)
from pneumo.runtime import RUNTIMES, InferenceModel  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help=f"onnxruntime: the ONNX export, without torch; torch: model.pt (default: by the "
        f"--model file's suffix, {DEFAULT_RUNTIME} without --model)",
    )
    defaults = ", ".join(f"{r}: {m}" for r, m in DEFAULT_MODELS.items())
    p.add_argument(
        "--model",
        type=Path,
        help=f"model file (default {defaults}), or a folder of fold models, data/cv: their "
        "ensemble (mean probability +- the members' sd)",
    )
    p.add_argument(
        "--threshold", type=probability, help="decision threshold (overrides the operating point)"
    )
    p.add_argument(
        "--operating-point",
        type=Path,
        help=f"evaluate's operating point file (default {DEFAULT_OPERATING_POINT}; 0.5 if absent)",
    )
    p.add_argument("--cam", type=Path, metavar="DIR", help="write a heat-map PNG per image here")
    p.add_argument("--cam-method", choices=CAM_METHODS, default="gradcam++")  # the cam stage's
    p.add_argument("--json", action="store_true", help="one JSON object per line (JSONL)")
    p.add_argument(
        "--no-gate",
        dest="gate",
        action="store_false",
        help="research use: predict files the intended-use gate refuses (answers say gate: off)",
    )
    p.add_argument("--batch-size", type=_count(1), default=32)
    p.add_argument(
        "--workers", type=_count(0), default=2, help="image-decoding threads (0: decode inline)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The predict command: results on stdout, notes and errors on stderr; the exit status."""
    args = parse_args(argv)
    try:
        op, note = resolve_operating_point(
            args.threshold, args.operating_point, default_operating_point(args.model)
        )
        model_path, runtime = runtime_for(args.model, args.runtime)
        model = load_model(model_path, runtime, op)
        if args.cam is not None:
            args.cam.mkdir(parents=True, exist_ok=True)
    except (UsageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    identity = model_identity(model)
    if note:
        print(f"note: {note}", file=sys.stderr)
    warning = provenance_warning(model.provenance)
    if not args.json:
        source = model.provenance["data_source"] if model.provenance else None
        trained = f"trained on {source} data" if source else "no provenance recorded"
        print(
            f"model {model_path} ({identity['id']} on "
            f"{model.runtime}, {model.arch}, {model.image_size}px {model.resize_mode}, "
            f"{trained}); operating point {op.threshold:.4f} "
            f"from {op.source}",
            file=sys.stderr,
        )
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        if not args.gate:
            print("warning: intended-use gate off (--no-gate): research use only", file=sys.stderr)
    inputs = find_images(args.paths)
    for path, reason in inputs.errors:
        print_failure(Failure(path, reason), args.json)
    n_ok, n_failed, n_refused = predict_and_print(model, op, identity, inputs.files, args, warning)
    n_failed += len(inputs.errors)
    skipped = f", {inputs.skipped} non-image files skipped" if inputs.skipped else ""
    refused = f", {n_refused} refused" if n_refused else ""
    print(f"{n_ok} predicted, {n_failed} failed{refused}{skipped}", file=sys.stderr)
    return EXIT_FAILED if n_failed or n_refused else EXIT_OK


def predict_and_print(
    model: InferenceModel,
    op: OperatingPoint,
    identity: dict[str, Any],
    files: list[Path],
    args: argparse.Namespace,
    warning: str | None,
) -> tuple[int, int, int]:
    """Predict ``files``, print a line per file (writing its heat map); (predicted, failed,
    refused)."""
    cam_dir: Path | None = args.cam
    results = predict_files(
        model,
        files,
        batch_size=args.batch_size,
        workers=args.workers,
        cam_method=args.cam_method if cam_dir is not None else None,
        gate=args.gate,
    )
    # one result per file, in order, so the names line up even when a file is given twice
    names = cam_names(files) if cam_dir is not None else [None] * len(files)
    n_ok = n_failed = n_refused = 0
    for res, name in zip(results, names, strict=True):
        if isinstance(res, Failure | Refusal):
            print_failure(res, args.json)
            n_failed += isinstance(res, Failure)
            n_refused += isinstance(res, Refusal)
            continue
        cam_path = cam_dir / name if cam_dir is not None and name else None
        rec = record(res, op, identity, str(cam_path) if cam_path else None, warning)
        if cam_path is not None:
            write_bytes(
                cam_path, heatmap_png(res.image, res.cam_map, rec, args.cam_method, CAM_ALPHA)
            )
        print(json.dumps(rec) if args.json else text_line(rec), flush=args.json)
        n_ok += 1
    return n_ok, n_failed, n_refused


def print_failure(f: Failure | Refusal, as_json: bool) -> None:
    """A file that was not predicted: a JSON line on stdout, or a text line on stderr."""
    refused = isinstance(f, Refusal)
    if as_json:
        rec = refused_record(f.file, f.reason) if refused else error_record(f.file, f.reason)
        print(json.dumps(rec), flush=True)
    else:
        print(f"{f.file}: {'refused' if refused else 'error'}: {f.reason}", file=sys.stderr)


def text_line(rec: dict[str, Any]) -> str:
    """One human-readable line for a prediction record."""
    d = rec["decisions"]
    m = rec["model"]
    gate_off = ["gate off: research use"] if rec["gate"] == GATE_OFF else []
    ood = (
        [f"OUT OF DISTRIBUTION (score {rec['ood_score']:.1f}): the decision is unreliable"]
        if rec["out_of_distribution"]
        else []
    )
    extra = "".join(f"  [{n}]" for n in ood + gate_off + rec["notes"])
    cam = f"  cam {rec['cam']}" if rec["cam"] else ""
    sd = f" +- {rec['prob_sd']:.4f}" if rec["prob_sd"] is not None else ""
    return (
        f"{rec['file']}: p={rec['prob']:.4f}{sd}  {verdict(d['operating_point']).upper()} at "
        f"{rec['threshold']:.4f}  (at 0.5: {verdict(d['0.5'])}, at 0.25: {verdict(d['0.25'])})  "
        f"model {m['id']} {m['arch']} {m['image_size']}px{cam}{extra}"
    )


if __name__ == "__main__":
    sys.exit(main())
