"""GPU throughput: is the data path fast enough to keep one GPU fed?

Side by side, in one run, on one device: the bare network's training step (bf16 autocast,
channels_last, eager and under ``torch.compile``) on batches already on the device; the train
stage's whole path (Lightning's Trainer with ``XrayDataModule``: memmap batch reads, uint8
transfer, augmentation and normalisation on the device, and ``PneumoniaClassifier``) and its
ratio to the bare step (target >= 0.9 on one H100-class GPU at 224 px, batch 256); the loader
alone (a per-sample loader as torch's default builds it, then the stage's batch loader with
and without workers and pinned memory, each batch copied to the device); the peak GPU memory
of each. Nothing is downloaded: the images are the tests' blob fixture, written to a temporary
memmap, and the network starts from random weights.

    python bench/gpu.py                                   # a GPU: 224 px, batch 256
    python bench/gpu.py --device cpu --size 32 --batch 16 --steps 3 --no-compile  # CPU paths

Without a CUDA device (and no ``--device cpu``) it says why it skips and exits 0.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the blob dataset is a test fixture

import torch  # noqa: E402

WARMUP = 3
PARAMS = ROOT / "params.yaml"


def skip_reason(device: str) -> str | None:
    """Why the benchmark cannot run on ``device``, or None."""
    if device == "cuda" and not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA"
        return (
            f"no CUDA device (torch {torch.__version__}, built with CUDA {built}); "
            "--device cpu runs its code paths"
        )
    return None


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> str:
    """The peak memory allocated on ``device`` since the last reset, or the process's peak RSS."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB GPU"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return f"{rss:.2f} GiB RSS (process peak)"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def train_params(args: argparse.Namespace):
    """params.yaml's train section at this benchmark's batch, precision and device."""
    from pneumo.params import load_section

    p = load_section("train", PARAMS)
    return p.model_copy(
        update={
            "batch_size": args.batch,
            "precision": "bf16-mixed",
            "accelerator": args.device,
            "devices": 1,
            "channels_last": True,
        }
    )


