"""Benchmark of the synthetic RSNA-format generator: speed, and how hard its task is.

    python bench/synthetic.py                  # generation rate at 1024 and 512 px, LR bound
    python bench/synthetic.py --learnability   # also: a ResNet18 trained for a few epochs

Prints figures; writes only into a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the task-difficulty measures are test fixtures

from fixtures import global_features, global_stats_auroc  # noqa: E402
from pneumo.rsna import LABELS_CSV, TRAIN_IMAGES  # noqa: E402
from pneumo.synthetic import generate  # noqa: E402
from pneumo.synthetic.render import synthesize  # noqa: E402
from pneumo.workers import n_workers  # noqa: E402


def rate(n: int, size: int, workers: int) -> float:
    """Images per second of ``generate`` (DICOMs and CSVs written) at ``size`` px."""
    with tempfile.TemporaryDirectory() as td:
        t0 = time.perf_counter()
        generate(Path(td) / "raw", n, image_size=size, seed=0, workers=workers)
        return n / (time.perf_counter() - t0)


def _features(args: tuple[int, int, int]) -> tuple[np.ndarray, int, str]:
    seed, index, size = args
    patient, rendered = synthesize(seed, index, size)
    return global_features(rendered.image), patient.target, patient.view


def logistic_bound(n: int, size: int, seed: int, workers: int) -> dict:
    """Cross-validated AUROC of a logistic regression on global statistics, and of the view."""
    from sklearn.metrics import roc_auc_score

    with ProcessPoolExecutor(max(workers, 1)) as pool:
        rows = list(pool.map(_features, [(seed, i, size) for i in range(n)], chunksize=32))
    x = np.stack([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    ap = np.array([r[2] == "AP" for r in rows], dtype=float)
    return {
        "n": n,
        "positive": float(y.mean()),
        "lr_auroc": global_stats_auroc(x, y),
        "view_only_auroc": float(roc_auc_score(y, ap)),
        "lr_auroc_view_from_stats": global_stats_auroc(x, ap.astype(int)),
    }


def _load_small(raw: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """DICOMs -> uint8 (N, size, size) with targets and boxes scaled to ``size``."""
    import pandas as pd
    import pydicom
    from PIL import Image

    labels = pd.read_csv(raw / LABELS_CSV)
    ids = list(dict.fromkeys(labels["patientId"]))
    images, targets, boxes = [], [], []
    for pid in ids:
        ds = pydicom.dcmread(raw / TRAIN_IMAGES / f"{pid}.dcm")
        img = ds.pixel_array
        k = size / img.shape[0]
        small = Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR)
        images.append(np.asarray(small))
        rows = labels[labels["patientId"] == pid]
        targets.append(int(rows["Target"].iloc[0]))
        b = rows[["x", "y", "width", "height"]].dropna().to_numpy(float) * k
        boxes.append(b)
    return np.stack(images), np.array(targets), boxes


def small_dataset(n: int, gen_size: int, size: int, seed: int) -> dict:
    """Generate ``n`` patients at ``gen_size`` px (DICOMs), read back at ``size`` px."""
    with tempfile.TemporaryDirectory() as td:
        generate(Path(td) / "raw", n, image_size=gen_size, seed=seed, workers=0)
        x, y, boxes = _load_small(Path(td) / "raw", size)
    return {"x": x, "y": y, "boxes": boxes}


def train_resnet(x: np.ndarray, y: np.ndarray, epochs: int, seed: int, log=print):
    """The default profile's recipe: ResNet18 from scratch, Adam 1e-3, batch 32, pos_weight."""
    import torch

    from pneumo.model import build_network, normalize

    torch.manual_seed(seed)
    mean, std = float(x.mean() / 255), float(x.std() / 255)
    net = build_network("resnet18", pretrained=False, weights_path=None, last_stride=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5)
    steps = epochs * int(np.ceil(len(x) / 32))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    pos_weight = torch.tensor([(y == 0).sum() / max((y == 1).sum(), 1)], dtype=torch.float32)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    gen = np.random.default_rng(seed)
    for epoch in range(epochs):
        net.train()
        order = gen.permutation(len(x))
        total = 0.0
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            shift = gen.integers(-6, 7, size=2)  # a little translation, as the pipeline augments
            batch = np.roll(x[idx], tuple(int(v) for v in shift), axis=(1, 2))
            logits = net(normalize(batch, mean, std)).squeeze(1)
            loss = loss_fn(logits, torch.as_tensor(y[idx], dtype=torch.float32))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log(f"  epoch {epoch + 1}: train loss {total / len(x):.3f}")
    net.eval()
    return net, mean, std


