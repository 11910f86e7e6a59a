"""One image file -> the S x S uint8 array the model sees, and the transform its boxes follow.

``fit_to_square`` is the one geometric transform (pad / crop / stretch) and ``SquareTransform``
moves boxes exactly as it moves pixels; ``load_square`` (read + check + fit) is the one
preprocessing path, shared by the preprocess stage and single-image prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pneumo.image_io.errors import ImageReadError
from pneumo.image_io.read import read_image_with_notes

RESIZE_MODES = ("pad", "crop", "stretch")
# Pillow's BILINEAR resize is a true area filter when shrinking (its support widens with the
# scale factor), so 1024 -> 224 is antialiased; about 1.5 ms per RSNA image on one core.
RESAMPLE = Image.Resampling.BILINEAR
# Degenerate inputs, refused by prediction and rejected by preprocess. Chest radiographs are
# 1000 px and more (RSNA 1024, Kermany 1000 to 2000): below MIN_SIDE nothing of one survives.
# A radiograph spans most of the gray scale: when the 1st to 99th percentiles lie within
# MIN_SPREAD gray levels the image is blank, a flat test card or an empty frame.
MIN_SIDE = 32
MIN_SPREAD = 8


@dataclass(frozen=True)
class SquareTransform:
    """Maps original pixel coordinates into the S x S frame: ``x' = x * scale_x + offset_x``.

    Coordinates are pixel edges (RSNA's x, y is a box's top-left corner), which is also how
    Pillow's resize places pixels, so a box drawn on the input covers the same pixels after.
    """

    size: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def apply_boxes(self, boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """(K, 4) xywh in original pixels -> (K', 4) xywh in the S frame, clipped to the frame.

        A box partly outside the frame (crop mode, or a box past the image border) is clipped;
        a box left with no area is dropped, so K' <= K.
        """
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        x0 = np.clip(b[:, 0] * self.scale_x + self.offset_x, 0, self.size)
        y0 = np.clip(b[:, 1] * self.scale_y + self.offset_y, 0, self.size)
        x1 = np.clip((b[:, 0] + b[:, 2]) * self.scale_x + self.offset_x, 0, self.size)
        y1 = np.clip((b[:, 1] + b[:, 3]) * self.scale_y + self.offset_y, 0, self.size)
        keep = (x1 > x0) & (y1 > y0)
        return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)[keep]

    def invert_boxes(self, boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """(K, 4) xywh in the S frame -> original pixels (no clipping), to draw on the input."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        x = (b[:, 0] - self.offset_x) / self.scale_x
        y = (b[:, 1] - self.offset_y) / self.scale_y
        return np.stack([x, y, b[:, 2] / self.scale_x, b[:, 3] / self.scale_y], axis=1)


def fit_to_square(img: np.ndarray, size: int, mode: str) -> tuple[np.ndarray, SquareTransform]:
    """2-D uint8 -> (size, size) uint8: letterbox (pad), centre crop (crop) or resize (stretch)."""
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {img.dtype} {img.shape}")
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    h, w = img.shape
    im = Image.fromarray(img)
    if mode == "stretch":
        out = np.asarray(im.resize((size, size), RESAMPLE))
        return out, SquareTransform(size, size / w, size / h, 0.0, 0.0)
    if mode == "crop":
        side = min(w, h)
        x0, y0 = (w - side) / 2, (h - side) / 2
        # resizing straight from the (possibly half-pixel) centre square keeps the mapping exact
        out = np.asarray(im.resize((size, size), RESAMPLE, box=(x0, y0, x0 + side, y0 + side)))
        s = size / side
        return out, SquareTransform(size, s, s, -x0 * s, -y0 * s)
    longest = max(w, h)
    nw, nh = max(1, round(w * size / longest)), max(1, round(h * size / longest))
    ox, oy = (size - nw) // 2, (size - nh) // 2
    out = np.zeros((size, size), np.uint8)
    out[oy : oy + nh, ox : ox + nw] = np.asarray(im.resize((nw, nh), RESAMPLE))
    # scale from the rounded size actually drawn, so boxes follow the pixels to the last 0.5 px
    return out, SquareTransform(size, nw / w, nh / h, float(ox), float(oy))


@dataclass(frozen=True)
class SquareImage:
    """One file as the model sees it, with the transform its boxes need and the reader's notes."""

    image: np.ndarray  # (S, S) uint8
    transform: SquareTransform
    notes: tuple[str, ...] = ()


def check_usable(image: np.ndarray, path: str | Path) -> None:
    """Refuse (``ImageReadError``) an image too small or too flat to be a radiograph."""
    h, w = image.shape
    if min(h, w) < MIN_SIDE:
        raise ImageReadError(
            path, f"{w} x {h} pixels: below the {MIN_SIDE}-pixel minimum side of an X-ray"
        )
    step = max(1, int(math.sqrt(h * w / 1_000_000)))  # about a million pixels are enough
    lo, hi = np.percentile(image[::step, ::step], [1, 99])
    if hi - lo < MIN_SPREAD:
        raise ImageReadError(
            path,
            f"a blank or nearly constant image (98 % of its pixels within {hi - lo:.0f} gray "
            f"levels, fewer than {MIN_SPREAD})",
        )


def load_square(path: str | Path, size: int, mode: str) -> SquareImage:
    """read_image + check_usable + fit_to_square, keeping the transform and the reader's notes."""
    read = read_image_with_notes(path)
    check_usable(read.image, path)
    image, transform = fit_to_square(read.image, size, mode)
    return SquareImage(image, transform, read.notes)


def load_for_model(path: str | Path, size: int, mode: str) -> np.ndarray:
    """The (S, S) uint8 array the cache holds for this file; raises ``ImageReadError``."""
    return load_square(path, size, mode).image
