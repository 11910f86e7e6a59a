"""What a prediction is made with, loaded once: the exported model and the operating point.

Both are resolved before any image is read, and every problem a person can fix (no model, a
torn file, a bad threshold) becomes a ``UsageError`` naming the file and the way out, which the
predict command and the service report as a usage error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pneumo.layout import MODEL, OPERATING_POINT
from pneumo.model import Exported, load_exported
from pneumo.operating_point import (
    OperatingPoint,
    OperatingPointError,
    check_threshold,
    operating_point_or_fallback,
)

DEFAULT_MODEL = MODEL  # the train stage's export, relative to the repository root
DEFAULT_OPERATING_POINT = OPERATING_POINT  # the evaluate stage's choice
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
