"""Train stage: fit the classifier on data/processed, keep the best checkpoint, export model.pt."""

from __future__ import annotations

import os
from pathlib import Path

# Before torch is imported: OpenMP threads that sleep instead of spinning while they wait; beside
# one busy process a training step is 1.8x faster on 2 cores, alone 5 % slower (bench/omp.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pneumo.layout import DETAIL, METRICS_DIR, MODEL_DIR, PROCESSED
from pneumo.params import load_or_exit

PLOTS = Path("plots/train")


def main() -> None:
    p = load_or_exit("train")
    source = load_or_exit("data").source  # for the model's provenance only
    # imported after the params check: a typo is reported at once, not after 10 s of imports
    from pneumo.atomic import write_json
    from pneumo.headline import train_headline
    from pneumo.training.run import train_and_export

    run = train_and_export(PROCESSED, MODEL_DIR, p, source, PLOTS)
    if not run.is_global_zero:  # DDP: the other processes only train
        return
    write_json(DETAIL / "train.json", run.summary)
    write_json(METRICS_DIR / "train.json", train_headline(run.summary))
    best, t = run.summary, run.timing
    print(f"best val AUROC {best['best_val_auroc']:.4f} at epoch {best['best_epoch']}")
    print(f"trained in {t['train_time_s']:.1f} s ({t['train_images_per_s']} images/s)")


if __name__ == "__main__":
    main()
