"""Stage infer: probabilities of the exported model for the val and test arrays.

One batched, gradient-free pass per split; the evaluate stage computes every metric from these
files, so changing thresholds never re-runs the network.
"""

from __future__ import annotations

import os

# Before torch is imported: OpenMP threads that sleep instead of spinning while they wait; beside
# one busy process a training step is 1.8x faster on 2 cores, alone 5 % slower (bench/omp.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pneumo.layout import MODEL, PREDICTED_SPLITS, PREDICTIONS, PROCESSED
from pneumo.params import load_or_exit
from pneumo.split_inference import run


def main() -> None:
    params = load_or_exit("evaluate")
    run(MODEL, PROCESSED, PREDICTIONS, params.batch_size)
    print(f"wrote {', '.join(str(PREDICTIONS / f'{s}.csv') for s in PREDICTED_SPLITS)}")


if __name__ == "__main__":
    main()
