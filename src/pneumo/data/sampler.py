"""The epoch sampler: seeded, sharded by rank without padding at evaluation, optionally
class-balanced."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from pneumo.data.dataset import DataError


class EpochSampler(Sampler[int]):
    """Indices of one process's share of an epoch: seeded by (seed, epoch), the same on every rank.

    ``shuffle=False`` (evaluation): rank r reads samples r, r + world, ... with no padding, so a
    metric synchronised across ranks sees every sample exactly once (torch's DistributedSampler
    would repeat samples to even out the ranks). ``shuffle=True`` (training): a permutation, or
    with ``weights`` a draw of N samples with replacement, padded to a multiple of ``world`` so
    every rank runs the same number of steps (DDP's gradient all-reduce needs that).
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
        weights: np.ndarray | None = None,
    ):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} out of range for world size {world}")
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world, seed, shuffle
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start: a new order per epoch, reproducible."""
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        total = math.ceil(self.n / self.world) * self.world
        return torch.cat([order, order[: total - self.n]])

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        if self.shuffle:
            return math.ceil(self.n / self.world)
        return len(range(self.rank, self.n, self.world))


def balanced_weights(targets: np.ndarray) -> np.ndarray:
    """Per-sample weights 1 / (count of its class): both classes drawn equally often."""
    targets = np.asarray(targets).astype(np.int64)
    counts = np.bincount(targets, minlength=2).astype(np.float64)
    if (counts == 0).any():
        raise DataError(f"balanced sampling needs both classes in train, got {counts.tolist()}")
    return 1.0 / counts[targets]
