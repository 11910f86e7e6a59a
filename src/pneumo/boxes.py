"""The boxes column of the split and index CSVs: one JSON list of ``[x, y, w, h]`` per image.

The split stage writes it in the original image's pixels, preprocess in the S x S frame; every
reader of either file parses it here, so a malformed cell fails the same way wherever it is read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np


def as_boxes(boxes: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Boxes as a float (K, 4) array of [x, y, w, h]; rejects bad shapes and negative sizes."""
    if not len(boxes):
        return np.zeros((0, 4))
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(arr).all() or (arr[:, 2:] < 0).any():
        raise ValueError(f"boxes must be finite [x, y, w, h] with w, h >= 0, got {arr.tolist()}")
    return arr


def parse_boxes(text: object, where: str) -> np.ndarray:
    """A boxes cell -> float (K, 4); an empty cell holds no box; errors name ``where``."""
    # pandas reads an empty cell as NaN, the csv module as "" (None when the row is short)
    if text is None or (isinstance(text, float) and math.isnan(text)) or text == "":
        return np.zeros((0, 4))
    try:
        boxes = json.loads(str(text))
        if not isinstance(boxes, list) or any(
            not isinstance(b, list) or len(b) != 4 or not all(_is_number(v) for v in b)
            for b in boxes
        ):
            raise ValueError("expected a JSON list of [x, y, w, h]")
        return as_boxes(boxes)
    except ValueError as e:  # json.JSONDecodeError is one
        raise ValueError(
            f"{where}: boxes {text!r} are not a JSON list of [x, y, w, h]: {e}"
        ) from None


def _is_number(v: object) -> bool:
    # json.loads accepts NaN and Infinity, and true is an int to isinstance
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
