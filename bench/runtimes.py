"""Benchmark: the model on torch, on onnxruntime in float32, and on onnxruntime in int8.

On the pipeline's own model and test split (``data/model/model.pt``, ``data/export/model.onnx``,
``data/processed``: run ``dvc repro export`` first). The int8 files are made here with
``pneumo.quantization`` as the export stage makes them (static: calibrated on
``export.calibration_images`` train images; dynamic). Prints, side by side in one run:

- images/s at batch 1 and batch 32 for each (forward pass only, uint8 arrays in memory, the
  median of ``--rounds`` interleaved rounds, so a noisy neighbour hits all alike);
- test AUROC of each, and the largest and median |delta p| against torch, the agreement of the
  decisions at the operating point, and the file size.

    python bench/runtimes.py              # 3 rounds
    python bench/runtimes.py --threads 1  # one intra-op thread for every runtime
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as src/predict.py

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from pneumo.layout import MODEL, ONNX_MODEL, OPERATING_POINT, PROCESSED  # noqa: E402
from pneumo.params import load_section  # noqa: E402
from pneumo.quantization import calibration_rows, quantize  # noqa: E402
from pneumo.runtime.onnx_model import load_onnx  # noqa: E402
from pneumo.runtime.torch_model import load_torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 32)
SINGLE_IMAGES = 64  # images timed one at a time per round at batch 1


def cpu_name() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def rate(model, images: np.ndarray, batch: int) -> float:
    """Images per second of ``model.predict`` over ``images`` in batches of ``batch``."""
    n = SINGLE_IMAGES if batch == 1 else len(images)
    t = time.perf_counter()
    for start in range(0, n, batch):
        model.predict(np.ascontiguousarray(images[start : start + batch]), None)
    return n / (time.perf_counter() - t)


def probabilities(model, images: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [model.predict(images[i : i + 64], None)[0] for i in range(0, len(images), 64)]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    args = p.parse_args()
    os.chdir(ROOT)
    for path in (MODEL, ONNX_MODEL, PROCESSED / "test.npy"):
        if not path.is_file():
            raise SystemExit(f"{path} not found: run `dvc repro export` (or `dvc pull`) first")
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_section("export", "params.yaml")
    test = np.load(PROCESSED / "test.npy")
    targets = pd.read_csv(PROCESSED / "test.csv")["target"].to_numpy()
    threshold = json.loads(OPERATING_POINT.read_text())["threshold"]
    models = {
        "torch fp32": load_torch(MODEL),
        "onnxruntime fp32": load_onnx(ONNX_MODEL, args.threads),
    }
    sizes = {"torch fp32": MODEL.stat().st_size, "onnxruntime fp32": ONNX_MODEL.stat().st_size}
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        fp32 = models["onnxruntime fp32"]
        train = np.load(PROCESSED / "train.npy", mmap_mode="r")
        calibration = np.asarray(train[calibration_rows(len(train), params.calibration_images)])
        for mode in ("static", "dynamic"):
            out = Path(tmp) / f"{mode}.onnx"
            t = time.perf_counter()
            quantize(
                ONNX_MODEL,
                out,
                mode,
                calibration if mode == "static" else None,
                fp32.mean,
                fp32.std,
            )
            print(f"int8 {mode}: quantized in {time.perf_counter() - t:.1f} s")
            models[f"onnxruntime int8 {mode}"] = load_onnx(out, args.threads)
            sizes[f"onnxruntime int8 {mode}"] = out.stat().st_size

    for model in models.values():  # warm-up: first-run allocations and kernel selection
        model.predict(test[:32], None)
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for name, model in models.items():
            for batch in BATCHES:
                rates.setdefault((name, batch), []).append(rate(model, test, batch))

    reference = probabilities(models["torch fp32"], test)
    print(
        f"\n{cpu_name()}, {os.cpu_count()} CPUs, "
        f"threads {args.threads or 'all'}, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; test split {len(test)} images at "
        f"{test.shape[1]} px; median of {args.rounds} rounds\n"
    )
    columns = ("batch 1", 9), ("batch 32", 9), ("AUROC", 7), ("max|dp|", 8), ("med|dp|", 8)
    columns += ("agree@op", 8), ("MB", 6)
    print(f"{'':24} " + " ".join(f"{name:>{width}}" for name, width in columns))
    base = {b: statistics.median(rates[("torch fp32", b)]) for b in BATCHES}
    for name, model in models.items():
        prob = probabilities(model, test)
        diff = np.abs(prob - reference)
        agree = np.mean((prob >= threshold) == (reference >= threshold))
        r = {b: statistics.median(rates[(name, b)]) for b in BATCHES}
        print(
            f"{name:24} {r[1]:7.1f}/s {r[32]:7.1f}/s {roc_auc_score(targets, prob):7.4f} "
            f"{diff.max():8.2g} {np.median(diff):8.2g} {agree:8.3f} {sizes[name] / 1e6:6.1f}"
        )
        print(f"{'':24} {r[1] / base[1]:8.2f}x {r[32] / base[32]:8.2f}x  (against torch fp32)")


if __name__ == "__main__":
    main()
