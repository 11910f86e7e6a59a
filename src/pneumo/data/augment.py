"""Augmentation: pure functions on whole batches of tensors, randomness only from the generator
passed in."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_affine(
    batch: int,
    generator: torch.Generator,
    *,
    rotation_deg: float,
    translate: float,
    scale: float,
    hflip: bool,
) -> torch.Tensor:
    """Per-sample affine matrices ``(B, 2, 3)`` for ``F.affine_grid`` (output -> input coords).

    Rotation uniform in +-rotation_deg, shift uniform in +-translate of the image size, zoom
    uniform in [1 - scale, 1 + scale], and with ``hflip`` a mirror with probability 1/2.
    """
    u = torch.rand(batch, 5, generator=generator, dtype=torch.float64) * 2 - 1  # U(-1, 1)
    angle = torch.deg2rad(u[:, 0] * rotation_deg)
    zoom = 1 + u[:, 1] * scale
    flip = torch.where((u[:, 4] > 0) & hflip, -1.0, 1.0).to(torch.float64)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    # affine_grid's coordinates span [-1, 1], so a shift of t image widths is 2t
    theta[:, 0, 2], theta[:, 1, 2] = 2 * translate * u[:, 2], 2 * translate * u[:, 3]
    return theta.float()


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    rotation_deg: float,
    translate: float,
    scale: float,
    brightness: float,
    contrast: float,
    hflip: bool,
) -> torch.Tensor:
    """Random affine + brightness/contrast on float images ``(B, 1, S, S)`` in [0, 1].

    All random numbers come from ``generator`` (CPU), drawn in the same amount whatever the
    magnitudes, so a seed fixes the result; zero magnitudes return the input unchanged.
    Areas moved in from outside the image are black, like preprocess's padding.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images (B, 1, S, S), got {tuple(x.shape)}")
    b = x.shape[0]
    theta = random_affine(
        b, generator, rotation_deg=rotation_deg, translate=translate, scale=scale, hflip=hflip
    )
    u = torch.rand(b, 2, generator=generator) * 2 - 1
    if rotation_deg or translate or scale or hflip:
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if brightness or contrast:
        c = (1 + contrast * u[:, 0]).view(b, 1, 1, 1).to(x.device)
        shift = (brightness * u[:, 1]).view(b, 1, 1, 1).to(x.device)
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - m) * c + m + shift).clamp(0.0, 1.0)
    return x
