"""Class activation maps (CAM, Grad-CAM, Grad-CAM++) of a network's last feature maps.

A map is a float32 array (S, S) in [0, 1] in the frame of the preprocessed image (the frame of
``data/processed`` and of the boxes in its index files). Every network supported here ends in
global average pooling and one linear logit (``pneumo.model.split_network``), so the gradient of
the logit with respect to the last feature maps comes from the head alone: Grad-CAM needs no
backward pass through the backbone. Written out rather than taken from MONAI, whose CAM classes
hook arbitrary layers and run that backward pass: these few functions are all the head needs.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def raw_maps(
    acts: torch.Tensor, linear: nn.Linear, method: Method
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B,), unnormalised maps (B, h, w)) from last feature maps and a GAP + linear head.

    ``cam`` is the raw weighted sum (as the reference pipelines use it, no ReLU, so the weakest
    evidence maps to 0 even when it is positive); ``gradcam`` and ``gradcam++`` apply ReLU to
    their weighted sum.
    """
    check_method(method)
    acts = acts.detach().float()
    if method == "cam":
        with torch.no_grad():
            logits = linear(acts.mean(dim=(2, 3))).reshape(-1)
            raw = class_activation_maps(acts, linear.weight[0])
        return logits, raw
    with torch.enable_grad():
        leaf = acts.clone().requires_grad_(True)
        logits = linear(leaf.mean(dim=(2, 3))).reshape(-1)
        # each image's logit depends only on its own maps, so one grad of the sum gives all
        (grads,) = torch.autograd.grad(logits.sum(), leaf)
    weights = _gradcam_weights(acts, grads, plus_plus=method == "gradcam++")
    raw = torch.relu(torch.einsum("bchw,bc->bhw", acts, weights))
    return logits.detach(), raw.detach()


def _finish(raw: torch.Tensor, size: int | None) -> torch.Tensor:
    """Min-max normalise at grid resolution, then upsample bilinearly to ``size`` (in [0, 1])."""
    maps = normalize_maps(raw)
    if size is None:
        return maps
    maps = F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return maps[:, 0].clamp(0.0, 1.0)


def activation_maps(
    acts: torch.Tensor, linear: nn.Linear, method: Method, size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B,), maps (B, size, size) in [0, 1]) from last feature maps and a GAP + linear head.

    The maps of :func:`raw_maps`, min-max normalised at feature resolution and then upsampled
    bilinearly, which keeps them in [0, 1].
    """
    logits, raw = raw_maps(acts, linear, method)
    return logits, _finish(raw, size)


def stitch_offsets(size: int, grid: int, stitch: int) -> tuple[int, ...]:
    """The image moves (pixels, one axis) whose feature grids interleave into one ``stitch``
    times as fine, or a ``ValueError`` saying why ``stitch`` does not divide this network's grid.

    A network of stride ``s = size / grid`` puts feature cell ``i`` of an image moved by ``d``
    pixels at pixel ``s * i + (s - 1) / 2 - d`` of the original. Moves ``d_m = (s - t) / 2 - t m``
    for ``m = 0 .. stitch - 1``, with ``t = s / stitch``, put the cells of all moves on one grid of
    spacing ``t`` whose points sit where ``interpolate(align_corners=False)`` expects the cells
    of a ``stitch * grid`` map: shift-and-stitch (OverFeat, Sermanet et al. 2014; FCN, Long et
    al. 2015), a finer map from the same network rather than a blur of coarse ones.
    """
    if stitch == 1:
        return (0,)
    if size % grid:
        raise ValueError(f"a {size} px image gives a {grid} x {grid} grid: no whole stride")
    stride = size // grid
    if stride % stitch or (stride - stride // stitch) % 2:
        raise ValueError(
            f"cam.stitch {stitch} does not divide this network's stride of {stride} px into "
            "whole, centred moves; choose a divisor of the stride whose quotient has the "
            f"stride's parity (1, 2 or 4 for a stride of 16)"
        )
    step = stride // stitch
    return tuple((stride - step) // 2 - step * m for m in range(stitch))


SINGLE = "/single"  # stitched_maps(single=True): the key suffix of a method's one-pass maps


def stitched_maps(
    net: nn.Module,
    arch: str,
    x: torch.Tensor,
    methods: Sequence[Method],
    stitch: int = 1,
    single: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Probabilities (B,) float64 and, per method, maps (B, S, S) float32 in [0, 1].

    ``x`` is (B, 1, S, S) as ``pneumo.model.normalize`` makes it; the network is put in eval
    mode. With ``stitch`` = k > 1 the network runs on k x k moved copies of the image
    (circularly rolled; :func:`stitch_offsets`) and their raw maps interleave into one grid k
    times as fine, normalised and upsampled as one map. A final feature grid is coarse (6 x 6
    cells of 16 px at 96 px): two findings, one in each lung, share the central cells'
    receptive field, and the coarse map's peak lands between the lungs; the finer grid puts it
    on a finding. The probabilities are always those of the unmoved image. All methods come
    from the same forward passes; with ``single`` (and ``stitch`` > 1) each method's one-pass
    maps of the unmoved image come too, under ``method + SINGLE``, at no extra pass.
    """
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3]:
        raise ValueError(f"expected a batch (B, 1, S, S), got shape {tuple(x.shape)}")
    for method in methods:
        check_method(method)
    net.eval()
    features, linear = split_network(net, arch)
    x = x.to(next(net.parameters()).device)
    size = x.shape[-1]
    with torch.no_grad():
        acts = features(x)
    logits = linear(acts.mean(dim=(2, 3))).reshape(-1).detach()
    probs = torch.sigmoid(logits.double()).cpu().numpy()
    offsets = stitch_offsets(size, acts.shape[-1], stitch)
    grids: dict[str, torch.Tensor] = {}
    if single and stitch > 1:
        grids.update({m + SINGLE: raw_maps(acts, linear, m)[1] for m in methods})
    for m, dy in enumerate(offsets):
        for n, dx in enumerate(offsets):
            if stitch > 1:
                with torch.no_grad():
                    acts = features(torch.roll(x, (dy, dx), dims=(2, 3)))
            for method in methods:
                raw = raw_maps(acts, linear, method)[1]
                if method not in grids:
                    b, h, w = raw.shape
                    grids[method] = raw.new_zeros((b, h * stitch, w * stitch))
                grids[method][:, m::stitch, n::stitch] = raw
    maps = {k: _finish(g, size).cpu().numpy().astype(np.float32) for k, g in grids.items()}
    return probs, maps


def compute_maps(
    net: nn.Module, arch: str, x: torch.Tensor, method: Method, stitch: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (B,) float64 and maps (B, S, S) float32 in [0, 1] of one method
    (:func:`stitched_maps`)."""
    probs, maps = stitched_maps(net, arch, x, (method,), stitch)
    return probs, maps[method]
