"""The synthetic RSNA-format dataset: chest-radiograph-like DICOMs, labels and detailed classes.

Each patient is drawn from its own random stream (``SeedSequence(seed, spawn_key=(index,))``), so
the data depend only on the seed, the image size and the patient's index: not on the number of
workers, the chunking or the number of patients generated after it. The images are drawn with
numpy at a working resolution (at most ``WORK_SIZE``), resized to the requested size, given film
grain, JPEG-encoded with Pillow and wrapped in a Secondary Capture DICOM exactly as the RSNA
archive's files are.

What the task looks like:
- ``Lung Opacity`` (Target 1): one to four soft, patchy, irregular opacities inside the lung fields;
  each box is the tight bounding box of what was drawn.
- ``No Lung Opacity / Not Normal`` (Target 0): nodules and masses (small, sharp, homogeneous),
  tubes, lines and devices, an enlarged heart, blunted costophrenic angles, a raised hemidiaphragm.
- The view is a confounder as in RSNA (AP films are far more often positive) and AP films look
  different (magnified heart, shallower inspiration, lower contrast, more noise and devices).
- Global image statistics carry no signal beyond the view: like a CR reader's histogram analysis,
  the display curve maps each film's histogram onto that of the same chest drawn without its
  findings, so opacities change local contrast only (a logistic regression on mean, std and a
  16-bin histogram scores AUROC about 0.6, all of it from the view; see bench/synthetic.py).

Box sizes follow RSNA's (median about 217 x 298 px at 1024), capped by the width of one lung field,
since every box lies inside a lung.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import multiprocessing
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pneumo import exactmath as em
from pneumo.atomic import atomic_dir, atomic_path
from pneumo.rsna import (
    CLASS_INFO_COLUMNS,
    CLASS_INFO_CSV,
    LABEL_COLUMNS,
    LABELS_CSV,
    TRAIN_IMAGES,
)
from pneumo.workers import n_workers, process_pool

log = logging.getLogger(__name__)

__all__ = [
    "CLASSES",
    "Patient",
    "Rendered",
    "generate",
    "patient_rng",
    "render",
    "sample_patient",
    "synthesize",
    "to_dicom",
    "write_dicom",
    "write_patients",
]

CLASSES = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")
WORK_SIZE = 384  # drawing resolution; larger images are resized from it, then get fine grain
JPEG_QUALITY = 92

# RSNA's figures (RSNA.md): view mix and positive rate per view, sex mix, boxes per positive.
P_AP = 0.46
P_POS = {"AP": 0.383, "PA": 0.093}
P_MALE = {1: 0.585, 0: 0.566}  # gives M 57 % overall, 23.1 % / 21.7 % positive for M / F
P_NOT_NORMAL = {"AP": 0.70, "PA": 0.50}  # of negatives: 57 % overall, as RSNA's 11,821 / 20,672
BOX_COUNTS = (1, 2, 3, 4)
BOX_COUNT_P = np.array([2614, 3266, 119, 13]) / 6012
# Age quantile function through RSNA's median 49 and quartiles 34 / 59 (range 1 to 100).
AGE_Q = (0.0, 0.02, 0.08, 0.25, 0.5, 0.75, 0.92, 0.99, 1.0)
AGE_V = (1.0, 6.0, 18.0, 34.0, 49.0, 59.0, 71.0, 85.0, 100.0)
# RSNA has five impossible ages in 26,684; we place one every IMPOSSIBLE_EVERY patients (always at
# the same indices, so a dataset of a few hundred already has one for validation to flag).
IMPOSSIBLE_EVERY = 750
IMPOSSIBLE_OFFSET = 11
IMPOSSIBLE_AGES = (148, 150, 151, 153, 155)
# Box size in 1024-px units (RSNA: width median 217, 40-528; height median 298, 45-942).
BOX_W = (217.0, 0.38, 40.0, 528.0)  # median, log-sd, min, max
BOX_H = (298.0, 0.42, 45.0, 942.0)
PIXEL_SPACINGS = (0.139, 0.143, 0.143, 0.143, 0.143, 0.168, 0.171, 0.194)  # mm at 1024 px


@dataclass(frozen=True)
class Patient:
    """What the labels and the DICOM header say about one synthetic patient."""

    index: int
    patient_id: str
    view: str  # "PA" / "AP"
    sex: str  # "M" / "F"
    age: int
    cls: str  # one of CLASSES
    target: int
    n_boxes: int  # 0 for negatives


@dataclass(frozen=True)
class Rendered:
    """A drawn radiograph, its boxes and the lung fields they must lie in."""

    image: np.ndarray  # uint8 (size, size)
    boxes: np.ndarray  # float (K, 4) x, y, width, height in image pixels
    lungs: np.ndarray  # bool (w, w) lung fields at the working resolution
    opacity: np.ndarray  # float (w, w) in [0, 1]: how much air the opacities replace
    findings: tuple[str, ...]  # what was drawn besides the anatomy (for inspection)


# ----------------------------------------------------------------------------------------------
# Sampling patients


def patient_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of patient ``index``: the same whatever worker or chunk draws it."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def sample_patient(rng: np.random.Generator, index: int) -> Patient:
    """Draw id, view, target, class, sex and age with RSNA's mix and confounders."""
    patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    view = "AP" if rng.random() < P_AP else "PA"
    target = int(rng.random() < P_POS[view])
    sex = "M" if rng.random() < P_MALE[target] else "F"
    age = int(round(float(em.interp(rng.random(), AGE_Q, AGE_V))))
    if index % IMPOSSIBLE_EVERY == IMPOSSIBLE_OFFSET:
        age = int(rng.choice(IMPOSSIBLE_AGES))
    if target:
        cls = CLASSES[2]
        n_boxes = int(rng.choice(BOX_COUNTS, p=BOX_COUNT_P))
    else:
        cls = CLASSES[1] if rng.random() < P_NOT_NORMAL[view] else CLASSES[0]
        n_boxes = 0
    return Patient(index, patient_id, view, sex, age, cls, target, n_boxes)


