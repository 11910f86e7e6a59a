"""Radio-opaque tubes, lines, ECG leads, pacemakers and sternal wires, and which a patient has."""

from __future__ import annotations

import numpy as np

from pneumo import exactmath as em
from pneumo.synthetic.anatomy import Anatomy, Frame


def _stamp(layer: np.ndarray, cols: np.ndarray, rows: np.ndarray, radius: int = 1) -> None:
    """Mark a thick polyline given as dense points (grid coordinates) on ``layer``."""
    n = layer.shape[0]
    ci, ri = np.round(cols).astype(np.intp), np.round(rows).astype(np.intp)
    for dr in range(-radius + 1, radius):
        for dc in range(-radius + 1, radius):
            r, c = ri + dr, ci + dc
            ok = (r >= 0) & (r < n) & (c >= 0) & (c < n)
            layer[r[ok], c[ok]] = 1.0


def _curve(points: list[tuple[float, float]], n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A smooth curve through control points (patient coords), sampled densely."""
    p = np.array(points, dtype=np.float64)
    t = np.linspace(0, 1, len(p))
    s = np.linspace(0, 1, n)
    # quadratic-ish smoothing: interpolate, then average with a shifted copy
    x, y = em.interp(s, t, p[:, 0]), em.interp(s, t, p[:, 1])
    k = max(n // (4 * len(p)), 1)
    return _moving_average(x, k), _moving_average(y, k)


def _moving_average(v: np.ndarray, k: int) -> np.ndarray:
    """Mean over a window of 2k + 1 (edges repeated), summed in a fixed order: np.convolve
    would hand this to BLAS, whose kernels differ between CPUs."""
    padded = np.pad(v, k, mode="edge")
    total = padded[: v.size].copy()
    for j in range(1, 2 * k + 1):
        total += padded[j : j + v.size]
    return total / (2 * k + 1)


class _Pen:
    """Draws radio-opaque lines, rings and blocks (patient coordinates) on one layer."""

    def __init__(self, f: Frame, rng: np.random.Generator):
        self.f, self.rng = f, rng
        self.layer = np.zeros((f.w, f.w), np.float32)
        self.thick = max(1, round(f.w / 256))

    def jitter(self, s: float = 0.01) -> float:
        return float(em.normal(self.rng, 0, s))

    def line(self, points: list[tuple[float, float]], extra: int = 0) -> None:
        x, y = _curve(points, n=4 * self.f.w)
        _stamp(self.layer, *self.f.to_pixels(x, y), radius=self.thick + extra)

    def ring(self, x: float, y: float, rx: float, ry: float) -> None:
        t = np.linspace(0, 2 * np.pi, 120)
        _stamp(self.layer, *self.f.to_pixels(x + rx * em.cos(t), y + ry * em.sin(t)), self.thick)

    def block(self, x: float, y: float, hw: float, hh: float) -> None:
        cols, rows = self.f.to_pixels(np.array([x - hw, x + hw]), np.array([y - hh, y + hh]))
        r0, r1 = sorted(np.clip(rows.astype(int), 0, self.f.w))
        c0, c1 = sorted(np.clip(cols.astype(int), 0, self.f.w))
        self.layer[r0 : r1 + 1, c0 : c1 + 1] = 1.0


def _et_tube(pen: _Pen, a: Anatomy) -> None:
    end = a.apex + 0.2 - em.uniform(pen.rng, 0.03, 0.08)  # tip a few cm above the carina
    pen.line([(pen.jitter(), -0.6), (pen.jitter(0.005), -0.45), (pen.jitter(0.005), end)], 1)


def _ng_tube(pen: _Pen, a: Anatomy) -> None:
    j = pen.jitter
    pen.line([(j(), -0.6), (j(), -0.2), (0.02 + j(), a.base[1]), (0.15 + j(0.03), 0.5)])


def _central_line(pen: _Pen, a: Anatomy) -> None:
    side, j = float(pen.rng.choice([-1, 1])), pen.jitter
    pen.line(
        [
            (side * 0.5, -0.3 + j(0.03)),
            (side * 0.3, -0.32 + j()),
            (side * 0.1, -0.27 + j()),
            (side * 0.02, -0.12 + j(0.02)),
        ]
    )


def _ecg_leads(pen: _Pen, a: Anatomy) -> None:
    for _ in range(int(pen.rng.integers(2, 5))):
        x, y = em.uniform(pen.rng, -0.38, 0.38), em.uniform(pen.rng, -0.35, 0.25)
        pen.ring(x, y, 0.013, 0.013)
        pen.block(x, y, 0.003, 0.003)
        edge = float(pen.rng.choice([-0.6, 0.6]))
        pen.line([(x, y), (x + pen.jitter(0.15), y + pen.jitter(0.15)), (edge, pen.jitter(0.4))])


def _pacemaker(pen: _Pen, a: Anatomy) -> None:
    x, y = 0.28 + pen.jitter(0.03), -0.27 + pen.jitter(0.02)
    pen.block(x, y, 0.035, 0.025)
    pen.line([(x, y), (0.1, -0.3), (0.0, -0.1), (a.heart_x, a.base[1] - 0.12)])


def _sternal_wires(pen: _Pen, a: Anatomy) -> None:
    for y in np.linspace(-0.25, 0.05, int(pen.rng.integers(4, 7))):
        pen.ring(pen.jitter(0.004), float(y), 0.012, 0.006)


_DEVICES = {
    "et_tube": _et_tube,
    "ng_tube": _ng_tube,
    "central_line": _central_line,
    "ecg_leads": _ecg_leads,
    "pacemaker": _pacemaker,
    "sternal_wires": _sternal_wires,
}


def devices(f: Frame, a: Anatomy, rng: np.random.Generator, kinds: list[str]) -> np.ndarray:
    """Radio-opaque tubes, lines, leads and devices on one layer (0..1)."""
    pen = _Pen(f, rng)
    for kind in kinds:
        _DEVICES[kind](pen, a)
    layer = pen.layer  # soften the stamps a little: metal edges are sharp, but not aliased
    return (layer + np.roll(layer, 1, 0) + np.roll(layer, 1, 1) + np.roll(layer, 1, (0, 1))) / 4


def device_kinds(rng: np.random.Generator, view: str) -> list[str]:
    """Which devices a patient with the ``devices`` finding carries (ICU kit on AP films)."""
    icu = ["et_tube", "ng_tube", "central_line", "ecg_leads"]
    if view == "AP":  # portable films: intensive-care patients with tubes and leads
        k = list(rng.choice(icu, size=int(rng.integers(1, 4)), replace=False))
    else:
        k = list(rng.choice(icu + ["pacemaker", "sternal_wires"], size=1))
    if rng.random() < 0.12:
        k.append("pacemaker" if rng.random() < 0.5 else "sternal_wires")
    return sorted(set(k))
