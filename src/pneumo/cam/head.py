"""Class activation maps from the last feature maps and the linear head, in NumPy alone.

The torch-free twin of :func:`pneumo.cam.maps.activation_maps`, for prediction on onnxruntime:
the exported graph gives the last feature maps, and the head's weights travel in the model's
metadata. Every network here ends in global average pooling and one linear logit, so the
gradient of the logit with respect to a feature map is its channel's weight divided by the
number of cells, the same at every cell: Grad-CAM and Grad-CAM++ need no autograd either.
``tests/test_onnx.py`` holds the maps to the torch ones.
"""

from __future__ import annotations

import numpy as np

METHODS: tuple[str, ...] = ("cam", "gradcam", "gradcam++")


def check_method(method: str) -> None:
    """Raise ``ValueError`` naming the choices when ``method`` is not a CAM method."""
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Min-max normalise each map of (B, h, w) to [0, 1]; a constant map becomes zeros."""
    flat = maps.reshape(len(maps), -1)
    lo = flat.min(axis=1)[:, None, None]
    span = flat.max(axis=1)[:, None, None] - lo
    safe = np.where(span > 0, span, np.ones_like(span))
    return np.where(span > 0, (maps - lo) / safe, np.zeros_like(maps)).astype(np.float32)


def _channel_weights(acts: np.ndarray, weight: np.ndarray, method: str) -> np.ndarray:
    """(B, C): the logit's weights (CAM), Grad-CAM's mean gradient or Grad-CAM++'s closed form."""
    b, c, h, w = acts.shape
    grad = (weight / np.float32(h * w)).astype(np.float32)  # d logit / d acts, at every cell
    if method == "cam":
        return np.broadcast_to(weight, (b, c))
    if method == "gradcam":
        return np.broadcast_to(grad, (b, c))
    # Grad-CAM++ (exp(logit) as the class score; see pneumo.cam.maps): the gradient is constant
    # over the cells, so the sum over cells of alpha * relu(grad) is h * w times one cell's
    g2 = grad * grad
    denom = 2 * g2 + acts.sum(axis=(2, 3)) * (g2 * grad)
    alpha = np.where(grad != 0, g2 / np.where(denom != 0, denom, np.ones_like(denom)), 0)
    return (alpha * np.maximum(grad, 0) * np.float32(h * w)).astype(np.float32)


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32: bilinear resampling along one axis, as torch's ``interpolate``
    with ``align_corners=False`` computes it (source = (i + 0.5) * n_in / n_out - 0.5)."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    out = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(out, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(out, (np.arange(n_out), i1), frac)
    return out.astype(np.float32)


def head_maps(acts: np.ndarray, weight: np.ndarray, method: str, size: int) -> np.ndarray:
    """Maps (B, size, size) float32 in [0, 1] from feature maps (B, C, h, w) and the head's
    weights (C,); ``cam`` without ReLU, the Grad-CAMs with it, then min-max normalised at feature
    resolution and upsampled bilinearly (as :func:`pneumo.cam.maps.activation_maps`)."""
    check_method(method)
    acts = np.asarray(acts, dtype=np.float32)
    weight = np.asarray(weight, dtype=np.float32).reshape(-1)
    if acts.ndim != 4 or acts.shape[1] != len(weight):
        raise ValueError(f"feature maps {acts.shape} do not match {len(weight)} head weights")
    raw = np.einsum("bchw,bc->bhw", acts, _channel_weights(acts, weight, method))
    if method != "cam":
        raw = np.maximum(raw, 0)
    maps = normalize_maps(raw)
    rows = resize_matrix(maps.shape[1], size)
    cols = resize_matrix(maps.shape[2], size)
    return np.clip(np.einsum("ih,bhw,jw->bij", rows, maps, cols), 0.0, 1.0).astype(np.float32)
