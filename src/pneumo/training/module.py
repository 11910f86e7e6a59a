"""The LightningModule: one-logit classifier with its loss, metrics and optimiser, and the bare
network back out of its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
)

from pneumo.model import build_network
from pneumo.training.losses import focal_loss


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
