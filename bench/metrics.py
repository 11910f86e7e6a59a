"""Benchmark: why the evaluate stage's bootstrap and threshold choice are written by hand.

On ``--n`` synthetic scores (300, the size of the default profile's val and test splits) prints:

1. the AUROC of ``--resamples`` bootstrap resamples: ``pneumo.bootstrap.batched_auroc`` (one
   rank computation over all resamples) against one ``sklearn.metrics.roc_auc_score`` call each;
2. one choice of the operating point: ``threshold_for_sensitivity`` (its own counts) against
   ``sklearn.metrics.roc_curve``, which it would otherwise need (``operating_point_interval``
   pays this once per resample);
3. the largest difference between the batched AUROC and scikit-learn's.

    python bench/metrics.py [--n 300] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from pneumo.bootstrap import batched_auroc, resample_indices
from pneumo.operating_point import threshold_for_sensitivity


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of ``repeats`` wall-clock runs of ``fn``, in seconds."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    """Print the timings and the largest AUROC difference."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    y = (rng.random(args.n) < 0.3).astype(np.int64)
    p = 1.0 / (1.0 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(0, 1.3, args.n))))
    idx = resample_indices(args.resamples, args.n, seed=0)
    idx = idx[(y[idx].sum(axis=1) > 0) & (y[idx].sum(axis=1) < args.n)]

    batched = best_of(lambda: batched_auroc(y[idx], p[idx]))
    looped = best_of(lambda: [roc_auc_score(y[row], p[row]) for row in idx], repeats=1)
    print(
        f"AUROC of {len(idx)} resamples of {args.n}: batched {batched:.3f} s, "
        f"roc_auc_score per resample {looped:.3f} s ({looped / batched:.0f}x)"
    )

    calls = 200
    ours = best_of(lambda: [threshold_for_sensitivity(y, p, 0.9) for _ in range(calls)]) / calls
    sk = best_of(lambda: [roc_curve(y, p, drop_intermediate=False) for _ in range(calls)]) / calls
    print(
        f"one operating-point choice: own counts {ours * 1e6:.0f} us, "
        f"roc_curve {sk * 1e6:.0f} us ({sk / ours:.1f}x)"
    )

    expected = np.array([roc_auc_score(y[row], p[row]) for row in idx])
    diff = float(np.abs(batched_auroc(y[idx], p[idx]) - expected).max())
    print(f"largest |batched - roc_auc_score|: {diff:.2e}")


if __name__ == "__main__":
    main()
