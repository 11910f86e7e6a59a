"""The LightningDataModule: loaders over data/processed, normalisation and train augmentation
on whole batches after the transfer to the device."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from pneumo.data.augment import augment_batch
from pneumo.data.dataset import MemmapBatches, MemmapImages, read_stats, read_targets
from pneumo.data.sampler import EpochSampler, balanced_weights

# loader processes per GPU process with num_workers: auto; a batch is one memmap gather (about
# 13 MB at 224 px, batch 256), so a few workers keep it off the step's critical path
MAX_AUTO_WORKERS = 4


def loader_workers(
    num_workers: int | Literal["auto"], device_type: str, cpus: int, local_processes: int
) -> int:
    """Loader processes for one training process: ``num_workers`` as given, or for ``auto``
    none off CUDA (the step is CPU-bound and workers would only take its cores) and on CUDA
    the cores left per GPU process, at most ``MAX_AUTO_WORKERS``, at least one."""
    if num_workers != "auto":
        return int(num_workers)
    if device_type != "cuda":
        return 0
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, local_processes) - 1))


def _stacked(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``collate_fn`` for ``MemmapBatches``, whose batches come out stacked."""
    return batch


def batch_loader(
    dataset: MemmapImages,
    sampler: Sampler[int],
    *,
    batch_size: int,
    drop_last: bool,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    """A DataLoader that reads each batch of ``sampler``'s indices with one memmap gather.

    The same batches as ``DataLoader(dataset, batch_size, sampler=sampler)``, without B
    ``__getitem__`` copies and a collation per batch. Lightning still finds the sampler (as
    ``batch_sampler.sampler``) to call its ``set_epoch``.
    """
    return DataLoader(
        MemmapBatches(dataset),
        batch_sampler=BatchSampler(sampler, batch_size, drop_last),
        collate_fn=_stacked,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )


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
        num_workers: int | Literal["auto"],
        balanced_sampling: bool,
        seed: int,
        augment: Mapping[str, Any],
        permute_labels: bool = False,
    ):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.balanced_sampling = balanced_sampling
        self.seed = seed
        self.augment = dict(augment)
        self.permute_labels = permute_labels
        self.stats = read_stats(self.data_dir)
        self.mean = float(self.stats["mean"])
        self.std = float(self.stats["std"])
        self.datasets: dict[str, MemmapImages] = {}
        self._generator: torch.Generator | None = None

    def train_targets(self) -> np.ndarray:
        """Targets of the training split as training sees them (for ``pos_weight: auto``)."""
        targets = read_targets(self.data_dir, "train")
        if not self.permute_labels:
            return targets
        # the data-randomisation test (Adebayo et al. 2018): the same images and label counts,
        # the labels shuffled among them, so nothing image-specific is left to learn; seeded by
        # train.seed alone, so every rank of a distributed run shuffles alike
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(0x1AB,)))
        return rng.permutation(targets)

    def dataset(self, split: str) -> MemmapImages:
        """The memmap dataset of ``split``, created on first use (train with ``permute_labels``:
        its labels shuffled, val and test untouched)."""
        if split not in self.datasets:
            targets = (
                self.train_targets() if split == "train" else read_targets(self.data_dir, split)
            )
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

    def _device_type(self) -> str:
        strategy = getattr(self.trainer, "strategy", None)
        return strategy.root_device.type if strategy is not None else "cpu"

    def loader_options(self) -> dict[str, Any]:
        """``num_workers`` resolved for the trainer's device, and ``pin_memory``: only when the
        batches go to a CUDA device (page-locked memory lets the copy overlap the step; on a
        CPU run it would only cost the pinning)."""
        device = self._device_type()
        local = int(getattr(self.trainer, "num_devices", 1) or 1)
        workers = loader_workers(self.num_workers, device, os.cpu_count() or 1, local)
        return {"num_workers": workers, "pin_memory": device == "cuda"}

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.dataset(split)
        rank, world = self._rank_world()
        weights = balanced_weights(ds.targets) if train and self.balanced_sampling else None
        sampler = EpochSampler(
            len(ds), seed=self.seed, rank=rank, world=world, shuffle=train, weights=weights
        )
        return batch_loader(
            ds,
            sampler,
            batch_size=self.batch_size,
            # a last batch of 1-2 images gives a noisy step and can break BatchNorm
            drop_last=train and len(sampler) > self.batch_size,
            **self.loader_options(),
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
