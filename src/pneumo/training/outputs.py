"""What a fit leaves for the train stage: metrics/train.json's summary, the log's timing and
plots/train's per-epoch curves."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from pneumo.atomic import atomic_dir


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
