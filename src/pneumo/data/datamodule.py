"""The LightningDataModule: loaders over data/processed, normalisation and train augmentation
on whole batches after the transfer to the device."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from pneumo.data.augment import augment_batch
from pneumo.data.dataset import MemmapImages, read_stats, read_targets
from pneumo.data.sampler import EpochSampler, balanced_weights


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