def pointing_game(
    net, x: np.ndarray, boxes: list[np.ndarray], mean: float, std: float, tolerance: float
) -> dict:
    """CAM (fc weights on the last feature maps): is its peak in a box or ``tolerance`` px from it?

    The peak is the best feature cell, placed two ways. ResNet's stride-2 convolutions (kernel 3,
    padding 1) and max-pool centre feature cell j on input pixel 32 j, i.e. at 32 j + 0.5 px
    ("aligned"); a bilinear upsampling with align_corners=False puts it at 32 j + 16 instead
    ("upsampled"), 15.5 px right of and below where the evidence is.
    """
    import torch

    from pneumo.model import normalize, split_network

    feats, linear = split_network(net, "resnet18")
    size = x.shape[1]
    hits = {"upsampled": 0, "aligned": 0}
    with torch.no_grad():
        for img, b in zip(x, boxes, strict=True):
            fmap = feats(normalize(img[None], mean, std))[0]  # (C, h, w)
            cam = torch.einsum("c,chw->hw", linear.weight[0], fmap).numpy()
            stride = size / cam.shape[0]
            r, c = np.unravel_index(np.argmax(cam), cam.shape)
            for name, offset in (("upsampled", stride / 2), ("aligned", 0.5)):
                py, px = r * stride + offset, c * stride + offset
                dx = np.maximum(np.maximum(b[:, 0] - px, px - (b[:, 0] + b[:, 2])), 0)
                dy = np.maximum(np.maximum(b[:, 1] - py, py - (b[:, 1] + b[:, 3])), 0)
                hits[name] += bool((dx**2 + dy**2).min() <= tolerance**2)
    n = max(len(x), 1)
    return {f"pointing_{k}": v / n for k, v in hits.items()} | {"grid": cam.shape}


def learnability(n: int, gen_size: int, size: int, epochs: int, seed: int) -> dict:
    """Train the pipeline's ResNet18 (from scratch) briefly; test AUROC and CAM pointing game."""
    from sklearn.metrics import roc_auc_score

    from pneumo.model import predict_proba

    t0 = time.perf_counter()
    data = small_dataset(n, gen_size, size, seed)
    t_gen = time.perf_counter() - t0
    x, y, boxes = data["x"], data["y"], data["boxes"]
    n_test = n // 5
    t0 = time.perf_counter()
    net, mean, std = train_resnet(x[n_test:], y[n_test:], epochs, seed)
    t_train = time.perf_counter() - t0
    prob = predict_proba(net, x[:n_test], mean, std, batch_size=64)
    pos = [i for i in range(n_test) if y[i] == 1]
    boxes_pos = [boxes[i] for i in pos]
    game = pointing_game(net, x[pos], boxes_pos, mean, std, 0.0)
    tol = pointing_game(net, x[pos], boxes_pos, mean, std, 0.067 * size)  # the CAM stage's
    return {
        "n_train": n - n_test,
        "n_test": n_test,
        "test_auroc": float(roc_auc_score(y[:n_test], prob)),
        **game,
        "tolerant": tol,
        "generate_and_load_s": round(t_gen, 1),
        "train_s": round(t_train, 1),
    }


def main() -> None:
    """Print the generator's rate and the difficulty figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-rate", type=int, default=200, help="images per rate measurement")
    ap.add_argument("--n-lr", type=int, default=3000, help="patients for the LR bound")
    ap.add_argument("--workers", type=int, default=0, help="0 = all cores")
    ap.add_argument("--learnability", action="store_true", help="also train a ResNet18")
    ap.add_argument("--n-learn", type=int, default=2000, help="patients for --learnability")
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    workers = n_workers(args.workers)
    print(f"workers: {workers}")
    for size in (1024, 512):
        r = rate(args.n_rate, size, args.workers)
        print(f"generate at {size} px: {r:.1f} images/s ({args.n_rate} images)", flush=True)
    lr = logistic_bound(args.n_lr, 160, seed=1, workers=workers)
    print(
        f"logistic regression on global stats (mean, std, 16-bin histogram), 5-fold CV, "
        f"{lr['n']} patients ({lr['positive']:.1%} positive): AUROC {lr['lr_auroc']:.3f}; "
        f"view alone {lr['view_only_auroc']:.3f}; "
        f"view predicted from the same stats {lr['lr_auroc_view_from_stats']:.3f}",
        flush=True,
    )
    if args.learnability:
        print(f"learnability: ResNet18 from scratch, {args.epochs} epochs at 128 px ...")
        res = learnability(args.n_learn, 512, 128, args.epochs, seed=7)
        g, t = res, res["tolerant"]
        print(
            f"learnability: test AUROC {res['test_auroc']:.3f} ({res['n_train']} train / "
            f"{res['n_test']} test; generate+load {res['generate_and_load_s']} s, train "
            f"{res['train_s']} s)\n"
            f"CAM pointing game on the {res['grid'][0]}x{res['grid'][1]} grid, test positives: "
            f"aligned cell centres {g['pointing_aligned']:.2f} (with 6.7 % tolerance "
            f"{t['pointing_aligned']:.2f}); bilinear-upsampled centres "
            f"{g['pointing_upsampled']:.2f} (with tolerance {t['pointing_upsampled']:.2f})"
        )


if __name__ == "__main__":
    main()
