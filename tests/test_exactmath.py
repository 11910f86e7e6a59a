"""The CPU-independent elementary functions: accurate against numpy, of the caller's kind, and
built so that they cannot depend on the CPU (tests/test_reproducible.py shows the latter end to
end)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pneumo import exactmath as em

RNG = np.random.default_rng(0)
X = RNG.uniform(-40, 40, 50_000)
POS = RNG.uniform(1e-9, 1e5, 50_000)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


@pytest.mark.parametrize(
    ("ours", "reference", "x"),
    [(em.exp, np.exp, X), (em.sin, np.sin, X), (em.cos, np.cos, X), (em.log, np.log, POS)],
    ids=["exp", "sin", "cos", "log"],
)
def test_float64_within_a_few_ulp_of_numpy(ours, reference, x) -> None:
    assert rel_err(ours(x), reference(x)) < 5e-15


def test_power_and_float32_exp() -> None:
    assert rel_err(em.power(POS, 1.3), POS**1.3) < 1e-13
    assert em.power(np.array([0.0, 1.0, 4.0]), 0.5).tolist() == [0.0, 1.0, 2.0]
    x32 = X.astype(np.float32)
    out = em.exp(x32)
    assert out.dtype == np.float32
    assert rel_err(out.astype(np.float64), np.exp(x32.astype(np.float64))) < 1e-6


def test_special_values_and_kinds() -> None:
    assert em.exp(0.0) == 1.0 and em.log(1.0) == 0.0 and em.cos(0.0) == 1.0
    assert isinstance(em.exp(1.0), float) and isinstance(em.sin(np.float64(1.0)), float)
    assert em.log(np.array([0.0, -1.0]))[0] == -np.inf and np.isnan(em.log(np.array([-1.0]))[0])
    assert em.exp(np.array([-1000.0, 1000.0]))[0] < 1e-300  # clipped, not inf or nan
    assert abs(em.sin(np.pi / 2) - 1.0) < 1e-15 and abs(em.cos(np.pi)) - 1.0 < 1e-15


def test_normal_and_uniform_moments() -> None:
    rng = np.random.default_rng(1)
    z = em.normal(rng, 3.0, 2.0, 400_000)
    assert abs(z.mean() - 3.0) < 0.02 and abs(z.std() - 2.0) < 0.02
    # Gaussian tails: the share beyond 2 sd is 4.55 %
    assert abs(np.mean(np.abs(z - 3.0) > 4.0) - 0.0455) < 0.002
    u = em.uniform(rng, -1.0, 3.0, 100_000)
    assert u.min() >= -1.0 and u.max() < 3.0 and abs(u.mean() - 1.0) < 0.02
    assert isinstance(em.normal(rng), float) and isinstance(em.uniform(rng, 0, 1), float)


def test_interp_equals_numpy() -> None:
    xp, fp = np.array([0.0, 1.0, 3.0, 3.5]), np.array([2.0, -1.0, 4.0, 0.0])
    x = np.linspace(-1, 5, 601)
    np.testing.assert_allclose(em.interp(x, xp, fp), np.interp(x, xp, fp), rtol=0, atol=1e-14)


def test_resize_bilinear_matches_pillow_and_keeps_a_ramp() -> None:
    img = RNG.standard_normal((9, 7)).astype(np.float32)
    ours = em.resize(img, (40, 33), cubic=False)
    pillow = np.asarray(Image.fromarray(img, "F").resize((33, 40), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(ours, pillow, atol=1e-5)
    ramp = np.tile(np.arange(8, dtype=np.float64), (8, 1))
    up = em.resize(ramp, (8, 32))  # bicubic reproduces a linear ramp away from the edges
    centres = (np.arange(32) + 0.5) / 4 - 0.5
    np.testing.assert_allclose(up[:, 8:-8], np.tile(centres, (8, 1))[:, 8:-8], atol=1e-12)
