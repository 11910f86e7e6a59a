"""Training: losses, the LightningModule, atomic checkpoints, the Trainer run with dvclive and
what it leaves for the train stage (metrics/train.json, per-epoch curves).

The network itself and the exported model file are :mod:`pneumo.model`, which prediction loads
without importing Lightning.
"""

from __future__ import annotations

import csv
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn
from torchmetrics import MeanMetric, MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
)

from pneumo.atomic import atomic_dir, atomic_path
from pneumo.model import build_network
from pneumo.params import TrainParams, kwargs_for

# ----------------------------------------------------------------------------------------------
# Losses


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


# ----------------------------------------------------------------------------------------------
# The LightningModule


def _eval_metrics(stage: str) -> MetricCollection:
    return MetricCollection(
        {
            "auroc": BinaryAUROC(),
            "accuracy": BinaryAccuracy(),
            "precision": BinaryPrecision(),
            "recall": BinaryRecall(),
            "f1": BinaryF1Score(),
        },
        prefix=f"{stage}/",
    )


class PneumoniaClassifier(L.LightningModule):
    """One-logit classifier; train / val / test share ``_common_step``.

    Inputs are normalised batches ``(B, 1, S, S)`` (the DataModule normalises and augments).
    Validation and test log loss, AUROC, accuracy, precision, recall and F1 (threshold 0.5) as
    ``val/<name>``; torchmetrics gathers their states over all processes before computing.
    The constructor takes the ``train.*`` keys of these names (``kwargs_for``), ``pos_weight``
    resolved to a number; they are the checkpoint's ``hyper_parameters``, in this order.
    """

    def __init__(
        self,
        *,
        arch: str,
        pretrained: bool,
        weights_path: str | None,
        lr: float,
        weight_decay: float,
        scheduler: Literal["cosine", "plateau", "none"],
        max_epochs: int,
        loss: Literal["bce", "focal"],
        pos_weight: float,
        focal_gamma: float,
        plateau_patience: int,
        last_stride: int,
    ):
        super().__init__()
        if scheduler not in ("cosine", "plateau", "none"):
            raise ValueError(f"unknown scheduler {scheduler!r}; choose cosine, plateau or none")
        if loss not in ("bce", "focal"):
            raise ValueError(f"unknown loss {loss!r}; choose bce or focal")
        self.save_hyperparameters()
        self.net = build_network(
            arch, pretrained=pretrained, weights_path=weights_path, last_stride=last_stride
        )
        self.eval_metrics = nn.ModuleDict({s: _eval_metrics(s) for s in ("val", "test")})
        self.eval_losses = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})
        self.val_images = SumMetric()
        self.last_val_images = 0  # images the last validation covered, over all processes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The configured loss on logits ``(B,)`` and float targets ``(B,)``."""
        hp = self.hparams
        if hp.loss == "focal":
            return focal_loss(logits, targets, hp.focal_gamma, hp.pos_weight)
        pos_weight = torch.tensor(hp.pos_weight, device=logits.device, dtype=logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)

    def _common_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        y = y.float()
        logits = self(x).squeeze(1).float()  # float32 loss and metrics under mixed precision
        loss = self.criterion(logits, y)
        n = len(y)
        if stage == "train":
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
            self.log("train/lr", lr, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
            return loss
        self.eval_losses[stage].update(loss.detach(), weight=n)
        # float64 probabilities as in predict_proba: float32 rounds every logit above ~17 to
        # exactly 1.0, and the ties that makes change AUROC (MPS has no float64)
        probs = logits.detach() if logits.device.type == "mps" else logits.detach().double()
        self.eval_metrics[stage].update(torch.sigmoid(probs), y.int())
        if stage == "val":
            self.val_images.update(torch.tensor(float(n), device=logits.device))
        loss_metric = self.eval_losses[stage]
        self.log(f"{stage}/loss", loss_metric, on_step=False, on_epoch=True, batch_size=n)
        self.log_dict(self.eval_metrics[stage], on_step=False, on_epoch=True, batch_size=n)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "test")

    def _log_epoch_number(self) -> None:
        # A logged "step" becomes the x value Lightning hands to the loggers, so dvclive's
        # curves are indexed by epoch (1-based: dvclive treats step 0 as "no step given").
        self.log("step", float(self.current_epoch + 1), sync_dist=True)

    def on_train_epoch_end(self) -> None:
        self._log_epoch_number()

    def on_validation_epoch_end(self) -> None:
        self.last_val_images = int(self.val_images.compute().item())
        self.val_images.reset()
        if not self.trainer.sanity_checking:
            self._log_epoch_number()

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, hp.max_epochs))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=0.1, patience=hp.plateau_patience
        )
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": sched, "interval": "epoch", "monitor": "val/auroc"},
        }


