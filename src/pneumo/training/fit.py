"""The training run: Lightning's Trainer as ``train.*`` configures it, with a best-val-AUROC
checkpoint, early stopping, dvclive and a callback recording each epoch."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from pneumo.params import TrainParams, kwargs_for
from pneumo.training.checkpoints import AtomicCheckpointIO, remove_stale_temporaries
from pneumo.training.module import PneumoniaClassifier
from pneumo.training.outputs import training_summary, training_timing


class History(Callback):
    """Per-epoch metrics and timing of a fit: what metrics/train.json summarises.

    ``train_seconds`` counts only the training part of each epoch (loading, augmentation,
    forward, backward, step), not validation, so images / s is the training throughput.
    """

    def __init__(self, echo: bool = True):
        self.echo = echo
        self.epochs: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.fit_seconds = 0.0
        self.train_images = 0
        self.val_images = 0
        self._fit_start = 0.0
        self._epoch_start: float | None = None

    def _close_epoch(self) -> None:
        if self._epoch_start is not None:
            self.train_seconds += time.perf_counter() - self._epoch_start
            self._epoch_start = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.train_images += len(batch[1]) * trainer.world_size

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._close_epoch()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_epoch()
        row = {"epoch": float(trainer.current_epoch + 1)}
        row |= {k: float(v) for k, v in trainer.callback_metrics.items() if k != "step"}
        self.epochs.append(row)
        self.val_images = int(getattr(pl_module, "last_val_images", 0))
        if self.echo and trainer.is_global_zero:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch")
            elapsed = time.perf_counter() - self._fit_start
            print(f"epoch {int(row['epoch'])}/{trainer.max_epochs}  {shown}  ({elapsed:.0f} s)")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._fit_start


def runs_on(trainer: L.Trainer, loader: dict[str, Any]) -> str:
    """One line saying what a fit runs on: accelerator (and GPU), devices, nodes, precision,
    strategy and the loader's workers and pinned memory."""
    device = trainer.strategy.root_device
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    pinned = "pinned" if loader["pin_memory"] else "unpinned"
    return (
        f"training on {device.type}{name}: {trainer.num_devices} device(s) x "
        f"{trainer.num_nodes} node(s), precision {trainer.precision}, "
        f"strategy {type(trainer.strategy).__name__}, "
        f"{loader['num_workers']} loader worker(s), {pinned} memory"
    )


class RunsOn(Callback):
    """Prints :func:`runs_on` once, from global rank 0, when the fit starts (the ranks are
    known only then)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            print(runs_on(trainer, trainer.datamodule.loader_options()), flush=True)


@dataclass
class FitResult:
    """What a fit leaves for the stage script; ``is_global_zero`` says whether to write it."""

    best_checkpoint: Path
    summary: dict[str, Any]
    timing: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    is_global_zero: bool = True


def fit(
    module: PneumoniaClassifier,
    datamodule: L.LightningDataModule,
    p: TrainParams,
    *,
    checkpoint_dir: str | Path,
    live_dir: str | Path,
    progress_bar: bool,
) -> FitResult:
    """Run Lightning's fit as ``p`` configures it, with a best-val-AUROC checkpoint, early
    stopping and dvclive."""
    from dvclive.lightning import DVCLiveLogger  # dvclive imports dvc: only needed to train

    checkpoint_dir = Path(checkpoint_dir)
    remove_stale_temporaries(checkpoint_dir)
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best",
        monitor="val/auroc",
        mode="max",
        save_top_k=1,
        # no last.ckpt: Lightning rewrites it only when the best changes (a 134 MB copy of
        # best.ckpt, not the last epoch), and a rerun retrains from the start, bit for bit
        save_last=False,
        auto_insert_metric_name=False,
        # overwrite the best.ckpt of an earlier run instead of adding best-v1.ckpt
        enable_version_counter=False,
    )
    history = History(echo=not progress_bar)
    logger = DVCLiveLogger(
        dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None, log_model=False
    )
    trainer = L.Trainer(
        **kwargs_for(L.Trainer, p),  # accelerator, devices, strategy, precision, max_epochs, ...
        callbacks=[
            checkpoint,
            EarlyStopping(monitor="val/auroc", mode="max", patience=p.early_stopping_patience),
            history,
            RunsOn(),
        ],
        logger=logger,
        plugins=[AtomicCheckpointIO()],
        # the DataModule shards by rank itself, without the padding DistributedSampler adds
        use_distributed_sampler=False,
        log_every_n_steps=1,
        enable_progress_bar=progress_bar,
        enable_model_summary=progress_bar,
    )
    with warnings.catch_warnings():
        # measured (bench/train.py): memmap reads cost well under 1 % of a step, workers unneeded
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        if p.channels_last:
            # NHWC weights: with a 1-channel input (NCHW and NHWC are the same bytes) every
            # convolution then runs in the layout tensor cores prefer
            module.to(memory_format=torch.channels_last)
        if p.compile:
            # only the network: compiling the whole module would trace self.log and recompile
            # per metric name; Module.compile keeps the state_dict keys unchanged
            module.net.compile()
        trainer.fit(module, datamodule=datamodule)
    summary = training_summary(history.epochs, history.val_images, p.max_epochs)
    return FitResult(
        best_checkpoint=Path(checkpoint.best_model_path),
        summary=summary,
        timing=training_timing(history.fit_seconds, history.train_seconds, history.train_images),
        epochs=history.epochs,
        is_global_zero=trainer.is_global_zero,
    )
