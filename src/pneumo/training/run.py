"""One training run from a processed directory to an exported ``model.pt``: the train stage's
work, and each cross-validation fold's (``pneumo.cv``) on its own directory."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pneumo.params import TrainParams, kwargs_for


@dataclass(frozen=True)
class TrainRun:
    """What a run leaves besides its files; ``is_global_zero`` False: a DDP rank that only
    trained (and wrote nothing)."""

    summary: dict[str, Any]
    timing: dict[str, Any]
    is_global_zero: bool


def train_and_export(
    processed: Path, model_dir: Path, p: TrainParams, source: str, plots_dir: Path | None
) -> TrainRun:
    """Fit on ``processed`` (train.npy, val.npy, their CSVs, stats.json) as ``p`` says, keep the
    best checkpoint under ``model_dir/checkpoints``, export ``model_dir/model.pt`` with its
    provenance (``source`` is data.source) and, with ``plots_dir``, the per-epoch curves."""
    import lightning as L
    import torch

    from pneumo.data.datamodule import XrayDataModule
    from pneumo.data.dataset import read_targets
    from pneumo.model import export_model
    from pneumo.provenance import dvc_dir_md5, training_provenance
    from pneumo.training.fit import fit
    from pneumo.training.losses import resolve_pos_weight
    from pneumo.training.module import PneumoniaClassifier, network_from_checkpoint
    from pneumo.training.outputs import write_curves

    if p.threads:
        torch.set_num_threads(p.threads)
    L.seed_everything(p.seed, workers=True)
    dm = XrayDataModule(processed, **kwargs_for(XrayDataModule, p))
    pos_weight = resolve_pos_weight(p.pos_weight, dm.train_targets(), p.balanced_sampling)
    module = PneumoniaClassifier(**kwargs_for(PneumoniaClassifier, p, pos_weight=pos_weight))
    # dvclive empties its directory at start: give it a private one, keep only the curves
    with tempfile.TemporaryDirectory(prefix="dvclive-") as live_dir:
        result = fit(
            module,
            dm,
            p,
            checkpoint_dir=model_dir / "checkpoints",
            live_dir=live_dir,
            progress_bar=sys.stdout.isatty(),
        )
        if not result.is_global_zero:  # DDP: the other processes only train
            return TrainRun(result.summary, result.timing, is_global_zero=False)
        if plots_dir is not None:
            write_curves(live_dir, plots_dir)
    net, arch = network_from_checkpoint(result.best_checkpoint)
    s = dm.stats
    provenance = training_provenance(
        source,
        dm.train_targets(),
        read_targets(processed, "val"),
        dvc_dir_md5(processed),
        p.model_dump(mode="json"),
    )
    export_model(
        model_dir / "model.pt",
        net,
        arch,
        s["image_size"],
        s["resize_mode"],
        dm.mean,
        dm.std,
        provenance=provenance,
    )
    return TrainRun(result.summary, result.timing, is_global_zero=True)
