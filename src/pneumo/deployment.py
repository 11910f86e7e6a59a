"""What a prediction is made with, loaded once: the model on its runtime and the operating point.

The default runtime is onnxruntime with the export stage's ``data/export/model.onnx``: no torch
is imported. ``torch`` loads the train stage's ``data/model/model.pt`` instead (the fallback,
and the reference the export is held to). A directory is an ensemble: the cross-validation
folds' ``data/cv`` (every ``fold<f>/model.pt`` with its ``calibration.json``) on torch, decided
at the cv_aggregate stage's operating point (``data/cv_operating_point.json``). Both are
resolved before any image is read, and every problem a person can fix (no model, a torn file, a
file of the other runtime, a bad threshold) becomes a ``UsageError`` naming the file and the way
out, which the predict command and the service report as a usage error.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from pneumo.calibration import read_calibration
from pneumo.layout import CV_OPERATING_POINT, MODEL, ONNX_MODEL, OPERATING_POINT
from pneumo.operating_point import (
    FALLBACK_THRESHOLD,
    OperatingPoint,
    OperatingPointError,
    check_threshold,
    operating_point_or_fallback,
)
from pneumo.runtime import ONNXRUNTIME, RUNTIMES, TORCH, InferenceModel

DEFAULT_RUNTIME = ONNXRUNTIME
DEFAULT_MODELS = {ONNXRUNTIME: ONNX_MODEL, TORCH: MODEL}  # relative to the repository root
DEFAULT_OPERATING_POINT = OPERATING_POINT  # the evaluate stage's choice
_STAGE = {ONNXRUNTIME: "export", TORCH: "train"}
ID_CHARS = 12  # hex digits of the model file's sha256 that identify it


class UsageError(Exception):
    """The command cannot start (missing or invalid model, operating point or arguments)."""


def model_identity(model: InferenceModel) -> dict[str, Any]:
    """What names a model in every answer: the loaded file's short hash, that of the trained
    ``model.pt`` it comes from (the same for both runtimes), architecture, input, runtime."""
    return {
        "id": model.sha256[:ID_CHARS],
        "source_id": model.source_sha256[:ID_CHARS],
        "runtime": model.runtime,
        "arch": model.arch,
        "image_size": model.image_size,
        "resize_mode": model.resize_mode,
        "members": len(getattr(model, "members", (model,))),  # > 1: an ensemble's mean
    }


def runtime_for(path: Path | None, runtime: str | None) -> tuple[Path, str]:
    """(model file, runtime): an explicit ``runtime`` wins, else the file's suffix (``.onnx``:
    onnxruntime, ``.pt``: torch) decides; with neither, the ONNX export on onnxruntime. A
    directory (an ensemble of fold models) runs on torch."""
    if runtime is not None and runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    by_suffix = {".onnx": ONNXRUNTIME, ".pt": TORCH}
    if path is None:
        runtime = runtime or DEFAULT_RUNTIME
        return DEFAULT_MODELS[runtime], runtime
    path = Path(path)
    if path.is_dir():
        if runtime not in (None, TORCH):
            raise UsageError(f"{path} is an ensemble of model.pt files: the torch runtime runs it")
        return path, TORCH
    suffix_runtime = by_suffix.get(path.suffix.lower())
    if runtime is None and suffix_runtime is None:
        raise UsageError(
            f"{path}: cannot tell the runtime from the suffix {path.suffix!r}: name the file "
            "*.onnx or *.pt, or pass --runtime"
        )
    runtime = runtime or suffix_runtime
    if suffix_runtime is not None and suffix_runtime != runtime:
        raise UsageError(
            f"{path} is a {path.suffix} file, which the {suffix_runtime} runtime loads, not "
            f"{runtime}: pass --runtime {suffix_runtime} or a model file for {runtime}"
        )
    return path, runtime


def load_model(
    path: Path | None, runtime: str | None = None, op: OperatingPoint | None = None
) -> InferenceModel:
    """The model file ``path`` on ``runtime`` (see :func:`runtime_for`), with the errors a person
    can act on turned into ``UsageError``.

    Its probabilities are calibrated: an ONNX file carries its temperature (the export stage's);
    ``model.pt`` does not, and takes the one of ``op`` when evaluate fitted it for this very file
    (``op.model_sha256``), else none (1.0, and the probabilities are the network's own).
    """
    path, runtime = runtime_for(path, runtime)
    if path.is_dir():
        return load_ensemble(path)
    if not path.is_file():
        raise UsageError(
            f"model file {path} not found: run `dvc repro {_STAGE[runtime]}` to make it or "
            "`dvc pull` to fetch it from the remote (or pass --model PATH)"
        )
    try:
        if runtime == ONNXRUNTIME:
            from pneumo.runtime.onnx_model import load_onnx

            return load_onnx(path)
        from pneumo.runtime.torch_model import load_torch  # imports torch: only here

        model = load_torch(path)
        if op is not None and op.temperature is not None and op.model_sha256 == model.sha256:
            return replace(model, temperature=op.temperature)
        return model
    except Exception as e:  # a torn, foreign or older file: the runtime's or our own check
        one_line = " ".join(str(e).split())
        raise UsageError(f"cannot load the model {path}: {type(e).__name__}: {one_line}") from None


def load_ensemble(root: Path) -> InferenceModel:
    """The fold models under ``root`` (``fold<f>/model.pt``, in fold order) as one ensemble, each
    member calibrated by its ``calibration.json``."""
    folds = [d for d in root.iterdir() if re.fullmatch(r"fold\d+", d.name)]
    dirs = sorted((d for d in folds if (d / "model.pt").is_file()), key=lambda d: int(d.name[4:]))
    if len(dirs) < 2:
        raise UsageError(
            f"{root} holds {len(dirs)} fold model(s) (fold<f>/model.pt), an ensemble needs 2 or "
            "more: run `dvc exp run -S cv.folds=5 ...` (README: Cross-validation)"
        )
    members = []
    for d in dirs:
        op = read_operating_point_or_none(d / "calibration.json")
        members.append(load_model(d / "model.pt", TORCH, op))
    from pneumo.runtime.ensemble import EnsembleModel

    try:
        return EnsembleModel(tuple(members))
    except ValueError as e:
        raise UsageError(f"{root}: {e}") from None


def read_operating_point_or_none(path: Path) -> OperatingPoint | None:
    """A fold's ``calibration.json`` as the temperature record ``load_model`` takes."""
    if not path.is_file():
        return None
    try:
        temperature, sha256 = read_calibration(path)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return OperatingPoint(FALLBACK_THRESHOLD, str(path), temperature, sha256)


def default_operating_point(model: Path | None) -> Path:
    """Evaluate's operating point, or for an ensemble (a directory) the cv_aggregate stage's."""
    return CV_OPERATING_POINT if model is not None and Path(model).is_dir() else OPERATING_POINT


def resolve_operating_point(
    threshold: float | None,
    path: Path | None,
    default_path: Path = DEFAULT_OPERATING_POINT,
) -> tuple[OperatingPoint, str | None]:
    """(operating point, a note for the user or None).

    An explicit ``threshold`` wins; else ``path`` (which must exist when given); else
    ``default_path`` when it exists; else 0.5, with a note saying so.
    """
    try:
        if threshold is not None:
            return OperatingPoint(check_threshold(threshold, "--threshold"), "--threshold"), None
        if path is not None and not Path(path).is_file():
            raise UsageError(f"operating point file {path} not found")
        return operating_point_or_fallback(Path(path if path is not None else default_path))
    except OperatingPointError as e:
        raise UsageError(str(e)) from None
