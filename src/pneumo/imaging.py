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
        if not len(b):  # most images: the numpy below costs 50 us a row of the index
            return b
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


@dataclass(frozen=True)
class _Fit:
    """Where ``fit_to_square`` draws from (``box``, original pixels) and to (``out`` at ``at``)."""

    box: tuple[float, float, float, float]
    out: tuple[int, int]
    at: tuple[int, int]


def _fit(width: int, height: int, size: int, mode: str) -> _Fit:
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    if mode == "stretch":
        return _Fit((0.0, 0.0, width, height), (size, size), (0, 0))
    if mode == "crop":
        side = min(width, height)
        x0, y0 = (width - side) / 2, (height - side) / 2
        # resizing straight from the (possibly half-pixel) centre square keeps the mapping exact
        return _Fit((x0, y0, x0 + side, y0 + side), (size, size), (0, 0))
    longest = max(width, height)
    nw, nh = max(1, round(width * size / longest)), max(1, round(height * size / longest))
    return _Fit((0.0, 0.0, width, height), (nw, nh), ((size - nw) // 2, (size - nh) // 2))


# How much larger than the drawn size a DCT-scaled decode must stay. A reduced inverse DCT inverts
# each 8 x 8 block alone, so its output has edges every 8 / s pixels; an area resize of at least
# 2:1 averages them away, and without it they reach the model: the default profile's 192 -> 96 px
# through the 1/2 decode alone moved test AUROC by -0.006 over three paired seeds and broke the CAM
# seed tolerances (README: Decoding), so a scaled decode must leave at least twice the output.
DCT_MARGIN = 2


def dct_scale(width: int, height: int, size: int, mode: str) -> int:
    """The JPEG decode scale 1/s (s = 8, 4, 2 or 1) for a ``width`` x ``height`` image fitted to
    ``size``: the largest s that still leaves ``DCT_MARGIN`` decoded pixels per output pixel.

    libjpeg computes a 1/s image straight from the DCT coefficients (a smaller inverse DCT per
    8 x 8 block), which skips much of the decoding work; ``fit_to_square`` then resizes as usual.
    """
    fit = _fit(width, height, size, mode)
    x0, y0, x1, y1 = fit.box
    for s in (8, 4, 2):
        if (x1 - x0) / s >= DCT_MARGIN * fit.out[0] and (y1 - y0) / s >= DCT_MARGIN * fit.out[1]:
            return s
    return 1


def fit_to_square(
    img: np.ndarray, size: int, mode: str, scale: int = 1, full_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, SquareTransform]:
    """2-D uint8 -> (size, size) uint8: letterbox (pad), centre crop (crop) or resize (stretch).

    ``img`` may be a 1/``scale`` decode of an image of ``full_size`` (width, height): the layout
    and the transform are those of the full image, and only the source box is scaled, so boxes
    map exactly as they would from a full decode.
    """
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {img.dtype} {img.shape}")
    w, h = full_size or (img.shape[1], img.shape[0])
    fit = _fit(w, h, size, mode)
    box = tuple(v / scale for v in fit.box)
    drawn = np.asarray(Image.fromarray(img).resize(fit.out, RESAMPLE, box=box))
    (nw, nh), (ox, oy) = fit.out, fit.at
    if mode == "crop":
        s = size / (fit.box[2] - fit.box[0])
        return drawn, SquareTransform(size, s, s, -fit.box[0] * s, -fit.box[1] * s)
    if mode == "stretch":
        return drawn, SquareTransform(size, size / w, size / h, 0.0, 0.0)
    out = np.zeros((size, size), np.uint8)
    out[oy : oy + nh, ox : ox + nw] = drawn
    # scale from the rounded size actually drawn, so boxes follow the pixels to the last 0.5 px
    return out, SquareTransform(size, nw / w, nh / h, float(ox), float(oy))


@dataclass(frozen=True)
class SquareImage:
    """One file as the model sees it, with the transform its boxes need and the reader's notes."""

    image: np.ndarray  # (S, S) uint8
    transform: SquareTransform
    notes: tuple[str, ...] = ()


def check_usable(
    image: np.ndarray, path: str | Path, full_size: tuple[int, int] | None = None
) -> None:
    """Refuse (``ImageReadError``) an image too small or too flat to be a radiograph.

    ``full_size`` (width, height) is the file's own size when ``image`` is a reduced decode.
    """
    w, h = full_size or (image.shape[1], image.shape[0])
    if min(h, w) < MIN_SIDE:
        raise ImageReadError(
            path, f"{w} x {h} pixels: below the {MIN_SIDE}-pixel minimum side of an X-ray"
        )
    step = max(1, int(math.sqrt(image.size / 1_000_000)))  # about a million pixels are enough
    lo, hi = percentiles_u8(image[::step, ::step], (1, 99))
    if hi - lo < MIN_SPREAD:
        raise ImageReadError(
            path,
            f"a blank or nearly constant image (98 % of its pixels within {hi - lo:.0f} gray "
            f"levels, fewer than {MIN_SPREAD})",
        )


def percentiles_u8(image: np.ndarray, qs: Sequence[float]) -> list[float]:
    """``np.percentile(image, qs)`` of a uint8 array, from its histogram (7 ms -> 1 ms at 1 MP).

    The same order statistics and numpy's own interpolation formula: equal to the last bit.
    """
    cum = np.cumsum(histogram_u8(image))
    n = int(cum[-1])
    out = []
    for q in qs:
        index = q / 100 * (n - 1)
        below = math.floor(index)
        above = min(below + 1, n - 1)
        a, b = (float(np.searchsorted(cum, k, side="right")) for k in (below, above))
        t = index - below
        # numpy's _lerp: from the lower value below t = 0.5, from the upper one from there on
        out.append(a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t))
    return out


def histogram_u8(image: np.ndarray) -> np.ndarray:
    """The 256 counts of a uint8 array: Pillow's counter, 3x np.bincount (which casts to int64)."""
    return np.asarray(Image.fromarray(image).histogram(), np.int64)


def load_square(path: str | Path, size: int, mode: str) -> SquareImage:
    """read_image + check_usable + fit_to_square, keeping the transform and the reader's notes.

    A JPEG (file or DICOM frame) is decoded at ``dct_scale``: preprocess, infer and prediction
    all come through here, so a file predicted alone gets the pixels the cache holds for it.
    """
    read = read_image_with_notes(path, scale_for=lambda w, h: dct_scale(w, h, size, mode))
    check_usable(read.image, path, read.full_size)
    image, transform = fit_to_square(read.image, size, mode, read.scale, read.full_size)
    return SquareImage(image, transform, read.notes)


def load_for_model(path: str | Path, size: int, mode: str) -> np.ndarray:
    """The (S, S) uint8 array the cache holds for this file; raises ``ImageReadError``."""
    return load_square(path, size, mode).image
