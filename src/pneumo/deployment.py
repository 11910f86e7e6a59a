"""What a prediction is made with, loaded once: the exported model and the operating point.

Both are resolved before any image is read, and every problem a person can fix (no model, a
torn file, a bad threshold) becomes a ``UsageError`` naming the file and the way out, which the
predict command and the service report as a usage error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumo.model import Exported, load_exported

DEFAULT_MODEL = Path("data/model/model.pt")
DEFAULT_OPERATING_POINT = Path("data/operating_point.json")
DEFAULT_THRESHOLD = 0.5
ID_CHARS = 12  # hex digits of the model file's sha256 that identify it


class UsageError(Exception):
    """The command cannot start (missing or invalid model, operating point or arguments)."""


def model_identity(model: Exported) -> dict[str, Any]:
    """What names a model in every answer: short file hash, architecture, input size, resize."""
    return {
        "id": model.sha256[:ID_CHARS],
        "arch": model.arch,
        "image_size": model.image_size,
        "resize_mode": model.resize_mode,
    }


def load_model(path: Path) -> Exported:
    """``load_exported`` with the errors a person can act on turned into ``UsageError``."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"model file {path} not found: run `dvc repro` to train it or `dvc pull` to fetch it "
            "from the remote (or pass --model PATH)"
        )
    try:
        return load_exported(path)
    except Exception as e:  # a torn, foreign or older file: torch, pickle or our version check
        raise UsageError(f"cannot load the model {path}: {type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class OperatingPoint:
    """The decision threshold and where it came from (reported with every prediction)."""

    threshold: float
    source: str


def _check_threshold(value: object, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise UsageError(f"{where}: threshold must be a number in [0, 1], got {value!r}")
    return float(value)


def resolve_operating_point(
    threshold: float | None,
    path: Path | None,
    default_path: Path = DEFAULT_OPERATING_POINT,
) -> tuple[OperatingPoint, str | None]:
    """(operating point, a note for the user or None).

    An explicit ``threshold`` wins; else ``path`` (which must exist when given); else
    ``default_path`` when it exists; else 0.5, with a note saying so.
    """
    if threshold is not None:
        return OperatingPoint(_check_threshold(threshold, "--threshold"), "--threshold"), None
    file = Path(path) if path is not None else Path(default_path)
    if not file.is_file():
        if path is not None:
            raise UsageError(f"operating point file {file} not found")
        note = (
            f"no operating point ({file} not found: run `dvc repro evaluate` or `dvc pull`); "
            f"deciding at {DEFAULT_THRESHOLD}"
        )
        return OperatingPoint(DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD}"), note
    try:
        with file.open() as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the operating point {file}: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{file}: expected a JSON object with a 'threshold'")
    t = _check_threshold(data.get("threshold"), str(file))
    target = data.get("target_sensitivity")
    how = f", target sensitivity {target}" if isinstance(target, (int, float)) else ""
    return OperatingPoint(t, f"{file}{how}"), None
