"""The normal chest on the pixel grid: patient coordinates, lungs, heart, mediastinum, bones
and soft tissue, each a soft mask or density (0..1); and the noise fields they are built from."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pneumo import exactmath as em


def smoothstep(e0: float, e1: float, v: np.ndarray | float) -> np.ndarray:
    """0 below ``e0``, 1 above ``e1``, a cubic ramp between: the soft edge of every mask."""
    t = np.clip((v - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def smooth_noise(rng: np.random.Generator, cells: int, shape: tuple[int, int]) -> np.ndarray:
    """Band-limited noise (std about 1): a coarse random grid resized bicubically."""
    small = em.normal(rng, size=(cells, cells)).astype(np.float32)
    return em.resize(small, shape)


def ridges(rng: np.random.Generator, cells: int, shape: tuple[int, int]) -> np.ndarray:
    """Thin worm-like ridges (0..1) along the zero crossings of smooth noise: vessel markings."""
    n = smooth_noise(rng, cells, shape)
    return em.exp(-((n / 0.22) ** 2))


@dataclass
class Frame:
    """Patient coordinates on the pixel grid: X across the chest (patient's left = +X), Y down."""

    X: np.ndarray
    Y: np.ndarray
    cx: float
    cy: float
    scale: float
    cos: float
    sin: float
    w: int  # working grid size

    def to_pixels(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Patient coordinates -> (column, row) on the working grid."""
        dx = self.scale * (self.cos * X - self.sin * Y)
        dy = self.scale * (self.sin * X + self.cos * Y)
        return (self.cx + dx) * self.w - 0.5, (self.cy + dy) * self.w - 0.5

    def window(self, X0: float, Y0: float, radius: float) -> tuple[slice, slice]:
        """Grid rows/columns covering a disc of ``radius`` (patient units) around (X0, Y0)."""
        col, row = self.to_pixels(np.array(X0), np.array(Y0))
        r = radius * self.scale * self.w + 2
        r0, r1 = max(int(row - r), 0), min(int(row + r) + 1, self.w)
        c0, c1 = max(int(col - r), 0), min(int(col + r) + 1, self.w)
        return slice(r0, max(r1, r0)), slice(c0, max(c1, c0))


@dataclass
class Anatomy:
    """One chest's proportions, in patient units (Y down from the grid centre)."""

    apex: float  # Y of the lung apices
    base: tuple[float, float]  # Y of the costophrenic angles (patient's right = image left, left)
    dome: tuple[float, float]  # height of each hemidiaphragm's dome above its angle
    lat: float  # lateral extent of the lungs at the base
    med: float  # medial border of the lungs (the mediastinum's half-width)
    heart_w: float
    heart_h: float
    heart_x: float
    heart_tilt: float
    lung_depth: float  # how dark the aerated lung is
    clav_y: float
    scap_x: float  # medial border of the scapulae (over the lungs on AP films)
    rib_phase: float
    rib_spacing: float


def sample_anatomy(rng: np.random.Generator, view: str) -> Anatomy:
    """Draw the chest's proportions; AP films get the supine or sitting patient's."""
    ap = view == "AP"
    # AP films are taken supine or sitting: shallower inspiration, magnified heart, scapulae over
    # the lungs, clavicles projected higher. The ranges overlap PA's on purpose.
    base = em.normal(rng, 0.335 if ap else 0.37, 0.035)
    tilt = em.normal(rng, 0.0, 0.012)
    return Anatomy(
        apex=em.normal(rng, -0.36, 0.02),
        base=(base - 0.012 + tilt, base + 0.012 - tilt),
        dome=(em.uniform(rng, 0.09, 0.15), em.uniform(rng, 0.08, 0.14)),
        lat=em.uniform(rng, 0.37, 0.41),
        med=em.uniform(rng, 0.045, 0.06),
        heart_w=em.uniform(rng, 0.16, 0.19) * (1.1 if ap else 1.0),
        heart_h=em.uniform(rng, 0.11, 0.13) * (1.06 if ap else 1.0),
        heart_x=em.uniform(rng, 0.04, 0.07),
        heart_tilt=em.uniform(rng, 0.35, 0.6),
        lung_depth=em.uniform(rng, 0.2, 0.36),
        clav_y=em.normal(rng, -0.37 if ap else -0.33, 0.02),
        scap_x=em.uniform(rng, 0.25, 0.31) if ap else em.uniform(rng, 0.41, 0.47),
        rib_phase=em.uniform(rng, 0.0, 1.0),
        rib_spacing=em.uniform(rng, 0.066, 0.076),
    )


def sample_frame(rng: np.random.Generator, w: int, view: str) -> Frame:
    """Draw where the chest lies on a ``w`` x ``w`` grid: centre, magnification and tilt."""
    scale = em.uniform(rng, 0.86, 1.0) * (1.02 if view == "AP" else 1.0)
    cx, cy = 0.5 + em.normal(rng, 0, 0.02), 0.47 + em.normal(rng, 0, 0.025)
    angle = em.normal(rng, 0, 2.5) * (math.pi / 180)
    g = (np.arange(w, dtype=np.float32) + 0.5) / w
    dx, dy = g[None, :] - cx, g[:, None] - cy
    c, s = em.cos(angle), em.sin(angle)
    X = ((c * dx + s * dy) / scale).astype(np.float32)
    Y = ((-s * dx + c * dy) / scale).astype(np.float32)
    return Frame(X, Y, cx, cy, scale, c, s, w)


def _sides(X: np.ndarray, right: float, left: float) -> np.ndarray:
    """Per-pixel choice of the patient's right (image left, X < 0) or left value."""
    return np.where(X < 0, np.float32(right), np.float32(left))


def lung_fields(f: Frame, a: Anatomy, raised: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Soft masks (0..1) of both lungs and of what lies below the diaphragm."""
    X, Y = f.X, f.Y
    U = np.abs(X)
    base = _sides(X, a.base[0] - raised[0], a.base[1] - raised[1])
    top = base - _sides(X, *a.dome)
    t = np.clip((Y - a.apex) / (base - a.apex), 0, 1)
    # a rounded apex (a circle of radius 0.1 around apex_u) opening into the chest wall, which
    # widens a little down to the costophrenic angle
    apex_u = 0.2
    dome = np.sqrt(0.2 * np.clip(Y - a.apex, 0, None))
    lat = np.minimum(apex_u + dome, a.lat - 0.07 * (1 - t) ** 2)
    med = np.maximum(apex_u - dome, a.med + 0.015 * t)
    peak = 0.15
    dia = (
        top
        + (base - top) * np.clip((U - peak) / (a.lat - peak), 0, None) ** 2
        + 0.8 * np.clip(peak - U, 0, None) ** 2
    )
    d = np.minimum(np.minimum(lat - U, U - med), np.minimum(dia - Y, Y - a.apex + 0.01))
    below = np.clip((Y - dia) / 0.015 + 0.5, 0, 1)
    return np.clip(d / 0.012 + 0.5, 0, 1), below


def cardiac_silhouette(
    f: Frame, a: Anatomy, scale: float, raised: float
) -> tuple[np.ndarray, float]:
    """The cardiac silhouette: a tilted ellipse resting on the left hemidiaphragm."""
    hw, hh = a.heart_w * scale, a.heart_h * scale
    cy = a.base[1] - raised - a.dome[1] - 0.55 * hh
    dx, dy = f.X - (a.heart_x + 0.25 * (hw - a.heart_w)), f.Y - cy
    c, s = em.cos(a.heart_tilt), em.sin(a.heart_tilt)
    r = np.sqrt(((c * dx + s * dy) / hw) ** 2 + ((-s * dx + c * dy) / hh) ** 2)
    return 1 - smoothstep(0.93, 1.03, r), cy - 0.8 * hh


def bones(f: Frame, a: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Ribs (posterior and anterior), clavicles, spine and scapular borders."""
    X, Y = f.X, f.Y
    U = np.abs(X)
    base = _sides(X, *a.base)
    cage = (
        smoothstep(-0.03, 0.01, a.lat + 0.035 - U)
        * smoothstep(a.apex - 0.06, a.apex - 0.01, Y)
        * (1 - smoothstep(base - 0.02, base + 0.04, Y))
        * smoothstep(0.03, 0.07, U)
    )
    # posterior ribs arch up from the spine and wrap down around the chest wall
    s = Y + 0.35 * U - 1.5 * U**2
    fr = np.mod(s / a.rib_spacing + a.rib_phase, 1.0)
    post = smoothstep(0.0, 0.07, fr) * (1 - smoothstep(0.28, 0.36, fr))
    cortex = em.exp(-(((fr - 0.04) / 0.035) ** 2)) + em.exp(-(((fr - 0.32) / 0.035) ** 2))
    # anterior ribs run down and in from the chest wall and fade at the costal cartilage
    sa = Y - 0.55 * (0.42 - U)
    fa = np.mod(sa / (a.rib_spacing * 1.3) + a.rib_phase * 0.7, 1.0)
    ant = smoothstep(0.0, 0.06, fa) * (1 - smoothstep(0.2, 0.28, fa)) * smoothstep(0.12, 0.24, U)
    bones = cage * (0.045 * post + 0.022 * cortex + 0.022 * ant)
    yc = a.clav_y - 0.2 * (U - 0.05) + 0.6 * (U - 0.05) * (U - 0.36)
    clav = (1 - smoothstep(0.01, 0.018, np.abs(Y - yc))) * (
        smoothstep(0.03, 0.06, U) * (1 - smoothstep(0.36, 0.42, U))
    )
    spine = (1 - smoothstep(0.028, 0.038, np.abs(X))) * (
        0.05 + 0.01 * em.cos(2 * np.pi * Y / 0.058 + em.uniform(rng, 0, 6.3))
    )
    scap_edge = a.scap_x + 0.12 * (Y + 0.3)
    scap = (
        smoothstep(-0.008, 0.008, U - scap_edge)
        * smoothstep(-0.38, -0.3, Y)
        * (1 - smoothstep(0.0, 0.1, Y))
    )
    return bones + 0.1 * clav + spine + 0.04 * scap


def soft_tissue(f: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Soft-tissue silhouette (0..1) with shoulders, and its thickness profile."""
    X, Y = f.X, f.Y
    shoulder = smoothstep(-0.5, -0.3, Y + 0.25 * np.clip(np.abs(X) - 0.1, 0, None))
    half = 0.1 + 0.37 * shoulder - 0.02 * smoothstep(-0.2, 0.6, Y)
    body = smoothstep(0.0, 0.025, half - np.abs(X))
    thick = np.sqrt(np.clip(1 - (X / (half + 0.05)) ** 2, 0, 1))
    return body, thick


def mediastinum(f: Frame, heart_top: float) -> np.ndarray:
    """The superior mediastinum and aortic knob; below them the heart takes over."""
    X, Y = f.X, f.Y
    width = 0.052 + 0.02 * smoothstep(-0.2, 0.05, Y)
    band = (1 - smoothstep(width - 0.012, width + 0.012, np.abs(X - 0.005))) * (
        1 - smoothstep(heart_top, heart_top + 0.1, Y)
    )
    knob = 1 - smoothstep(0.7, 1.0, np.sqrt(((X - 0.045) / 0.04) ** 2 + ((Y + 0.15) / 0.04) ** 2))
    return np.maximum(band, knob)
