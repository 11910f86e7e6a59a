"""What is drawn on the normal chest: consolidations (the boxes), nodules and masses, effusions,
and which findings a patient gets."""

from __future__ import annotations

import math

import numpy as np

from pneumo import exactmath as em
from pneumo.synthetic.anatomy import Anatomy, Frame, ridges, smooth_noise, smoothstep

# Box size in 1024-px units (RSNA: width median 217, 40-528; height median 298, 45-942).
BOX_W = (217.0, 0.38, 40.0, 528.0)  # median, log-sd, min, max
BOX_H = (298.0, 0.42, 45.0, 942.0)


def _ellipse_blob(
    f: Frame,
    rng: np.random.Generator,
    X0: float,
    Y0: float,
    ra: float,
    rb: float,
    lumps: int,
) -> tuple[tuple[slice, slice], np.ndarray]:
    """An irregular, patchy blob (0..1) bounded by the ellipse (ra, rb) around (X0, Y0)."""
    win = f.window(X0, Y0, max(ra, rb) * 1.05)
    X, Y = f.X[win] - X0, f.Y[win] - Y0
    field = np.zeros(X.shape, np.float32)
    for _ in range(lumps):
        r, phi = 0.5 * math.sqrt(rng.random()), em.uniform(rng, 0, 2 * math.pi)
        lx, ly = r * ra * em.cos(phi), r * rb * em.sin(phi)
        sx, sy = ra * em.uniform(rng, 0.35, 0.6), rb * em.uniform(rng, 0.35, 0.6)
        field += em.exp(-(((X - lx) / sx) ** 2 + ((Y - ly) / sy) ** 2) / 2)
    envelope = 1 - smoothstep(0.85, 1.0, np.sqrt((X / ra) ** 2 + (Y / rb) ** 2))
    return win, field * envelope


def _lower_lobes(rng: np.random.Generator) -> float:
    """A draw on [0, 1) skewed towards 1 (the lung bases), like Beta(2, 1.4): a Kumaraswamy
    variable, by inversion, since numpy's beta sampler runs through libm."""
    return math.sqrt(1.0 - em.power(1.0 - rng.random(), 1 / 1.4))


