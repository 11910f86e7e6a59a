"""The trained ``model.pt`` on torch, as an ``InferenceModel``: the fallback runtime, and the
reference the ONNX export is held to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumo.cam.maps import compute_maps
from pneumo.model import Exported, load_exported, normalize, predict_proba
from pneumo.runtime import TORCH, Outputs


@dataclass(frozen=True)
class TorchModel:
    """A loaded ``model.pt``; ``predict`` is the infer stage's forward pass (and the cam stage's
    maps when asked for)."""

    exported: Exported
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
        """Without a map, exactly ``predict_proba``; with one, the probabilities come from the
        forward pass that gives the maps (features, pooling, head), equal to float rounding."""
        m = self.exported
        if cam_method is None:
            return predict_proba(m.net, images, m.mean, m.std, len(images)), None
        return compute_maps(m.net, m.arch, normalize(images, m.mean, m.std), cam_method)

    def predict_all(self, images: np.ndarray, cam_method: str | None) -> Outputs:
        """``predict``'s outputs; no out-of-distribution score: its statistics are the ONNX
        export's (``pneumo.exporting``), not model.pt's."""
        return Outputs(*self.predict(images, cam_method), None)


def load_torch(path: str | Path) -> TorchModel:
    """Load ``model.pt`` (see :func:`pneumo.model.load_exported`)."""
    return TorchModel(load_exported(path))