def network_from_checkpoint(path: str | Path) -> tuple[nn.Module, str]:
    """The bare network and its arch from a Lightning checkpoint of :class:`PneumoniaClassifier`.

    Built with ``pretrained=False``: the checkpoint holds every weight, and the ImageNet file
    it may have started from need not exist where the model is exported.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    arch = hparams["arch"]
    last_stride = hparams.get("last_stride", 2)  # checkpoints from before train.last_stride
    net = build_network(arch, pretrained=False, weights_path=None, last_stride=last_stride)
    prefix = "net."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    net.load_state_dict(state)
    return net.eval(), arch


# ----------------------------------------------------------------------------------------------
# Checkpoints that are complete or absent


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside it, fsync, then rename over the old one.

    Lightning's own ``_atomic_save`` goes through fsspec, which writes to ``tempfile.mkstemp()``
    (the system temp dir) and ``shutil.move``s the file: where /tmp is another filesystem (tmpfs)
    that move is a copy into the final name, so a kill mid-copy leaves a torn ``best.ckpt``.
    A rename within one directory is atomic: readers see the old file or the new one.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            torch.save(_without_machine_paths(checkpoint, os.getcwd()), f)
            f.flush()
            os.fsync(f.fileno())
        fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _without_machine_paths(obj: Any, root: str) -> Any:
    """``obj`` with every string naming a path under ``root`` made relative to it.

    ModelCheckpoint keeps its ``dirpath`` and best/last paths as absolute, real paths in the
    checkpoint, so two clones of one commit wrote different checkpoint bytes, and a different
    ``data/model`` hash in ``dvc.lock``. Relative to the repository root they are the same.
    """
    if isinstance(obj, str):
        prefix = root.rstrip(os.sep) + os.sep
        return os.path.relpath(obj, root) if obj.startswith(prefix) or obj == root else obj
    if isinstance(obj, dict):
        # keys too: best_k_models maps checkpoint paths to scores
        return {
            _without_machine_paths(k, root): _without_machine_paths(v, root) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return type(obj)(_without_machine_paths(v, root) for v in obj)
    return obj


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete ``*.tmp`` files a killed run left in ``directory``; returns what was removed."""
    directory = Path(directory)
    stale = sorted(directory.glob("*.tmp")) if directory.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# ----------------------------------------------------------------------------------------------
# The training run


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


def training_summary(
    epochs: list[dict[str, float]], val_images: int, max_epochs: int
) -> dict[str, Any]:
    """metrics/train.json: best val AUROC and its epoch, the last epoch's metrics.

    No timing: a DVC-tracked output must be the same bytes for the same params, seed and machine,
    or two clones of one commit get two ``dvc.lock`` files (``training_timing`` goes to the log).

    The best epoch is the first one reaching the maximum, as ModelCheckpoint keeps it (it
    replaces its best only on a strict improvement). A metric that could not be computed (NaN,
    such as AUROC on a validation set of one class) is written as ``null``.
    """
    scored = [e for e in epochs if "val/auroc" in e and not math.isnan(e["val/auroc"])]
    best = max(scored, key=lambda e: e["val/auroc"]) if scored else None
    last = epochs[-1] if epochs else {}
    return {
        "best_val_auroc": best["val/auroc"] if best else None,
        "best_epoch": int(best["epoch"]) if best else None,
        "epochs": len(epochs),
        "max_epochs": max_epochs,
        "val_images": val_images,
        "last": {
            k.replace("/", "_"): v if math.isfinite(v) else None
            for k, v in last.items()
            if k != "epoch"
        },
    }


def training_timing(fit_seconds: float, train_seconds: float, train_images: int) -> dict[str, Any]:
    """Wall time of the fit and training throughput, for the stage's log."""
    rate = round(train_images / train_seconds, 2) if train_seconds else None
    return {"train_time_s": round(fit_seconds, 2), "train_images_per_s": rate}


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


# ----------------------------------------------------------------------------------------------
# Stage outputs


def write_curves(live_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """dvclive's per-metric TSVs (``<live_dir>/plots/metrics/val/auroc.tsv``) -> ``out_dir``.

    Each becomes ``<out_dir>/val_auroc.tsv`` with columns ``epoch`` (dvclive's step, which the
    module sets to the 1-based epoch) and ``val_auroc``. The directory is replaced as a whole.
    """
    src = Path(live_dir) / "plots" / "metrics"
    out = Path(out_dir)
    written = []
    with atomic_dir(out) as tmp:
        for tsv in sorted(src.rglob("*.tsv")):
            name = "_".join(tsv.relative_to(src).with_suffix("").parts)
            with tsv.open(newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
            column = tsv.stem
            with (tmp / f"{name}.tsv").open("w", newline="") as f:
                w = csv.writer(f, delimiter="\t", lineterminator="\n")
                w.writerow(["epoch", name])
                w.writerows([int(r["step"]), r[column]] for r in rows)
            written.append(out / f"{name}.tsv")
    return written
