"""An exported ONNX model on onnxruntime: prediction and heat maps without torch.

The file is the export stage's (``pneumo.onnx_export``): a graph from the standardised batch to
the logit and the last feature maps, with the preprocessing contract, the head's weights, the
temperature (``pneumo.calibration``) and the trained model's identity in its metadata. Every
probability it gives is the calibrated one, sigmoid(logit / temperature), as evaluate scored.
This module imports onnxruntime and NumPy only.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.cam.head import head_maps
from pneumo.ood import OodStats, pool
from pneumo.runtime import ONNXRUNTIME, Outputs, apply_temperature, normalize

FORMAT_VERSION = "1"  # of the metadata below (pneumo.onnx_export writes it)
INPUT, LOGIT, FEATURES = "image", "logit", "features"  # the graph's names
REQUIRED = ("arch", "image_size", "resize_mode", "mean", "std", "head_weight", "source_sha256")


def encode_floats(values: np.ndarray) -> str:
    """float32 values as base64 of their little-endian bytes (exact, unlike a decimal list)."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def decode_floats(text: str) -> np.ndarray:
    """The inverse of :func:`encode_floats`."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def ood_metadata(stats: OodStats) -> dict[str, str]:
    """The metadata entries that carry out-of-distribution statistics."""
    return {
        "ood_dim": str(stats.precision.shape[0]),
        "ood_means": encode_floats(stats.means.reshape(-1)),
        "ood_precision": encode_floats(stats.precision.reshape(-1)),
        "ood_threshold": repr(float(stats.threshold)),
        "ood_quantile": repr(float(stats.quantile)),
    }


def ood_from_metadata(meta: dict[str, str]) -> OodStats | None:
    """The statistics ``ood_metadata`` wrote, or None for a file exported without them."""
    if "ood_dim" not in meta:
        return None
    dim = int(meta["ood_dim"])
    return OodStats(
        means=decode_floats(meta["ood_means"]).reshape(2, dim),
        precision=decode_floats(meta["ood_precision"]).reshape(dim, dim),
        threshold=float(meta["ood_threshold"]),
        quantile=float(meta["ood_quantile"]),
    )


class OnnxModelError(ValueError):
    """The file is not an ONNX model this code exported, or lacks what prediction needs."""


def session_options(threads: int = 0) -> Any:
    """onnxruntime's options for prediction: all graph optimisations, and worker threads that
    sleep rather than spin while they wait, so they leave the cores to the image decoders."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads  # 0: one per physical core
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings are about the graph, not the input
    return options


@dataclass(frozen=True)
class OnnxModel:
    """A loaded ONNX model file; ``predict`` runs it (safe to call from several threads)."""

    session: Any  # onnxruntime.InferenceSession
    arch: str
    image_size: int
    resize_mode: str
    mean: float
    std: float
    sha256: str
    source_sha256: str
    provenance: dict[str, Any] | None
    head_weight: np.ndarray  # (C,) float32: the logit's weights over the feature maps
    quantization: str  # none | static | dynamic
    ood: OodStats | None  # the export stage's out-of-distribution statistics (pneumo.ood)
    temperature: float  # the logit's divisor (1.0: uncalibrated, a file from before it)
    runtime: str = ONNXRUNTIME

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits (B,), last feature maps (B, C, h, w)) of uint8 images (B, S, S)."""
        s = self.image_size
        if images.ndim != 3 or images.shape[1:] != (s, s):
            raise ValueError(f"expected uint8 images (B, {s}, {s}), got {images.shape}")
        logits, features = self.session.run(
            [LOGIT, FEATURES], {INPUT: normalize(images, self.mean, self.std)}
        )
        return logits, features

    def predict_all(self, images: np.ndarray, cam_method: str | None) -> Outputs:
        """Probabilities, maps (with ``cam_method``) and out-of-distribution scores."""
        logits, features = self.run(images)
        return Outputs(
            apply_temperature(logits, self.temperature),
            head_maps(features, self.head_weight, cam_method, self.image_size)
            if cam_method is not None
            else None,
            self.ood.score(pool(features)) if self.ood is not None else None,
        )

    def predict(
        self, images: np.ndarray, cam_method: str | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (B,) and, with ``cam_method``, maps (B, S, S) of uint8 images (B, S, S)."""
        out = self.predict_all(images, cam_method)
        return out.probs, out.maps

    def scan(self, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated probabilities (N,) float64, pooled last features (N, C)) of uint8 images
        (N, S, S), in batches (memmaps welcome): what the export stage checks and fits its
        statistics on."""
        probs, pooled = [], []
        for start in range(0, len(images), batch_size):
            logits, features = self.run(np.ascontiguousarray(images[start : start + batch_size]))
            probs.append(apply_temperature(logits, self.temperature))
            pooled.append(pool(features))
        return np.concatenate(probs), np.concatenate(pooled)


def load_onnx(path: str | Path, threads: int = 0) -> OnnxModel:
    """Load an exported ONNX model; ``OnnxModelError`` when its metadata is not ours."""
    import onnxruntime as ort

    path = Path(path)
    data = path.read_bytes()
    session = ort.InferenceSession(
        data, session_options(threads), providers=["CPUExecutionProvider"]
    )
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("pneumo.format") != FORMAT_VERSION:
        raise OnnxModelError(
            f"{path} is not an ONNX model exported by this pipeline (format "
            f"{meta.get('pneumo.format')!r}, expected {FORMAT_VERSION!r}): run `dvc repro export`"
        )
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise OnnxModelError(f"{path}: metadata lacks {', '.join(missing)}")
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [INPUT] or outputs != [LOGIT, FEATURES]:
        raise OnnxModelError(
            f"{path}: expected image -> logit, features; got {inputs} -> {outputs}"
        )
    return OnnxModel(
        session=session,
        arch=meta["arch"],
        image_size=int(meta["image_size"]),
        resize_mode=meta["resize_mode"],
        mean=float(meta["mean"]),
        std=float(meta["std"]),
        sha256=hashlib.sha256(data).hexdigest(),
        source_sha256=meta["source_sha256"],
        provenance=json.loads(meta.get("provenance", "null")),
        head_weight=decode_floats(meta["head_weight"]),
        quantization=meta.get("quantization", "none"),
        ood=ood_from_metadata(meta),
        temperature=float(meta.get("temperature", "1.0")),
    )
