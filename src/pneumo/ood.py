"""An out-of-distribution score for every input: the Mahalanobis distance of its pooled features.

The score is the distance of an image's globally pooled last feature maps (the vector the logit
is a linear function of) to the nearer of two Gaussians fitted on the training split, one per
class, with one shared covariance (Lee et al., "A simple unified framework for detecting
out-of-distribution samples and adversarial attacks", NeurIPS 2018). Chosen over an energy or
max-logit score because a single logit says how far an image is along one direction only: an MR
slice or a photograph can sit anywhere along it, while the 512 pooled features place it against
everything the training films looked like. And over torchxrayvision's autoencoder because it
needs nothing trained beyond the classifier: the statistics are two means and a covariance.

The threshold is a high quantile of the validation split's scores, so that fraction of in-
distribution films passes. The export stage computes both (``fit``) and stores them in the ONNX
file's metadata; this module imports NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ridge added to the shared covariance, relative to its mean variance: 512 features from a few
# thousand films give a covariance with near-zero directions that would dominate the distance
RIDGE = 1e-3


@dataclass(frozen=True)
class OodStats:
    """Class means (2, C), the shared covariance's inverse (C, C) and the flagging threshold."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float  # of the validation scores that gave the threshold

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """(N,) float64 Mahalanobis distance of pooled features (N, C) to the nearer class."""
        x = np.asarray(pooled, dtype=np.float64)
        precision = self.precision.astype(np.float64)
        best = None
        for mean in self.means.astype(np.float64):
            d = x - mean
            sq = np.einsum("nc,cd,nd->n", d, precision, d)
            best = sq if best is None else np.minimum(best, sq)
        return np.sqrt(np.maximum(best, 0.0))

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """True where a score lies above the threshold: out of distribution."""
        return np.asarray(scores) > self.threshold


def pool(features: np.ndarray) -> np.ndarray:
    """Last feature maps (N, C, h, w) -> (N, C), the global average the head reads."""
    return np.asarray(features, dtype=np.float32).mean(axis=(2, 3))


def fit(
    train_pooled: np.ndarray, train_targets: np.ndarray, val_pooled: np.ndarray, quantile: float
) -> OodStats:
    """The statistics of the training split's pooled features, thresholded on validation."""
    x = np.asarray(train_pooled, dtype=np.float64)
    y = np.asarray(train_targets).astype(int)
    if set(np.unique(y)) != {0, 1}:
        raise ValueError("the training split needs both classes to fit the class Gaussians")
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    means = np.stack([x[y == c].mean(axis=0) for c in (0, 1)])
    centred = x - means[y]
    cov = centred.T @ centred / len(x)
    cov += RIDGE * np.trace(cov) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(cov)
    precision = (precision + precision.T) / 2  # exactly symmetric after the inverse
    stats = OodStats(means.astype(np.float32), precision.astype(np.float32), 0.0, quantile)
    threshold = float(np.quantile(stats.score(val_pooled), quantile))
    return OodStats(stats.means, stats.precision, threshold, quantile)
