"""Reads what the model card is made of: the model files' hashes and the stages' outputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pneumo.card_format import CardInputs
from pneumo.model import load_exported


def sha256(path: Path) -> str:
    """The hex sha256 of a file, read in chunks (model files are tens of MB)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `dvc repro` (or `dvc pull`)")
    with path.open() as f:
        return json.load(f)


def read_card_inputs(
    model_path: Path,
    onnx_path: Path,
    detail_dir: Path,
    export_metrics: Path,
    figures: dict[str, str],
) -> CardInputs:
    """``CardInputs`` from the model file, the ONNX file (optional) and the detail JSON files."""
    model = load_exported(model_path)
    return CardInputs(
        model_sha256=model.sha256,
        onnx_sha256=sha256(onnx_path) if onnx_path.is_file() else None,
        model={
            "arch": model.arch,
            "image_size": model.image_size,
            "resize_mode": model.resize_mode,
            "mean": model.mean,
            "std": model.std,
            "last_stride": model.last_stride,
        },
        provenance=model.provenance,
        split=_json(detail_dir / "split.json"),
        train=_json(detail_dir / "train.json"),
        evaluation=_json(detail_dir / "eval.json"),
        cam=_json(detail_dir / "cam.json"),
        export=_json(export_metrics) if export_metrics.is_file() else {},
        figures=figures,
    )
