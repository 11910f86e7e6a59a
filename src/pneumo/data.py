"""Memory-mapped training data, batch augmentation on tensors, and the LightningDataModule."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

STATS_KEYS = ("mean", "std", "image_size", "resize_mode")


class DataError(ValueError):
    """The processed data directory does not follow its contract."""


# ----------------------------------------------------------------------------------------------
# Reading the processed directory


def read_stats(data_dir: str | Path) -> dict[str, Any]:
    """``stats.json`` of a processed directory, checked for the keys training needs."""
    path = Path(data_dir) / "stats.json"
    if not path.is_file():
        raise DataError(f"{path} not found (run `dvc repro preprocess`)")
    with path.open() as f:
        stats = json.load(f)
    missing = [k for k in STATS_KEYS if k not in stats]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
    if not float(stats["std"]) > 0:
        raise DataError(f"{path}: std must be > 0, got {stats['std']!r}")
    return stats


def read_targets(data_dir: str | Path, split: str) -> np.ndarray:
    """The 0/1 ``target`` column of ``<split>.csv`` as int64, validated."""
    path = Path(data_dir) / f"{split}.csv"
    if not path.is_file():
        raise DataError(f"{path} not found (run `dvc repro preprocess`)")
    index = pd.read_csv(path, usecols=lambda c: c == "target")
    if "target" not in index.columns:
        raise DataError(f"{path}: no column 'target'")
    bad = ~index["target"].isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = index["target"].iloc[row]
        raise DataError(f"{path}: row {row + 2}: target must be 0 or 1, got {value}")
    return index["target"].to_numpy(dtype=np.int64)


class MemmapImages(Dataset):
    """uint8 images ``(N, S, S)`` of one split, read from a memory-mapped ``.npy``, with targets."""

    def __init__(self, images_path: str | Path, targets: np.ndarray):
        self.path = Path(images_path)
        if not self.path.is_file():
            raise DataError(f"{self.path} not found (run `dvc repro preprocess`)")
        arr = np.load(self.path, mmap_mode="r")
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
            raise DataError(f"{self.path}: expected uint8 (N, S, S), got {arr.dtype} {arr.shape}")
        if len(arr) != len(targets):
            raise DataError(f"{self.path}: {len(arr)} images but {len(targets)} rows in its index")
        self.shape = tuple(arr.shape)
        self.targets = np.asarray(targets, dtype=np.float32)
        del arr  # opened again lazily, in the process that reads (see _images)
        self._arr: np.ndarray | None = None
        self._pid: int | None = None

    def _images(self) -> np.ndarray:
        # One memmap per process, opened on first use. A pickled np.memmap (how spawn/forkserver
        # workers receive the dataset) is serialised as a full in-memory copy of the array, and a
        # mapping inherited through fork is tied to the parent's file handle; reopening by pid
        # keeps every worker reading the file itself through the shared page cache.
        if self._arr is None or self._pid != os.getpid():
            self._arr = np.load(self.path, mmap_mode="r")
            self._pid = os.getpid()
        return self._arr

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arr"] = None
        state["_pid"] = None
        return state

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.array(self._images()[i]))
        return image, torch.tensor(self.targets[i])


# ----------------------------------------------------------------------------------------------
# Sampling


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


# ----------------------------------------------------------------------------------------------
# Augmentation: pure functions on whole batches, randomness only from the generator passed in


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


# ----------------------------------------------------------------------------------------------
# The DataModule


class XrayDataModule(L.LightningDataModule):
    """Train / val / test loaders over ``data/processed``; normalisation and train augmentation
    run on whole batches after the transfer to the device (``on_after_batch_transfer``).

    The keywords are the ``train.*`` keys of these names (``kwargs_for``); ``augment`` is the
    ``train.augment`` mapping, or empty for none.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        batch_size: int,
        num_workers: int,
        balanced_sampling: bool,
        seed: int,
        augment: Mapping[str, Any],
    ):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.balanced_sampling = balanced_sampling
        self.seed = seed
        self.augment = dict(augment)
        self.stats = read_stats(self.data_dir)
        self.mean = float(self.stats["mean"])
        self.std = float(self.stats["std"])
        self.datasets: dict[str, MemmapImages] = {}
        self._generator: torch.Generator | None = None

    def train_targets(self) -> np.ndarray:
        """Targets of the training split (for ``pos_weight: auto``)."""
        return read_targets(self.data_dir, "train")

    def dataset(self, split: str) -> MemmapImages:
        """The memmap dataset of ``split``, created on first use."""
        if split not in self.datasets:
            targets = read_targets(self.data_dir, split)
            self.datasets[split] = MemmapImages(self.data_dir / f"{split}.npy", targets)
        return self.datasets[split]

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def setup(self, stage: str) -> None:
        """Open the splits a stage needs; seed this rank's augmentation stream."""
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for split in splits.get(stage, ()):
            self.dataset(split)
        rank, _ = self._rank_world()
        # distinct, reproducible streams per rank, independent of the sampler's seed + epoch
        state = np.random.SeedSequence(self.seed, spawn_key=(rank,)).generate_state(1)[0]
        self._generator = torch.Generator().manual_seed(int(state))

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.dataset(split)
        rank, world = self._rank_world()
        weights = balanced_weights(ds.targets) if train and self.balanced_sampling else None
        sampler = EpochSampler(
            len(ds), seed=self.seed, rank=rank, world=world, shuffle=train, weights=weights
        )
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # a last batch of 1-2 images gives a noisy step and can break BatchNorm
            drop_last=train and len(sampler) > self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def transform_batch(
        self, images: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """uint8 ``(B, S, S)`` -> normalised float ``(B, 1, S, S)``, augmented when ``train``."""
        x = images.unsqueeze(1).float() / 255.0
        if train and self.augment:
            gen = generator or self._generator or torch.Generator().manual_seed(self.seed)
            x = augment_batch(x, gen, **self.augment)
        return (x - self.mean) / self.std

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, targets = batch
        train = self.trainer is not None and self.trainer.training
        return self.transform_batch(images, train), targets
