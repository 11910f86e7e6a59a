"""Class activation maps (CAM, Grad-CAM, Grad-CAM++) of a network's last feature maps.

A map is a float32 array (S, S) in [0, 1] in the frame of the preprocessed image (the frame of
``data/processed`` and of the boxes in its index files). Every network supported here ends in
global average pooling and one linear logit (``pneumo.model.split_network``), so the gradient of
the logit with respect to the last feature maps comes from the head alone: Grad-CAM needs no
backward pass through the backbone. Written out rather than taken from MONAI, whose CAM classes
hook arbitrary layers and run that backward pass: these few functions are all the head needs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pneumo.cam.head import METHODS as METHODS  # re-exported: the methods are defined there
from pneumo.cam.head import check_method
from pneumo.model import split_network

Method = Literal["cam", "gradcam", "gradcam++"]


def class_activation_maps(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Raw CAM: feature maps (B, C, h, w) weighted by the logit's weights (C,), summed over C."""
    return torch.einsum("bchw,c->bhw", features, weights.reshape(-1).to(features.dtype))


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of (B, h, w) to [0, 1]; a constant map becomes zeros."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - lo
    # where() rather than a division guarded by eps: a constant map must be exactly 0, not NaN
    return torch.where(span > 0, (maps - lo) / span.clamp_min(1e-30), torch.zeros_like(maps))


def _gradcam_weights(acts: torch.Tensor, grads: torch.Tensor, plus_plus: bool) -> torch.Tensor:
    """Channel weights (B, C) of Grad-CAM (mean gradient) or Grad-CAM++ (closed form)."""
    if not plus_plus:
        return grads.mean(dim=(2, 3))
    # Grad-CAM++ with the class score taken as exp(logit): its higher derivatives become powers of
    # the logit's first derivative (exp cancels), the usual closed form of Chattopadhyay et al.
    g2 = grads.pow(2)
    g3 = g2 * grads
    total = acts.sum(dim=(2, 3), keepdim=True)
    denom = 2 * g2 + total * g3
    alpha = torch.where(grads != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0)
    return (alpha * torch.relu(grads)).sum(dim=(2, 3))


def activation_maps(
    acts: torch.Tensor, linear: nn.Linear, method: Method, size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B,), maps (B, size, size) in [0, 1]) from last feature maps and a GAP + linear head.

    ``cam`` min-max normalises the raw weighted sum (as the reference pipelines do, no ReLU, so
    the weakest evidence maps to 0 even when it is positive); ``gradcam`` and ``gradcam++`` apply
    ReLU to the weighted sum first, then the same normalisation. Maps are normalised at feature
    resolution and then upsampled bilinearly, which keeps them in [0, 1].
    """
    check_method(method)
    acts = acts.detach().float()
    if method == "cam":
        with torch.no_grad():
            logits = linear(acts.mean(dim=(2, 3))).reshape(-1)
            raw = class_activation_maps(acts, linear.weight[0])
    else:
        with torch.enable_grad():
            leaf = acts.clone().requires_grad_(True)
            logits = linear(leaf.mean(dim=(2, 3))).reshape(-1)
            # each image's logit depends only on its own maps, so one grad of the sum gives all
            (grads,) = torch.autograd.grad(logits.sum(), leaf)
        weights = _gradcam_weights(acts, grads, plus_plus=method == "gradcam++")
        raw = torch.relu(torch.einsum("bchw,bc->bhw", acts, weights))
    maps = normalize_maps(raw.detach())
    if size is not None:
        maps = F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)
        maps = maps[:, 0].clamp(0.0, 1.0)
    return logits.detach(), maps


def compute_maps(
    net: nn.Module, arch: str, x: torch.Tensor, method: Method, shift: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (B,) float64 and maps (B, S, S) float32 in [0, 1] for a normalised batch.

    ``x`` is (B, 1, S, S) as ``pneumo.model.normalize`` makes it; the network is put in eval mode.
    With ``shift`` > 0 the map is shift-averaged: the mean of the maps of the image moved by
    each of (-shift, 0, shift) pixels down and across (circularly), each moved back, then
    normalised again. A final feature grid is coarse (6 x 6 cells of 16 px at 96 px) and where
    a finding falls against the cells decides how much of it the upsampled map covers; the
    average over sub-cell shifts removes that accident (test-time augmentation). The
    probabilities are always those of the unshifted image.
    """
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3]:
        raise ValueError(f"expected a batch (B, 1, S, S), got shape {tuple(x.shape)}")
    net.eval()
    features, linear = split_network(net, arch)
    device = next(net.parameters()).device
    x = x.to(device)
    offsets = (-shift, 0, shift) if shift > 0 else (0,)
    total, probs = None, None
    for dy in offsets:
        for dx in offsets:
            with torch.no_grad():
                acts = features(torch.roll(x, (dy, dx), dims=(2, 3)))
            logits, maps = activation_maps(acts, linear, method, size=x.shape[-1])
            maps = torch.roll(maps, (-dy, -dx), dims=(1, 2))
            total = maps if total is None else total + maps
            if dy == dx == 0:
                probs = torch.sigmoid(logits.double()).cpu().numpy()
    if len(offsets) > 1:
        total = normalize_maps(total)
    return probs, total.cpu().numpy().astype(np.float32)
