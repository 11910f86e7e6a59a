"""Arrays of any range -> uint8 gray: luminance, robust stretch, rounding and clipping."""

from __future__ import annotations

import numpy as np

_PERCENTILES = (0.5, 99.5)


def luminance(rgb: np.ndarray, maxval: float) -> np.ndarray:
    y = rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587)
    y += rgb[..., 2] * np.float32(0.114)
    if maxval != 255:
        y *= np.float32(255.0 / maxval)
    return to_uint8(y)


def to_uint8(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    np.nan_to_num(y, copy=False, nan=0.0)
    np.clip(y, 0, 255, out=y)
    return np.rint(y, out=y).astype(np.uint8)


def robust_range(values: np.ndarray) -> tuple[float, float]:
    v = values
    if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
        v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 0.0
    lo, hi = (float(x) for x in np.percentile(v, _PERCENTILES))
    if hi <= lo:  # more than 99 % of one value (a sparse 1-bit mask): fall back to min/max
        lo, hi = float(v.min()), float(v.max())
    return lo, hi


def stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    y = values.astype(np.float32) if values.dtype != np.float64 else values
    y = (y - lo) * (255.0 / (hi - lo))
    return to_uint8(y)
