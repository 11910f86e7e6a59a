"""Temperature scaling (pneumo.calibration) against known answers: a temperature put into
perfectly calibrated logits comes back out, and the fitted one is the NLL's minimum."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import log_loss

from pneumo.calibration import fit_temperature, nll
from pneumo.eval_checks import EvaluationError
from pneumo.runtime import apply_temperature


def _calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn with P(y = 1) = sigmoid(z): perfectly calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.5, n)
    return (rng.random(n) < expit(z)).astype(int), z


@pytest.mark.parametrize("t0", [0.5, 1.0, 2.0, 4.0])
def test_a_known_temperature_is_recovered(t0):
    y, z = _calibrated(40_000, seed=int(t0 * 10))
    # the network reports z * t0 ... and needs T = t0 to give back the calibrated z
    assert fit_temperature(y, z * t0) == pytest.approx(t0, rel=0.03)


def test_the_fit_is_the_nll_minimum_on_a_grid():
    y, z = _calibrated(3_000, seed=7)
    z = 1.7 * z + 0.3  # over-confident and shifted: the minimum is not a round number
    t = fit_temperature(y, z)
    grid = np.exp(np.linspace(np.log(0.2), np.log(10), 4001))
    losses = np.array([nll(y, z, g) for g in grid])
    assert t == pytest.approx(grid[np.argmin(losses)], rel=2e-3)
    assert nll(y, z, t) <= losses.min() + 1e-12
    # nll is scikit-learn's log loss of the calibrated probabilities
    assert nll(y, z, t) == pytest.approx(log_loss(y, apply_temperature(z, t)), rel=1e-9)


def test_deterministic_and_order_preserving():
    y, z = _calibrated(2_000, seed=3)
    assert fit_temperature(y, 3 * z) == fit_temperature(y, 3 * z)
    p = apply_temperature(3 * z, fit_temperature(y, 3 * z))
    assert np.array_equal(np.argsort(p, kind="stable"), np.argsort(z, kind="stable"))


def test_apply_temperature_does_not_overflow():
    p = apply_temperature(np.array([-1e4, 0.0, 1e4]), 0.5)
    assert p.tolist() == [0.0, 0.5, 1.0]


def test_a_separable_split_stays_in_bounds_and_bad_input_is_refused():
    y = np.array([0, 0, 1, 1])
    t = fit_temperature(y, np.array([-3.0, -1.0, 1.0, 3.0]))
    assert t == pytest.approx(1 / 20, rel=1e-3)  # the NLL falls towards T -> 0: the bound
    with pytest.raises(EvaluationError, match="both classes"):
        fit_temperature(np.zeros(4, int), np.arange(4.0))
    with pytest.raises(EvaluationError, match="finite"):
        fit_temperature(y, np.array([0.0, np.inf, 1.0, 2.0]))