def _one_opacity(
    f: Frame, a: Anatomy, rng: np.random.Generator, side: int, shrink: float, aerated: np.ndarray
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Try to draw one consolidation in one lung; None when too little of it would show."""
    w = float(np.clip(em.exp(em.normal(rng, em.log(BOX_W[0]), BOX_W[1])), *BOX_W[2:])) / 1024
    h = float(np.clip(em.exp(em.normal(rng, em.log(BOX_H[0]), BOX_H[1])), *BOX_H[2:])) / 1024
    base = a.base[0 if side < 0 else 1]
    # half-axes in patient units, kept inside one lung field; the drawn blob fills about 85 %
    # of its ellipse, hence the factors that aim the boxes at RSNA's sizes
    ra = min(w / 1.5 / f.scale, 0.5 * (a.lat - a.med)) * shrink
    rb = min(h / 1.55 / f.scale, 0.46 * (base - a.apex)) * shrink
    u = em.uniform(rng, a.med + ra * 0.7, max(a.lat - ra * 0.7, a.med + ra * 0.7 + 1e-3))
    lo, hi = a.apex + 0.08 + rb * 0.6, base - 0.04 - rb * 0.6
    yc = lo + (hi - lo) * _lower_lobes(rng) if hi > lo else (lo + hi) / 2
    win, blob = _ellipse_blob(f, rng, side * u, yc, ra, rb, int(rng.integers(4, 8)))
    if blob.size == 0:
        return None
    patchy = smoothstep(0.2, 0.6, blob / max(float(blob.max()), 1e-6))
    # fluffy mottling a few pixels across at 128 px, and air bronchograms: dark branching lines
    # of aerated airways crossing the consolidation
    side_px = max(blob.shape)
    mottle = smooth_noise(rng, int(np.clip(side_px / 7, 5, 24)), blob.shape)
    patchy *= np.clip(0.62 + 0.38 * mottle, 0.15, 1.0)
    patchy *= 1 - 0.45 * ridges(rng, max(3, side_px // 16), blob.shape)
    shown = patchy * em.uniform(rng, 0.7, 1.0)
    visible = shown * aerated[win] > 0.12
    px = f.scale * f.w
    area = math.pi * ra * rb * px * px
    if visible.sum() < max(0.3 * area, 4):  # mostly hidden by the heart or the diaphragm
        return None
    return win, np.where(visible, shown, 0).astype(np.float32)


def opacities(
    f: Frame,
    a: Anatomy,
    rng: np.random.Generator,
    n: int,
    aerated: np.ndarray,
    scale_px: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` consolidations in the aerated lung; returns the opacity map and tight boxes."""
    op = np.zeros_like(aerated)
    boxes: list[tuple[int, int, int, int]] = []  # grid rows/cols: r0, c0, r1, c1 (exclusive)
    # two opacities are mostly one per lung, as RSNA's bilateral pneumonias
    first = int(rng.choice([-1, 1]))
    bilateral = n >= 2 and rng.random() < 0.8
    for k in range(n):
        for attempt in range(60):
            side = first * (-1) ** (k if bilateral else 0) * (-1) ** (attempt // 20)
            drawn = _one_opacity(f, a, rng, side, 1 - 0.01 * attempt, aerated)
            if drawn is None:
                continue
            win, values = drawn
            rows, cols = np.nonzero(values)
            r0, c0 = win[0].start + rows.min(), win[1].start + cols.min()
            box = (r0, c0, win[0].start + rows.max() + 1, win[1].start + cols.max() + 1)
            if any(_overlap(box, b) for b in boxes):
                continue
            boxes.append(box)
            op[win] = np.maximum(op[win], values)
            break
    out = np.array(
        [
            [c0 * scale_px, r0 * scale_px, (c1 - c0) * scale_px, (r1 - r0) * scale_px]
            for r0, c0, r1, c1 in boxes
        ],
        dtype=np.float64,
    ).reshape(-1, 4)
    return op, np.round(out)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def nodules(
    f: Frame, a: Anatomy, rng: np.random.Generator, aerated: np.ndarray, n: int, mass: bool
) -> np.ndarray:
    """Small, sharp, homogeneous round densities (a mass is a single larger one)."""
    out = np.zeros_like(aerated)
    for _ in range(n):
        r = em.uniform(rng, 0.028, 0.045) if mass else em.uniform(rng, 0.007, 0.02)
        side = rng.choice([-1, 1])
        X0 = side * em.uniform(rng, a.med + 0.05, a.lat - 0.05)
        Y0 = em.uniform(rng, a.apex + 0.08, min(a.base) - 0.12)
        win = f.window(X0, Y0, r * 1.3)
        d = np.sqrt((f.X[win] - X0) ** 2 + (f.Y[win] - Y0) ** 2)
        disc = (1 - smoothstep(r * 0.85, r, d)) * em.uniform(rng, 0.2, 0.35)
        out[win] = np.maximum(out[win], disc * (aerated[win] > 0.5))
    return out


def effusion(f: Frame, a: Anatomy, rng: np.random.Generator, sides: list[int]) -> np.ndarray:
    """Fluid blunting a costophrenic angle: homogeneous, highest laterally (a meniscus)."""
    out = np.zeros_like(f.X)
    for side in sides:
        base = a.base[0 if side < 0 else 1]
        h = em.uniform(rng, 0.04, 0.1)
        u = side * f.X
        depth = np.clip(a.lat - u, 0, None)
        top = base - h + 0.9 * depth * np.sqrt(depth)  # depth ** 1.5 without libm's pow
        out = np.maximum(out, smoothstep(-0.01, 0.01, f.Y - top) * (u > 0))
    return out


def not_normal_findings(rng: np.random.Generator, view: str, target: int) -> list[str]:
    """Findings of a ``No Lung Opacity / Not Normal`` patient (and some extras of positives)."""
    kinds = ["nodules", "mass", "devices", "cardiomegaly", "effusion", "raised_diaphragm"]
    p = np.array([0.22, 0.1, 0.3 if view == "PA" else 0.42, 0.16, 0.14, 0.1])
    if target:
        # opacities come with what ICU patients have: devices, a big heart, some fluid
        n = int(rng.random() < (0.45 if view == "AP" else 0.15))
        p = np.array([0.0, 0.0, 0.6, 0.25, 0.15, 0.0])
    else:
        n = 1 + int(rng.random() < 0.45) + int(rng.random() < 0.15)
    return list(rng.choice(kinds, size=n, replace=False, p=p / p.sum())) if n else []
