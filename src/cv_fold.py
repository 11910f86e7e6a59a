"""Stage cv_fold@<f> (cv.folds > 1): train fold f's model on the other folds and predict its own
images and the test split (data/cv/fold<f>/).

The one stage script with an argument: dvc.yaml's matrix passes the fold number, which no
params key can (every fold reads the same params.yaml).
"""

from __future__ import annotations

import os
import sys

# Before torch is imported: OpenMP threads that sleep instead of spinning while they wait; beside
# one busy process a training step is 1.8x faster on 2 cores, alone 5 % slower (bench/omp.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pneumo.layout import PROCESSED, cv_fold_dir
from pneumo.params import load_or_exit


def main(argv: list[str]) -> None:
    if len(argv) != 1 or not argv[0].isdigit():
        sys.exit("usage: python src/cv_fold.py FOLD (dvc.yaml's cv_fold matrix passes it)")
    fold = int(argv[0])
    cv, train = load_or_exit("cv"), load_or_exit("train")
    source, batch_size = load_or_exit("data").source, load_or_exit("evaluate").batch_size
    from pneumo.cv.fold_run import run_fold  # torch: after the params check

    summary = run_fold(PROCESSED, cv_fold_dir(fold), fold, cv, train, source, batch_size)
    if summary is not None:
        print(
            f"fold {fold} of {cv.folds}: best val AUROC {summary['best_val_auroc']:.4f} at epoch "
            f"{summary['best_epoch']}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
