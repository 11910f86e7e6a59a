"""The trained ``model.pt`` on torch, as an ``InferenceModel``: the fallback runtime, and the
reference the ONNX export is held to.

model.pt is written before the temperature is fitted, so it does not carry one: the loader is
given it (``pneumo.deployment`` takes it from the operating point evaluate fitted for this
file); 1.0 means uncalibrated, the train stage's own probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumo.cam.maps import compute_maps
from pneumo.model import Exported, load_exported, normalize, predict_logits, predict_proba
from pneumo.runtime import TORCH, Outputs, apply_temperature


@dataclass(frozen=True)
class TorchModel:
    """A loaded ``model.pt``; ``predict`` is the infer stage's forward pass (and the cam stage's
    maps when asked for)."""

    exported: Exported
    temperature: float = 1.0  # the logit's divisor; 1.0: uncalibrated
    runtime: str = TORCH

    # the contract and identity are the file's
    arch = property(lambda self: self.exported.arch)
    image_size = property(lambda self: self.exported.image_size)
    resize_mode = property(lambda self: self.exported.resize_mode)
    mean = property(lambda self: self.exported.mean)
    std = property(lambda self: self.exported.std)
    sha256 = property(lambda self: self.exported.sha256)
    source_sha256 = property(lambda self: self.exported.sha256)  # it is the trained file
    provenance = property(lambda self: self.exported.provenance)
    ood = None  # the statistics are the ONNX export's (pneumo.exporting)

    def predict(
        self, images: np.ndarray, cam_method: str | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Without a map, exactly ``predict_proba`` (uncalibrated) or evaluate's calibrated
        probability; with one, the probabilities come from the forward pass that gives the maps
        (features, pooling, head), equal to float rounding."""
        m = self.exported
        if cam_method is None:
            if self.temperature == 1.0:
                return predict_proba(m.net, images, m.mean, m.std, len(images)), None
            logits = predict_logits(m.net, images, m.mean, m.std, len(images))
            return apply_temperature(logits, self.temperature), None
        probs, maps = compute_maps(m.net, m.arch, normalize(images, m.mean, m.std), cam_method)
        if self.temperature != 1.0:  # the maps' pass gives probabilities: back to its logits
            with np.errstate(divide="ignore"):  # a saturated 0 or 1 stays 0 or 1
                logits = np.log(probs) - np.log1p(-probs)
            probs = apply_temperature(logits, self.temperature)
        return probs, maps

    def predict_all(self, images: np.ndarray, cam_method: str | None) -> Outputs:
        """``predict``'s outputs; no out-of-distribution score: its statistics are the ONNX
        export's (``pneumo.exporting``), not model.pt's."""
        return Outputs(*self.predict(images, cam_method), None)


def load_torch(path: str | Path, temperature: float = 1.0) -> TorchModel:
    """Load ``model.pt`` (see :func:`pneumo.model.load_exported`), calibrated by ``temperature``."""
    return TorchModel(load_exported(path), temperature)
