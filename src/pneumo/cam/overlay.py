"""A heat map over its X-ray: matplotlib's ``jet`` colours, computed here in NumPy.

Prediction draws one overlay per answer, and importing matplotlib for a colour table costs a cold
start about a third of a second. The table below is matplotlib's: its segment data and the way
``LinearSegmentedColormap`` samples and looks it up (256 entries, ``x * 256`` truncated, 1.0 in
the last entry); ``tests/test_onnx.py`` holds it to matplotlib's own ``jet``, value for value.
"""

from __future__ import annotations

from functools import cache

import numpy as np

JET_N = 256
_JET = {  # matplotlib._cm._jet_data: (x, value below x, value above x) per channel
    "red": ((0.0, 0, 0), (0.35, 0, 0), (0.66, 1, 1), (0.89, 1, 1), (1.0, 0.5, 0.5)),
    "green": ((0.0, 0, 0), (0.125, 0, 0), (0.375, 1, 1), (0.64, 1, 1), (0.91, 0, 0), (1.0, 0, 0)),
    "blue": ((0.0, 0.5, 0.5), (0.11, 1, 1), (0.34, 1, 1), (0.65, 0, 0), (1.0, 0, 0)),
}


def _channel(points: tuple[tuple[float, float, float], ...], n: int) -> np.ndarray:
    # matplotlib.colors._create_lookup_table with gamma 1, step for step
    data = np.asarray(points, dtype=np.float64)
    x, y0, y1 = data[:, 0] * (n - 1), data[:, 1], data[:, 2]
    xind = (n - 1) * np.linspace(0, 1, n)
    ind = np.searchsorted(x, xind)[1:-1]
    distance = (xind[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
    lut = np.concatenate([[y1[0]], distance * (y0[ind] - y1[ind - 1]) + y1[ind - 1], [y0[-1]]])
    return np.clip(lut, 0.0, 1.0)


@cache
def jet_table() -> np.ndarray:
    """(256, 3) float64 RGB in [0, 1]: the ``jet`` colormap's lookup table."""
    table = np.stack([_channel(_JET[c], JET_N) for c in ("red", "green", "blue")], axis=1)
    table.setflags(write=False)
    return table


def jet(values: np.ndarray) -> np.ndarray:
    """RGB float64 (..., 3) of values in [0, 1], as ``matplotlib.colormaps["jet"](v)[..., :3]``."""
    xa = np.array(np.clip(values, 0.0, 1.0), copy=True)  # keeps the dtype, as matplotlib does
    xa *= JET_N
    xa[xa == JET_N] = JET_N - 1
    return jet_table().take(xa.astype(int), axis=0, mode="clip")


def overlay(img: np.ndarray, cam_map: np.ndarray, alpha: float) -> np.ndarray:
    """RGB uint8 (S, S, 3): the gray image blended with the jet-coloured map (weight ``alpha``)."""
    if img.shape != cam_map.shape or img.ndim != 2:
        raise ValueError(f"image {img.shape} and map {cam_map.shape} must be the same 2-D shape")
    gray = np.repeat(img.astype(np.float64)[..., None] / 255.0, 3, axis=2)
    out = (1.0 - alpha) * gray + alpha * jet(cam_map)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
