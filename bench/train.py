"""Training throughput: the real DataModule + LightningModule against the bare model.

Both train the same network on batches of the same shape: Lightning's ``Trainer.fit`` through
the memmap loader, batch augmentation and normalisation; the bare loop does forward, backward
and Adam's step on tensors already in memory. Their ratio is what the input pipeline and
Lightning cost (target >= 0.9 on CPU). Rates come from the median step time (a step of the
Lightning run includes loading and augmenting its batch), and runs are interleaved, so a
burst of load from other processes on a shared machine moves both alike.

    python bench/train.py [--size 128] [--batch 32] [--steps 10] [--repeats 3] [--workers 0]
                          [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the blob dataset is a test fixture

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from fixtures import write_blob_dataset  # noqa: E402
from pneumo.data.datamodule import XrayDataModule  # noqa: E402
from pneumo.model import build_network, normalize  # noqa: E402
from pneumo.params import kwargs_for, load_section  # noqa: E402
from pneumo.training.losses import pos_weight_from_targets  # noqa: E402
from pneumo.training.module import PneumoniaClassifier  # noqa: E402
from timing_trainer import timing_trainer  # noqa: E402

WARMUP = 3
PARAMS = ROOT / "params.yaml"


class StepClock(Callback):
    """Time at the end of every training batch (loading + augmentation + step included)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())


def _datamodule(data: Path, batch: int, workers: int, seed: int) -> XrayDataModule:
    """The train stage's DataModule (params.yaml's augmentation) at this batch size and seed."""
    p = load_section("train", PARAMS)
    settings = kwargs_for(XrayDataModule, p, batch_size=batch, num_workers=workers, seed=seed)
    return XrayDataModule(data, **settings)


def lightning_rate(data: Path, batch: int, steps: int, workers: int, seed: int) -> float:
    """Images / s of Trainer.fit with the project's DataModule and LightningModule."""
    L.seed_everything(seed, verbose=False)
    dm = _datamodule(data, batch, workers, seed)
    # last_stride 2 as bare_rate's network, so the two rates measure the same network
    p = load_section("train", PARAMS)
    pos_weight = pos_weight_from_targets(dm.train_targets())
    module = PneumoniaClassifier(
        **kwargs_for(PneumoniaClassifier, p, pos_weight=pos_weight, last_stride=2)
    )
    clock = StepClock()
    trainer = timing_trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=WARMUP + steps,
        deterministic=True,
        callbacks=[clock],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, dm)
    return batch / statistics.median(np.diff(clock.ends[WARMUP - 1 :]))


def bare_rate(data: Path, batch: int, steps: int, seed: int) -> float:
    """Images / s of forward-backward-Adam on in-memory normalised tensors of the same shape."""
    torch.manual_seed(seed)
    dm = _datamodule(data, batch, 0, seed)
    images = np.load(data / "train.npy")
    targets = torch.tensor(dm.train_targets(), dtype=torch.float32)
    n_batches = len(images) // batch
    xs = [normalize(images[i * batch : (i + 1) * batch], dm.mean, dm.std) for i in range(n_batches)]
    ys = [targets[i * batch : (i + 1) * batch] for i in range(n_batches)]
    pos_weight = torch.tensor(pos_weight_from_targets(dm.train_targets()))
    net = build_network("resnet18", pretrained=False, weights_path=None, last_stride=2).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-5)
    torch.use_deterministic_algorithms(True)  # as the Trainer above (deterministic=True)
    ends = []
    for i in range(WARMUP + steps):
        x, y = xs[i % n_batches], ys[i % n_batches]
        loss = F.binary_cross_entropy_with_logits(net(x).squeeze(1), y, pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ends.append(time.perf_counter())
    return batch / statistics.median(np.diff(ends[WARMUP - 1 :]))


def pipeline_rate(data: Path, batch: int, workers: int, seed: int) -> float:
    """Images / s of the input pipeline alone: memmap loader + augmentation + normalisation."""
    dm = _datamodule(data, batch, workers, seed)
    dm.setup("fit")
    start, n = time.perf_counter(), 0
    for images, _ in dm.train_dataloader():
        dm.transform_batch(images, train=True)
        n += len(images)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed steps after 3 warm-up steps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, resnet18, {args.size} px, batch {args.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        data = write_blob_dataset(tmp, {"train": args.images, "val": 32}, image_size=args.size)
        pipe = pipeline_rate(data, args.batch, args.workers, 0)
        rates: dict[str, list[float]] = {"bare": [], "lightning": []}
        for r in range(args.repeats):
            rates["bare"].append(bare_rate(data, args.batch, args.steps, r))
            rates["lightning"].append(lightning_rate(data, args.batch, args.steps, args.workers, r))
            print(
                f"repeat {r + 1}: bare {rates['bare'][-1]:.1f} img/s, "
                f"lightning {rates['lightning'][-1]:.1f} img/s"
            )
    bare, light = statistics.median(rates["bare"]), statistics.median(rates["lightning"])
    print(f"input pipeline alone (loader + augmentation, {args.workers} workers): {pipe:.0f} img/s")
    print(f"bare model step:             {bare:.1f} img/s (median of {args.repeats})")
    print(f"DataModule + LightningModule: {light:.1f} img/s (median of {args.repeats})")
    print(f"ratio: {light / bare:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
