"""One synthetic radiograph: anatomy, findings, exposure, display curve and film grain."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pneumo import exactmath as em
from pneumo.synthetic.anatomy import (
    bones,
    cardiac_silhouette,
    lung_fields,
    mediastinum,
    ridges,
    sample_anatomy,
    sample_frame,
    smooth_noise,
    smoothstep,
    soft_tissue,
)
from pneumo.synthetic.cohort import CLASSES, Patient, patient_rng, sample_patient
from pneumo.synthetic.devices import device_kinds, devices
from pneumo.synthetic.findings import effusion, nodules, not_normal_findings, opacities

WORK_SIZE = 384  # drawing resolution; larger images are resized from it, then get fine grain


@dataclass(frozen=True)
class Rendered:
    """A drawn radiograph, its boxes and the lung fields they must lie in."""

    image: np.ndarray  # uint8 (size, size)
    boxes: np.ndarray  # float (K, 4) x, y, width, height in image pixels
    lungs: np.ndarray  # bool (w, w) lung fields at the working resolution
    opacity: np.ndarray  # float (w, w) in [0, 1]: how much air the opacities replace
    findings: tuple[str, ...]  # what was drawn besides the anatomy (for inspection)


def _match_histogram(img: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Monotone remap of ``img`` whose histogram then follows that of ``reference``."""
    q = np.linspace(0.0, 1.0, 257)
    ramp = np.arange(q.size) * 1e-7  # flat stretches (background, saturation) keep xp increasing
    src = np.quantile(img[::2, ::2], q) + ramp
    dst = np.quantile(reference, q)
    return em.interp(img, src, dst).astype(np.float32)


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
    f = sample_frame(rng, w, patient.view)
    a = sample_anatomy(rng, patient.view)
    findings = []
    if patient.cls != CLASSES[0]:
        findings = not_normal_findings(rng, patient.view, patient.target)
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
    body, thick = soft_tissue(f)
    lungs, below = lung_fields(f, a, raised)
    heart, heart_top = cardiac_silhouette(f, a, heart_scale, raised[1])
    medi = mediastinum(f, heart_top)
    aerated = lungs * (1 - heart) * (1 - medi)
    # heart, mediastinum and abdomen are all thick soft tissue: one brightness, no edges between
    soft = np.maximum(np.maximum(medi, heart), below)
    b = body * (0.3 + 0.26 * thick + 0.14 * soft + bones(f, a, rng))
    trachea = (1 - smoothstep(0.011, 0.019, np.abs(X))) * (1 - smoothstep(-0.22, -0.14, Y))
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
    vessels = ridges(rng, 14, (w, w)) * (0.3 + near) + 0.5 * ridges(rng, 34, (w, w)) * near
    hila = em.exp(-(((U - 0.13) / 0.03) ** 2 + ((Y - hilum_y) / 0.05) ** 2) / 2)
    b += aerated * (0.05 * vessels + 0.06 * hila)

    boxes, op = np.zeros((0, 4)), np.zeros_like(aerated)
    air = aerated * (0.82 + 0.18 * smoothstep(a.apex, a.apex + 0.16, Y))  # apices: more tissue
    density = a.lung_depth * (1 + 0.08 * smooth_noise(rng, 5, (w, w)))
    reference = b - density * air  # the same chest without any finding
    if patient.n_boxes:
        op, boxes = opacities(f, a, rng, patient.n_boxes, aerated, size / w)
        air *= 1 - op
        b += 0.04 * op
    if "effusion" in findings:
        sides = [-1, 1] if rng.random() < 0.4 else [int(rng.choice([-1, 1]))]
        eff = effusion(f, a, rng, sides) * lungs
        air *= 1 - eff
        b += 0.03 * eff
    b -= density * air
    if "nodules" in findings or "mass" in findings:
        mass = "mass" in findings and ("nodules" not in findings or rng.random() < 0.5)
        b += nodules(f, a, rng, aerated, 1 if mass else int(rng.integers(1, 5)), mass)
    if "devices" in findings or (patient.view == "AP" and rng.random() < 0.1):
        b += 0.45 * devices(f, a, rng, device_kinds(rng, patient.view))

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
