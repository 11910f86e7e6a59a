"""Train stage: fit the classifier on data/processed, keep the best checkpoint, export model.pt."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Before torch is imported: OpenMP threads that sleep instead of spinning while they wait; beside
# one busy process a training step is 1.8x faster on 2 cores, alone 5 % slower (bench/omp.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pneumo.layout import DETAIL, METRICS_DIR, MODEL_DIR, PROCESSED
from pneumo.params import kwargs_for, load_or_exit

PLOTS = Path("plots/train")


def main() -> None:
    p = load_or_exit("train")
    source = load_or_exit("data").source  # for the model's provenance only
    # imported after the params check: a typo is reported at once, not after 10 s of imports
    import lightning as L
    import torch

    from pneumo.atomic import write_json
    from pneumo.data.datamodule import XrayDataModule
    from pneumo.data.dataset import read_targets
    from pneumo.headline import train_headline
    from pneumo.model import export_model
    from pneumo.provenance import dvc_dir_md5, training_provenance
    from pneumo.training.fit import fit
    from pneumo.training.losses import resolve_pos_weight
    from pneumo.training.module import PneumoniaClassifier, network_from_checkpoint
    from pneumo.training.outputs import write_curves

    if p.threads:
        torch.set_num_threads(p.threads)
    L.seed_everything(p.seed, workers=True)
    dm = XrayDataModule(PROCESSED, **kwargs_for(XrayDataModule, p))
    pos_weight = resolve_pos_weight(p.pos_weight, dm.train_targets(), p.balanced_sampling)
    module = PneumoniaClassifier(**kwargs_for(PneumoniaClassifier, p, pos_weight=pos_weight))
    # dvclive empties its directory at start: give it a private one, keep only the curves
    with tempfile.TemporaryDirectory(prefix="dvclive-") as live_dir:
        result = fit(
            module,
            dm,
            p,
            checkpoint_dir=MODEL_DIR / "checkpoints",
            live_dir=live_dir,
            progress_bar=sys.stdout.isatty(),
        )
        if not result.is_global_zero:  # DDP: the other processes only train
            return
        write_curves(live_dir, PLOTS)
    write_json(DETAIL / "train.json", result.summary)
    write_json(METRICS_DIR / "train.json", train_headline(result.summary))
    net, arch = network_from_checkpoint(result.best_checkpoint)
    s = dm.stats
    provenance = training_provenance(
        source,
        dm.train_targets(),
        read_targets(PROCESSED, "val"),
        dvc_dir_md5(PROCESSED),
        p.model_dump(mode="json"),
    )
    export_model(
        MODEL_DIR / "model.pt",
        net,
        arch,
        s["image_size"],
        s["resize_mode"],
        dm.mean,
        dm.std,
        provenance=provenance,
    )
    best, t = result.summary, result.timing
    print(f"best val AUROC {best['best_val_auroc']:.4f} at epoch {best['best_epoch']}")
    print(f"trained in {t['train_time_s']:.1f} s ({t['train_images_per_s']} images/s)")


if __name__ == "__main__":
    main()
