"""The model as prediction runs it: on onnxruntime (the default, no torch) or on torch.

Both runtimes give an ``InferenceModel`` (and so does an ensemble of them,
``pneumo.runtime.ensemble``): the preprocessing contract the model was trained with
(size, resize mode, mean, std), who it is (the loaded file's sha256 and that of the trained
``model.pt`` it came from, its provenance) and one call, ``predict``, from uint8 images to
probabilities and, when asked, class activation maps. ``pneumo.deployment`` loads one;
``pneumo.file_inference`` runs it. This module imports neither runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# Before onnxruntime is imported (only ever after this package): its Linux wheel carries a 1DS
# telemetry client, which writes a session file (.ses) into TMPDIR at import; the service's
# tests found it beside the uploads. A radiology tool keeps telemetry off; set it to 0 to opt in.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

ONNXRUNTIME, TORCH = "onnxruntime", "torch"
RUNTIMES: tuple[str, ...] = (ONNXRUNTIME, TORCH)


@dataclass(frozen=True)
class Outputs:
    """What one forward pass over a batch gives."""

    probs: np.ndarray  # (B,) float64
    maps: np.ndarray | None  # (B, S, S) float32 in [0, 1], when a CAM method was asked for
    ood: np.ndarray | None  # (B,) out-of-distribution scores, when the model carries statistics
    sd: np.ndarray | None = None  # (B,) the members' sd of an ensemble; None for one model


class InferenceModel(Protocol):
    """A loaded model of either runtime (``OnnxModel`` or ``TorchModel``)."""

    runtime: str
    arch: str
    image_size: int
    resize_mode: str  # how preprocess brought images to a square: pad | crop | stretch
    mean: float
    std: float
    sha256: str  # of the file loaded
    source_sha256: str  # of the trained model.pt (equal to sha256 for model.pt itself)
    provenance: dict[str, Any] | None
    ood: Any  # pneumo.ood.OodStats, or None: no out-of-distribution score

    def predict(
        self, images: np.ndarray, cam_method: str | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (B,) float64 for uint8 images (B, S, S), and maps (B, S, S) float32 in
        [0, 1] when ``cam_method`` names a CAM method (None: no maps)."""
        ...

    def predict_all(self, images: np.ndarray, cam_method: str | None) -> Outputs:
        """``predict``'s outputs and the out-of-distribution scores, from one forward pass."""
        ...


def normalize(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 images (B, S, S) -> float32 (B, 1, S, S) standardised with the train stats; the same
    float32 operations as :func:`pneumo.model.normalize`, so the same values bit for bit."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    x = images.astype(np.float32) / np.float32(255.0)
    return ((x - np.float32(mean)) / np.float32(std))[:, None]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float64 probabilities of logits, without overflow at either end."""
    z = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """float64 probabilities sigmoid(logits / temperature): the calibrated probability, computed
    by this one formula in evaluate, export and both runtimes (``pneumo.calibration`` fits T)."""
    return sigmoid(np.asarray(logits, dtype=np.float64) / temperature)
