"""Losses: BCE's ``pos_weight`` from the ``train.pos_weight`` setting, and the binary focal loss."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F


def pos_weight_from_targets(targets: np.ndarray) -> float:
    """``pos_weight: auto``: negatives / positives in the training targets."""
    targets = np.asarray(targets)
    pos = int((targets == 1).sum())
    neg = int((targets == 0).sum())
    if pos == 0 or neg == 0:
        raise ValueError(
            f"pos_weight auto needs both classes in train, got {neg} negatives and {pos} positives"
        )
    return neg / pos


def resolve_pos_weight(
    setting: float | Literal["auto"], targets: np.ndarray, balanced_sampling: bool
) -> float:
    """The number for BCE's ``pos_weight`` from the ``train.pos_weight`` setting.

    With class-balanced sampling the batches are already 1:1, so ``auto`` is 1 (weighting the
    positives again would push the model to over-call pneumonia).
    """
    if setting == "auto":
        return 1.0 if balanced_sampling else pos_weight_from_targets(targets)
    return float(setting)


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float, pos_weight: float
) -> torch.Tensor:
    """Mean binary focal loss: BCE (positives weighted by ``pos_weight``) times ``(1 - p_t)^gamma``.

    ``gamma = 0`` is exactly BCE with logits and the same ``pos_weight``.
    """
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = torch.exp(-bce)  # the probability given to the true class
    weight = 1 + (pos_weight - 1) * targets
    return (weight * (1 - p_t).pow(gamma) * bce).mean()