# ----------------------------------------------------------------------------------------------
# Drawing


def _smoothstep(e0: float, e1: float, v: np.ndarray | float) -> np.ndarray:
    t = np.clip((v - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_noise(rng: np.random.Generator, cells: int, shape: tuple[int, int]) -> np.ndarray:
    """Band-limited noise (std about 1): a coarse random grid resized bicubically."""
    small = em.normal(rng, size=(cells, cells)).astype(np.float32)
    return em.resize(small, shape)


@dataclass
class _Frame:
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
class _Anatomy:
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


def _anatomy(rng: np.random.Generator, view: str) -> _Anatomy:
    ap = view == "AP"
    # AP films are taken supine or sitting: shallower inspiration, magnified heart, scapulae over
    # the lungs, clavicles projected higher. The ranges overlap PA's on purpose.
    base = em.normal(rng, 0.335 if ap else 0.37, 0.035)
    tilt = em.normal(rng, 0.0, 0.012)
    return _Anatomy(
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


def _frame(rng: np.random.Generator, w: int, view: str) -> _Frame:
    scale = em.uniform(rng, 0.86, 1.0) * (1.02 if view == "AP" else 1.0)
    cx, cy = 0.5 + em.normal(rng, 0, 0.02), 0.47 + em.normal(rng, 0, 0.025)
    angle = em.normal(rng, 0, 2.5) * (math.pi / 180)
    g = (np.arange(w, dtype=np.float32) + 0.5) / w
    dx, dy = g[None, :] - cx, g[:, None] - cy
    c, s = em.cos(angle), em.sin(angle)
    X = ((c * dx + s * dy) / scale).astype(np.float32)
    Y = ((-s * dx + c * dy) / scale).astype(np.float32)
    return _Frame(X, Y, cx, cy, scale, c, s, w)


def _sides(X: np.ndarray, right: float, left: float) -> np.ndarray:
    """Per-pixel choice of the patient's right (image left, X < 0) or left value."""
    return np.where(X < 0, np.float32(right), np.float32(left))


def _lung_fields(
    f: _Frame, a: _Anatomy, raised: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
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


def _heart(f: _Frame, a: _Anatomy, scale: float, raised: float) -> tuple[np.ndarray, float]:
    """The cardiac silhouette: a tilted ellipse resting on the left hemidiaphragm."""
    hw, hh = a.heart_w * scale, a.heart_h * scale
    cy = a.base[1] - raised - a.dome[1] - 0.55 * hh
    dx, dy = f.X - (a.heart_x + 0.25 * (hw - a.heart_w)), f.Y - cy
    c, s = em.cos(a.heart_tilt), em.sin(a.heart_tilt)
    r = np.sqrt(((c * dx + s * dy) / hw) ** 2 + ((-s * dx + c * dy) / hh) ** 2)
    return 1 - _smoothstep(0.93, 1.03, r), cy - 0.8 * hh


def _bones(f: _Frame, a: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Ribs (posterior and anterior), clavicles, spine and scapular borders."""
    X, Y = f.X, f.Y
    U = np.abs(X)
    base = _sides(X, *a.base)
    cage = (
        _smoothstep(-0.03, 0.01, a.lat + 0.035 - U)
        * _smoothstep(a.apex - 0.06, a.apex - 0.01, Y)
        * (1 - _smoothstep(base - 0.02, base + 0.04, Y))
        * _smoothstep(0.03, 0.07, U)
    )
    # posterior ribs arch up from the spine and wrap down around the chest wall
    s = Y + 0.35 * U - 1.5 * U**2
    fr = np.mod(s / a.rib_spacing + a.rib_phase, 1.0)
    post = _smoothstep(0.0, 0.07, fr) * (1 - _smoothstep(0.28, 0.36, fr))
    cortex = em.exp(-(((fr - 0.04) / 0.035) ** 2)) + em.exp(-(((fr - 0.32) / 0.035) ** 2))
    # anterior ribs run down and in from the chest wall and fade at the costal cartilage
    sa = Y - 0.55 * (0.42 - U)
    fa = np.mod(sa / (a.rib_spacing * 1.3) + a.rib_phase * 0.7, 1.0)
    ant = _smoothstep(0.0, 0.06, fa) * (1 - _smoothstep(0.2, 0.28, fa)) * _smoothstep(0.12, 0.24, U)
    bones = cage * (0.045 * post + 0.022 * cortex + 0.022 * ant)
    yc = a.clav_y - 0.2 * (U - 0.05) + 0.6 * (U - 0.05) * (U - 0.36)
    clav = (1 - _smoothstep(0.01, 0.018, np.abs(Y - yc))) * (
        _smoothstep(0.03, 0.06, U) * (1 - _smoothstep(0.36, 0.42, U))
    )
    spine = (1 - _smoothstep(0.028, 0.038, np.abs(X))) * (
        0.05 + 0.01 * em.cos(2 * np.pi * Y / 0.058 + em.uniform(rng, 0, 6.3))
    )
    scap_edge = a.scap_x + 0.12 * (Y + 0.3)
    scap = (
        _smoothstep(-0.008, 0.008, U - scap_edge)
        * _smoothstep(-0.38, -0.3, Y)
        * (1 - _smoothstep(0.0, 0.1, Y))
    )
    return bones + 0.1 * clav + spine + 0.04 * scap


def _body(f: _Frame) -> tuple[np.ndarray, np.ndarray]:
    """Soft-tissue silhouette (0..1) with shoulders, and its thickness profile."""
    X, Y = f.X, f.Y
    shoulder = _smoothstep(-0.5, -0.3, Y + 0.25 * np.clip(np.abs(X) - 0.1, 0, None))
    half = 0.1 + 0.37 * shoulder - 0.02 * _smoothstep(-0.2, 0.6, Y)
    body = _smoothstep(0.0, 0.025, half - np.abs(X))
    thick = np.sqrt(np.clip(1 - (X / (half + 0.05)) ** 2, 0, 1))
    return body, thick


def _mediastinum(f: _Frame, heart_top: float) -> np.ndarray:
    """The superior mediastinum and aortic knob; below them the heart takes over."""
    X, Y = f.X, f.Y
    width = 0.052 + 0.02 * _smoothstep(-0.2, 0.05, Y)
    band = (1 - _smoothstep(width - 0.012, width + 0.012, np.abs(X - 0.005))) * (
        1 - _smoothstep(heart_top, heart_top + 0.1, Y)
    )
    knob = 1 - _smoothstep(0.7, 1.0, np.sqrt(((X - 0.045) / 0.04) ** 2 + ((Y + 0.15) / 0.04) ** 2))
    return np.maximum(band, knob)


def _match_histogram(img: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Monotone remap of ``img`` whose histogram then follows that of ``reference``."""
    q = np.linspace(0.0, 1.0, 257)
    ramp = np.arange(q.size) * 1e-7  # flat stretches (background, saturation) keep xp increasing
    src = np.quantile(img[::2, ::2], q) + ramp
    dst = np.quantile(reference, q)
    return em.interp(img, src, dst).astype(np.float32)


def _ridges(rng: np.random.Generator, cells: int, shape: tuple[int, int]) -> np.ndarray:
    """Thin worm-like ridges (0..1) along the zero crossings of smooth noise: vessel markings."""
    n = _smooth_noise(rng, cells, shape)
    return em.exp(-((n / 0.22) ** 2))


def _ellipse_blob(
    f: _Frame,
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
    envelope = 1 - _smoothstep(0.85, 1.0, np.sqrt((X / ra) ** 2 + (Y / rb) ** 2))
    return win, field * envelope


def _lower_lobes(rng: np.random.Generator) -> float:
    """A draw on [0, 1) skewed towards 1 (the lung bases), like Beta(2, 1.4): a Kumaraswamy
    variable, by inversion, since numpy's beta sampler runs through libm."""
    return math.sqrt(1.0 - em.power(1.0 - rng.random(), 1 / 1.4))


def _one_opacity(
    f: _Frame, a: _Anatomy, rng: np.random.Generator, side: int, shrink: float, aerated: np.ndarray
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
    patchy = _smoothstep(0.2, 0.6, blob / max(float(blob.max()), 1e-6))
    # fluffy mottling a few pixels across at 128 px, and air bronchograms: dark branching lines
    # of aerated airways crossing the consolidation
    side_px = max(blob.shape)
    mottle = _smooth_noise(rng, int(np.clip(side_px / 7, 5, 24)), blob.shape)
    patchy *= np.clip(0.62 + 0.38 * mottle, 0.15, 1.0)
    patchy *= 1 - 0.45 * _ridges(rng, max(3, side_px // 16), blob.shape)
    shown = patchy * em.uniform(rng, 0.7, 1.0)
    visible = shown * aerated[win] > 0.12
    px = f.scale * f.w
    area = math.pi * ra * rb * px * px
    if visible.sum() < max(0.3 * area, 4):  # mostly hidden by the heart or the diaphragm
        return None
    return win, np.where(visible, shown, 0).astype(np.float32)


def _opacities(
    f: _Frame,
    a: _Anatomy,
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

    def __init__(self, f: _Frame, rng: np.random.Generator):
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


def _et_tube(pen: _Pen, a: _Anatomy) -> None:
    end = a.apex + 0.2 - em.uniform(pen.rng, 0.03, 0.08)  # tip a few cm above the carina
    pen.line([(pen.jitter(), -0.6), (pen.jitter(0.005), -0.45), (pen.jitter(0.005), end)], 1)


def _ng_tube(pen: _Pen, a: _Anatomy) -> None:
    j = pen.jitter
    pen.line([(j(), -0.6), (j(), -0.2), (0.02 + j(), a.base[1]), (0.15 + j(0.03), 0.5)])


def _central_line(pen: _Pen, a: _Anatomy) -> None:
    side, j = float(pen.rng.choice([-1, 1])), pen.jitter
    pen.line(
        [
            (side * 0.5, -0.3 + j(0.03)),
            (side * 0.3, -0.32 + j()),
            (side * 0.1, -0.27 + j()),
            (side * 0.02, -0.12 + j(0.02)),
        ]
    )


def _ecg_leads(pen: _Pen, a: _Anatomy) -> None:
    for _ in range(int(pen.rng.integers(2, 5))):
        x, y = em.uniform(pen.rng, -0.38, 0.38), em.uniform(pen.rng, -0.35, 0.25)
        pen.ring(x, y, 0.013, 0.013)
        pen.block(x, y, 0.003, 0.003)
        edge = float(pen.rng.choice([-0.6, 0.6]))
        pen.line([(x, y), (x + pen.jitter(0.15), y + pen.jitter(0.15)), (edge, pen.jitter(0.4))])


def _pacemaker(pen: _Pen, a: _Anatomy) -> None:
    x, y = 0.28 + pen.jitter(0.03), -0.27 + pen.jitter(0.02)
    pen.block(x, y, 0.035, 0.025)
    pen.line([(x, y), (0.1, -0.3), (0.0, -0.1), (a.heart_x, a.base[1] - 0.12)])


def _sternal_wires(pen: _Pen, a: _Anatomy) -> None:
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


def _devices(f: _Frame, a: _Anatomy, rng: np.random.Generator, kinds: list[str]) -> np.ndarray:
    """Radio-opaque tubes, lines, leads and devices on one layer (0..1)."""
    pen = _Pen(f, rng)
    for kind in kinds:
        _DEVICES[kind](pen, a)
    layer = pen.layer  # soften the stamps a little: metal edges are sharp, but not aliased
    return (layer + np.roll(layer, 1, 0) + np.roll(layer, 1, 1) + np.roll(layer, 1, (0, 1))) / 4


def _nodules(
    f: _Frame, a: _Anatomy, rng: np.random.Generator, aerated: np.ndarray, n: int, mass: bool
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
        disc = (1 - _smoothstep(r * 0.85, r, d)) * em.uniform(rng, 0.2, 0.35)
        out[win] = np.maximum(out[win], disc * (aerated[win] > 0.5))
    return out


def _effusion(f: _Frame, a: _Anatomy, rng: np.random.Generator, sides: list[int]) -> np.ndarray:
    """Fluid blunting a costophrenic angle: homogeneous, highest laterally (a meniscus)."""
    out = np.zeros_like(f.X)
    for side in sides:
        base = a.base[0 if side < 0 else 1]
        h = em.uniform(rng, 0.04, 0.1)
        u = side * f.X
        depth = np.clip(a.lat - u, 0, None)
        top = base - h + 0.9 * depth * np.sqrt(depth)  # depth ** 1.5 without libm's pow
        out = np.maximum(out, _smoothstep(-0.01, 0.01, f.Y - top) * (u > 0))
    return out


def _not_normal_findings(rng: np.random.Generator, view: str, target: int) -> list[str]:
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


def _device_kinds(rng: np.random.Generator, view: str) -> list[str]:
    icu = ["et_tube", "ng_tube", "central_line", "ecg_leads"]
    if view == "AP":  # portable films: intensive-care patients with tubes and leads
        k = list(rng.choice(icu, size=int(rng.integers(1, 4)), replace=False))
    else:
        k = list(rng.choice(icu + ["pacemaker", "sternal_wires"], size=1))
    if rng.random() < 0.12:
        k.append("pacemaker" if rng.random() < 0.5 else "sternal_wires")
    return sorted(set(k))


def _grain(rng: np.random.Generator, sd: float, shape: tuple[int, int]) -> np.ndarray:
    """Film grain with standard deviation ``sd``: triangular noise (the sum of two uniforms),
    which looks like Gaussian noise once JPEG-encoded and costs no transcendental function."""
    g = rng.random(shape, dtype=np.float32)
    g += rng.random(shape, dtype=np.float32)
    g -= np.float32(1.0)
    g *= np.float32(sd * math.sqrt(6.0))
    return g


def render(patient: Patient, rng: np.random.Generator, size: int) -> Rendered:
    """Draw the radiograph of ``patient`` at ``size`` x ``size`` pixels, with its boxes."""
    w = min(size, WORK_SIZE)
    f = _frame(rng, w, patient.view)
    a = _anatomy(rng, patient.view)
    findings = []
    if patient.cls != CLASSES[0]:
        findings = _not_normal_findings(rng, patient.view, patient.target)
    raised = (0.0, 0.0)
    if "raised_diaphragm" in findings:
        raised = (
            (em.uniform(rng, 0.05, 0.09), 0.0)
            if rng.random() < 0.5
            else (0.0, em.uniform(rng, 0.05, 0.09))
        )
    heart_scale = em.uniform(rng, 1.18, 1.32) if "cardiomegaly" in findings else 1.0

    X, Y = f.X, f.Y
    U = np.abs(X)
    body, thick = _body(f)
    lungs, below = _lung_fields(f, a, raised)
    heart, heart_top = _heart(f, a, heart_scale, raised[1])
    medi = _mediastinum(f, heart_top)
    aerated = lungs * (1 - heart) * (1 - medi)
    # heart, mediastinum and abdomen are all thick soft tissue: one brightness, no edges between
    soft = np.maximum(np.maximum(medi, heart), below)
    b = body * (0.3 + 0.26 * thick + 0.14 * soft + _bones(f, a, rng))
    trachea = (1 - _smoothstep(0.011, 0.019, np.abs(X))) * (1 - _smoothstep(-0.22, -0.14, Y))
    b -= 0.06 * trachea * body
    bubble = em.exp(-(((X - 0.2) / 0.05) ** 2 + ((Y - a.base[1] - 0.03) / 0.022) ** 2) / 2)
    b -= bubble * below * em.uniform(rng, 0.0, 0.12)
    if patient.sex == "F" and patient.age >= 14:
        breast = em.exp(-(((U - 0.27) / 0.14) ** 2 + ((Y - a.base[0] + 0.05) / 0.1) ** 2) / 2)
        b += breast * body * em.uniform(rng, 0.0, 0.05)

    # Lung markings: vessels branch out of the hila and fade towards the periphery.
    hilum_y = a.apex + 0.45 * (min(a.base) - a.apex)
    d_hilum = np.sqrt((U - 0.13) ** 2 + ((Y - hilum_y) * 0.8) ** 2)
    near = em.exp(-d_hilum / 0.1)
    vessels = _ridges(rng, 14, (w, w)) * (0.3 + near) + 0.5 * _ridges(rng, 34, (w, w)) * near
    hila = em.exp(-(((U - 0.13) / 0.03) ** 2 + ((Y - hilum_y) / 0.05) ** 2) / 2)
    b += aerated * (0.05 * vessels + 0.06 * hila)

    boxes, op = np.zeros((0, 4)), np.zeros_like(aerated)
    air = aerated * (0.82 + 0.18 * _smoothstep(a.apex, a.apex + 0.16, Y))  # apices: more tissue
    density = a.lung_depth * (1 + 0.08 * _smooth_noise(rng, 5, (w, w)))
    reference = b - density * air  # the same chest without any finding
    if patient.n_boxes:
        op, boxes = _opacities(f, a, rng, patient.n_boxes, aerated, size / w)
        air *= 1 - op
        b += 0.04 * op
    if "effusion" in findings:
        sides = [-1, 1] if rng.random() < 0.4 else [int(rng.choice([-1, 1]))]
        eff = _effusion(f, a, rng, sides) * lungs
        air *= 1 - eff
        b += 0.03 * eff
    b -= density * air
    if "nodules" in findings or "mass" in findings:
        mass = "mass" in findings and ("nodules" not in findings or rng.random() < 0.5)
        b += _nodules(f, a, rng, aerated, 1 if mass else int(rng.integers(1, 5)), mass)
    if "devices" in findings or (patient.view == "AP" and rng.random() < 0.1):
        b += 0.45 * _devices(f, a, rng, _device_kinds(rng, patient.view))

    # Exposure and display: portable AP films are flatter and noisier. Like a CR reader's
    # histogram analysis, the display curve normalises the film's histogram, here to that of the
    # same chest without findings: findings change local contrast, not the global histogram.
    ap = patient.view == "AP"
    lo = em.uniform(rng, 0.0, 0.07) + (0.01 if ap else 0.0)
    hi = em.uniform(rng, 0.8, 0.98) - (0.025 if ap else 0.0)
    gamma = em.uniform(rng, 0.8, 1.3)

    def display(v: np.ndarray) -> np.ndarray:
        return lo + (hi - lo) * em.power(np.clip(v / 0.85, 0, 1), gamma)

    img = _match_histogram(display(b), display(reference[::2, ::2]))
    img += _grain(rng, em.uniform(rng, 0.006, 0.014) * (1.25 if ap else 1.0), img.shape)
    img = img.astype(np.float32)
    if size != w:
        img = em.resize(img, (size, size), cubic=False)
        # and fine grain at full size
        img += _grain(rng, em.uniform(rng, 0.006, 0.012), (size, size))
    img *= np.float32(255)
    img += np.float32(0.5)
    image = np.clip(img, 0, 255, out=img).astype(np.uint8)
    return Rendered(image, boxes, lungs > 0.5, op, tuple(findings))


def synthesize(seed: int, index: int, size: int) -> tuple[Patient, Rendered]:
    """Patient ``index`` of the dataset with ``seed``: metadata and drawn image."""
    rng = patient_rng(seed, index)
    patient = sample_patient(rng, index)
    return patient, render(patient, rng, size)


# ----------------------------------------------------------------------------------------------
# DICOM


def to_dicom(image: np.ndarray, patient: Patient, pixel_spacing: float) -> Dataset:
    """A Secondary Capture dataset with JPEG Baseline pixel data, as in the RSNA archive."""
    buf = io.BytesIO()
    Image.fromarray(image, "L").save(buf, "JPEG", quality=JPEG_QUALITY)
    pid = patient.patient_id
    uids = [generate_uid(entropy_srcs=[pid, part]) for part in ("study", "series", "sop")]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uids[2]
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uids[2]
    ds.StudyDate = "19010101"
    ds.StudyTime = "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {patient.view}"
    ds.PatientName = pid
    ds.PatientID = pid
    ds.PatientBirthDate = ""
    ds.PatientSex = patient.sex
    # RSNA's ages are bare numbers, invalid for VR AS: set without pydicom's validation (which
    # would warn and log once per file)
    ds[0x00101010] = DataElement(0x00101010, "AS", str(patient.age), validation_mode=config.IGNORE)
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = patient.view
    ds.StudyInstanceUID = uids[0]
    ds.SeriesInstanceUID = uids[1]
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.PixelSpacing = [f"{pixel_spacing:.6g}", f"{pixel_spacing:.6g}"]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    return ds


def write_dicom(ds: Dataset, path: Path) -> None:
    """Save a dataset in the DICOM file format (with preamble and file meta)."""
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def write_patients(seed: int, start: int, stop: int, size: int, out_dir: str) -> list[dict]:
    """Draw and write patients [start, stop); return their label rows (worker entry point)."""
    rows = []
    for index in range(start, stop):
        patient, rendered = synthesize(seed, index, size)
        rng = patient_rng(seed ^ 0x5EED, index)  # header-only draws, independent of drawing
        spacing = float(rng.choice(PIXEL_SPACINGS)) * 1024 / size
        path = Path(out_dir) / f"{patient.patient_id}.dcm"
        write_dicom(to_dicom(rendered.image, patient, spacing), path)
        rows.append(
            {
                "patientId": patient.patient_id,
                "target": patient.target,
                "class": patient.cls,
                "view": patient.view,
                "sex": patient.sex,
                "age": patient.age,
                "boxes": rendered.boxes.tolist(),
            }
        )
    return rows


def _draw_all(seed: int, n: int, size: int, out_dir: Path, workers: int) -> list[dict]:
    """Draw and write every patient, in chunks over ``workers`` processes; rows in index order."""
    workers = min(n_workers(workers), n)
    step = max(1, min(32, math.ceil(n / (4 * workers))))
    chunks = [(s, min(s + step, n)) for s in range(0, n, step)]
    rows: list[dict] = []
    every = max(n // 10, 1)

    def collect(part: list[dict]) -> None:
        before = len(rows)
        rows.extend(part)
        if len(rows) // every > before // every or len(rows) == n:
            log.info("synthetic: %d / %d patients", len(rows), n)

    if workers <= 1:
        for s, e in chunks:
            collect(write_patients(seed, s, e, size, str(out_dir)))
        return rows
    # spawn, not fork: the parent may hold torch/OpenMP threads that a fork would copy badly
    # (callers' scripts therefore need the usual `if __name__ == "__main__":` guard)
    ctx = multiprocessing.get_context("spawn")
    with process_pool(workers, ctx) as pool:
        futures = [pool.submit(write_patients, seed, s, e, size, str(out_dir)) for s, e in chunks]
        for fut in futures:
            collect(fut.result())
    return rows


def _fmt(v: float) -> str:
    return f"{float(v):.1f}"  # the Kaggle CSV writes 264.0


def write_labels(rows: list[dict], out_dir: Path) -> None:
    """Write the labels and detailed-class CSVs (one row per box, row-aligned) via temp names."""
    labels, classes = out_dir / LABELS_CSV, out_dir / CLASS_INFO_CSV
    with (
        atomic_path(labels) as labels_tmp,
        atomic_path(classes) as classes_tmp,
        open(labels_tmp, "w", newline="") as fl,
        open(classes_tmp, "w", newline="") as fc,
    ):
        wl, wc = csv.writer(fl, lineterminator="\n"), csv.writer(fc, lineterminator="\n")
        wl.writerow(LABEL_COLUMNS)
        wc.writerow(CLASS_INFO_COLUMNS)
        for r in rows:
            for box in r["boxes"] or [None]:
                coords = [_fmt(v) for v in box] if box else ["", "", "", ""]
                wl.writerow([r["patientId"], *coords, r["target"]])
                wc.writerow([r["patientId"], r["class"]])


def generate(
    out_dir: Path, n_patients: int, image_size: int = 1024, seed: int = 0, workers: int = 0
) -> dict:
    """Write ``n_patients`` synthetic patients in the RSNA archive layout into ``out_dir``.

    ``out_dir`` is built in a sibling temporary folder and swapped in when complete (replacing a
    previous one). ``workers`` = 0 uses every core. Returns a summary of what was written.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    if not 32 <= image_size <= 4096:
        raise ValueError(f"image_size must be between 32 and 4096, got {image_size}")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        images = tmp / TRAIN_IMAGES
        images.mkdir()
        rows = _draw_all(seed, n_patients, image_size, images, workers)
        write_labels(rows, tmp)
    seconds = time.perf_counter() - t0
    return {
        "n_patients": n_patients,
        "n_positive": sum(r["target"] for r in rows),
        "n_boxes": sum(len(r["boxes"]) for r in rows),
        "classes": dict(Counter(r["class"] for r in rows)),
        "views": dict(Counter(r["view"] for r in rows)),
        "image_size": image_size,
        "seed": seed,
        "seconds": round(seconds, 2),
        "images_per_s": round(n_patients / seconds, 1),
    }
