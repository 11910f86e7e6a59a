"""Images that are not chest radiographs, generated: what the export stage's out-of-distribution
metric separates the test split from, the same on every clone.

Two kinds, as the model would receive them (uint8 squares at its input size): ``noise``, pixel
noise at several grain sizes (a blank detector, a corrupt file decoded as pixels), and
``scenes``, photographs' structure without a photograph: a lit gradient with a few flat or
textured shapes, edges and a horizon, as in pictures of rooms, objects and landscapes. Real
non-chest files (CT, MR, ultrasound, real chest films for a synthetic-trained model) are in
``bench/ood.py``, since a clone does not have them.
"""

from __future__ import annotations

import numpy as np

KINDS = ("noise", "scenes")


def noise(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size) uint8: uniform noise upsampled from grains of 1 to 8 pixels."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        grain = int(rng.integers(1, 9))
        cells = -(-size // grain)
        small = rng.integers(0, 256, (cells, cells), dtype=np.uint8)
        out[i] = np.kron(small, np.ones((grain, grain), dtype=np.uint8))[:size, :size]
    return out


def scenes(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size) uint8: a lit gradient, a horizon and a few rectangles and ellipses."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        angle = rng.uniform(0, 2 * np.pi)
        img = 60 + 120 * (np.cos(angle) * xx + np.sin(angle) * yy + 1) / 2
        horizon = rng.uniform(0.3, 0.7)
        img = np.where(yy > horizon, img * rng.uniform(0.4, 0.9), img)
        for _ in range(int(rng.integers(2, 7))):
            cy, cx = rng.uniform(0, 1, 2)
            hy, hx = rng.uniform(0.05, 0.3, 2)
            inside = (
                (np.abs(yy - cy) < hy) & (np.abs(xx - cx) < hx)
                if rng.random() < 0.5
                else ((yy - cy) / hy) ** 2 + ((xx - cx) / hx) ** 2 < 1
            )
            shade = rng.uniform(0, 255)
            stripes = 20 * np.sin(2 * np.pi * rng.uniform(2, 12) * (xx + yy)) * rng.random()
            img = np.where(inside, shade + stripes, img)
        img += rng.normal(0, 4, (size, size))
        out[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def generated(kind: str, n: int, size: int, seed: int) -> np.ndarray:
    """The generated set ``kind`` (one of ``KINDS``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown set {kind!r}; choose one of {', '.join(KINDS)}")
    return (noise if kind == "noise" else scenes)(n, size, seed)
