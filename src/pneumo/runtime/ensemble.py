"""Several models as one ``InferenceModel``: the cross-validation folds' ensemble.

Its probability is the mean of the members' calibrated probabilities (each member carries its
own temperature), as the cv_aggregate stage scores the ensemble; beside it, ``Outputs.sd`` is
the members' standard deviation (ddof 0), the per-prediction uncertainty that only an ensemble
can give. A single model reports none. Heat maps are the mean of the members' maps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumo.runtime import InferenceModel, Outputs

CONTRACT = ("arch", "image_size", "resize_mode", "mean", "std")  # equal in every member


@dataclass(frozen=True)
class EnsembleModel:
    """Members that read the same input; ``predict_all`` runs each and combines them."""

    members: tuple[InferenceModel, ...]

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(self.members)}")
        first = self.members[0]
        for key in CONTRACT:
            values = {getattr(m, key) for m in self.members}
            if len(values) != 1:
                raise ValueError(f"the ensemble's members differ in {key}: {sorted(values)}")
        if len({m.runtime for m in self.members}) != 1 or first.ood is not None:
            raise ValueError("an ensemble's members share one runtime and carry no OOD statistics")

    arch = property(lambda self: self.members[0].arch)
    image_size = property(lambda self: self.members[0].image_size)
    resize_mode = property(lambda self: self.members[0].resize_mode)
    mean = property(lambda self: self.members[0].mean)
    std = property(lambda self: self.members[0].std)
    runtime = property(lambda self: self.members[0].runtime)
    provenance = property(lambda self: self.members[0].provenance)
    ood: Any = None  # each member's statistics would be its own: none for the mean

    @property
    def sha256(self) -> str:
        """Of the members' sha256s in order: names this ensemble and no other."""
        return hashlib.sha256(" ".join(m.sha256 for m in self.members).encode()).hexdigest()

    source_sha256 = sha256  # the members are trained files themselves

    def predict_all(self, images: np.ndarray, cam_method: str | None) -> Outputs:
        """The members' mean probability, their sd, and the mean of their maps."""
        outs = [m.predict_all(images, cam_method) for m in self.members]
        probs = np.stack([o.probs for o in outs])
        maps = None if cam_method is None else np.mean([o.maps for o in outs], axis=0)
        return Outputs(probs.mean(axis=0), maps, None, sd=probs.std(axis=0))

    def predict(
        self, images: np.ndarray, cam_method: str | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The mean probability (B,) and, with ``cam_method``, the mean maps (B, S, S)."""
        out = self.predict_all(images, cam_method)
        return out.probs, out.maps