def bare_rate(data: Path, p, device: torch.device, steps: int, compile_: bool) -> float:
    """Images / s of forward, backward and Adam's step on normalised batches already on the
    device, in bf16 autocast with channels_last weights and inputs."""
    import numpy as np
    import torch.nn.functional as F

    from pneumo.data.dataset import read_stats
    from pneumo.model import build_network

    # the same determinism settings as the Trainer's (train.deterministic)
    torch.use_deterministic_algorithms(bool(p.deterministic), warn_only=p.deterministic == "warn")
    torch.backends.cudnn.benchmark = False
    stats = read_stats(data)
    images = torch.from_numpy(np.load(data / "train.npy")[: p.batch_size]).to(device)
    x = ((images.unsqueeze(1).float() / 255 - stats["mean"]) / stats["std"]).contiguous(
        memory_format=torch.channels_last
    )
    y = (torch.arange(p.batch_size, device=device) % 2).float()
    torch.manual_seed(p.seed)
    net = build_network(p.arch, pretrained=False, weights_path=None, last_stride=p.last_stride)
    net = net.to(device, memory_format=torch.channels_last).train()
    step_net = torch.compile(net) if compile_ else net
    opt = torch.optim.Adam(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = step_net(x).squeeze(1).float()
        loss = F.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(step, device, steps, p.batch_size)


def timed(step: Callable[[], None], device: torch.device, steps: int, batch: int) -> float:
    """Images / s over ``steps`` calls of ``step`` after ``WARMUP`` (compilation, autotuning)."""
    for _ in range(WARMUP):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def pipeline_rate(data: Path, p, device: torch.device, steps: int, compile_: bool) -> float:
    """Images / s of the train stage's path: ``Trainer.fit`` with the project's DataModule
    and LightningModule, timed from the end of the warm-up steps to the end of the last."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from pneumo.data.datamodule import XrayDataModule
    from pneumo.params import kwargs_for
    from pneumo.training.losses import pos_weight_from_targets
    from pneumo.training.module import PneumoniaClassifier
    from timing_trainer import timing_trainer

    class Clock(Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx in (WARMUP - 1, WARMUP + steps - 1):
                sync(device)
                self.ends.append(time.perf_counter())

    L.seed_everything(p.seed, verbose=False)
    dm = XrayDataModule(data, **kwargs_for(XrayDataModule, p))
    pos_weight = pos_weight_from_targets(dm.train_targets())
    module = PneumoniaClassifier(**kwargs_for(PneumoniaClassifier, p, pos_weight=pos_weight))
    module.to(memory_format=torch.channels_last)  # as fit() does with train.channels_last
    if compile_:
        module.net.compile()
    clock = Clock()
    trainer = timing_trainer(
        **kwargs_for(
            L.Trainer, p, max_epochs=1, limit_train_batches=WARMUP + steps, limit_val_batches=0
        ),
        use_distributed_sampler=False,  # as the train stage: the DataModule shards itself
        callbacks=[clock],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, dm)
    print(f"  (the DataModule used {dm.loader_options()})")
    return steps * p.batch_size / (clock.ends[1] - clock.ends[0])


def loader_rate(loader, device: torch.device, limit: int) -> float:
    """Images / s of iterating ``loader`` (after its first batch: worker start-up) and copying
    each batch to ``device`` as Lightning does (non-blocking)."""
    n, start = 0, 0.0
    for i, (images, _) in enumerate(loader):
        images.to(device, non_blocking=True)
        if i == 0:
            sync(device)
            start = time.perf_counter()
            continue
        n += len(images)
        if i == limit:
            break
    sync(device)
    return n / (time.perf_counter() - start)


def loader_rates(data: Path, batch: int, device: torch.device, workers: int) -> dict[str, float]:
    """The loader alone: torch's per-sample default, then the stage's batch loader with and
    without workers and (on CUDA) pinned memory."""
    from torch.utils.data import DataLoader

    from pneumo.data.datamodule import batch_loader
    from pneumo.data.dataset import MemmapImages, read_targets
    from pneumo.data.sampler import EpochSampler

    ds = MemmapImages(data / "train.npy", read_targets(data, "train"))
    sampler = EpochSampler(len(ds), seed=0)
    limit = len(ds) // batch - 1
    rates = {
        "per-sample __getitem__ + collate, 0 workers": loader_rate(
            DataLoader(ds, batch_size=batch, sampler=sampler, drop_last=True), device, limit
        )
    }
    pins = (False, True) if device.type == "cuda" else (False,)
    for w in sorted({0, workers}):
        for pin in pins:
            loader = batch_loader(
                ds, sampler, batch_size=batch, drop_last=True, num_workers=w, pin_memory=pin
            )
            name = f"batch reads, {w} workers, {'pinned' if pin else 'unpinned'}"
            rates[name] = loader_rate(loader, device, limit)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help=f"timed steps after {WARMUP} warm-up")
    ap.add_argument("--workers", type=int, default=4, help="loader workers of the loader rows")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = ap.parse_args()
    reason = skip_reason(args.device)
    if reason:
        print(f"bench/gpu.py skipped: {reason}")
        return
    from fixtures import write_blob_dataset

    device = torch.device(args.device)
    p = train_params(args)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{p.arch} (last_stride {p.last_stride}) at {args.size} px, batch {args.batch}, "
        f"bf16 autocast, channels_last, on {device} ({name}), torch {torch.__version__}"
    )
    images = args.batch * (WARMUP + args.steps + 1)  # one epoch covers the timed steps
    compiles = (False,) if args.no_compile else (False, True)
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_blob_dataset(tmp, {"train": images, "val": 8}, image_size=args.size)
        for compile_ in compiles:
            tag = "torch.compile" if compile_ else "eager"
            for label, rate_of in (("bare model", bare_rate), ("DataModule path", pipeline_rate)):
                reset_peak(device)
                rate = rate_of(data, p, device, args.steps, compile_)
                rows.append((f"{label}, {tag}", rate, peak_memory(device)))
        for label, rate in loader_rates(data, args.batch, device, args.workers).items():
            rows.append((f"loader alone: {label}", rate, ""))
    print(f"\n{'':58} {'img/s':>9}  peak memory")
    for label, rate, memory in rows:
        print(f"{label:58} {rate:9.1f}  {memory}")
    rates = dict((label, rate) for label, rate, _ in rows)
    for tag in ("eager", "torch.compile")[: len(compiles)]:
        ratio = rates[f"DataModule path, {tag}"] / rates[f"bare model, {tag}"]
        print(f"ratio DataModule path / bare model, {tag}: {ratio:.3f} (target >= 0.9 on a GPU)")


if __name__ == "__main__":
    main()
