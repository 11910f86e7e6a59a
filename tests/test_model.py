"""Networks, losses, the LightningModule, atomic checkpoints, export and the training summary."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torchvision import models

from fixtures import write_blob_dataset
from pneumo.data.datamodule import XrayDataModule
from pneumo.model import (
    ARCHS,
    WEIGHT_URLS,
    WeightsNotFoundError,
    build_network,
    export_model,
    load_exported,
    normalize,
    predict_proba,
    split_network,
)
from pneumo.resnet import ResNet18
from pneumo.training.checkpoints import AtomicCheckpointIO, remove_stale_temporaries
from pneumo.training.losses import focal_loss, pos_weight_from_targets, resolve_pos_weight
from pneumo.training.module import PneumoniaClassifier, network_from_checkpoint
from pneumo.training.outputs import training_summary, training_timing, write_curves

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(**kw) -> L.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**(args | kw))


# ----------------------------------------------------------------------------------------------
# Networks


@pytest.mark.parametrize("arch", ARCHS)
def test_each_arch_gives_one_logit_and_splits_for_cam(arch):
    torch.manual_seed(0)
    net = build_network(arch, pretrained=False, weights_path=None, last_stride=2).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = net(x)
        features, linear = split_network(net, arch)
        assert torch.allclose(linear(features(x).mean((2, 3))), out, atol=1e-5)
    assert out.shape == (2, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_wrt_input_is_finite_and_nonzero(arch):
    torch.manual_seed(0)
    net = build_network(arch, pretrained=False, weights_path=None, last_stride=2).eval()
    x = torch.randn(2, 1, 64, 64, requires_grad=True)
    net(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    # each image's logit depends on its own pixels only (no mixing across the batch in eval)
    x2 = x.detach().clone().requires_grad_(True)
    net(x2)[0].sum().backward()
    assert x2.grad[1].abs().sum() == 0 and x2.grad[0].abs().sum() > 0


def test_pretrained_weights_sum_the_rgb_kernels(tmp_path):
    torch.manual_seed(0)
    rgb = models.resnet18(weights=None)  # random init stands in for ImageNet: same file format
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(rgb.state_dict(), path)
    net = build_network("resnet18", pretrained=True, weights_path=path, last_stride=2)
    assert net.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(net.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    assert (net.conv1.stride, net.conv1.padding) == ((2, 2), (3, 3))
    ours, theirs = net.state_dict(), rgb.state_dict()
    for k, v in theirs.items():
        if not k.startswith(("conv1.", "fc.")):
            assert torch.equal(ours[k], v), k
    assert net.fc.out_features == 1
    # a gray image (R = G = B) gives the same first-layer response as the RGB network
    gray = torch.rand(1, 1, 32, 32)
    assert torch.allclose(net.conv1(gray), rgb.conv1(gray.expand(1, 3, 32, 32)), atol=1e-5)


def test_our_resnet18_is_torchvisions():
    """pneumo.resnet.ResNet18 against torchvision.models.resnet18: the same modules and names,
    the same weights from the same seed, the same outputs in train and eval mode."""
    torch.manual_seed(3)
    theirs = models.resnet18(weights=None)
    torch.manual_seed(3)
    ours = ResNet18()
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for k in b:
        assert torch.equal(a[k], b[k]), k
    x = torch.randn(3, 3, 96, 80)
    for mode in (True, False):  # train mode also updates BatchNorm's running statistics
        ours.train(mode), theirs.train(mode)
        with torch.no_grad():
            assert torch.equal(ours(x), theirs(x)), mode
    for k in b:
        assert torch.equal(ours.state_dict()[k], theirs.state_dict()[k]), k


def test_weight_file_names_are_torchvisions():
    weights = {
        "resnet18": models.ResNet18_Weights.DEFAULT,
        "densenet121": models.DenseNet121_Weights.DEFAULT,
        "efficientnet_v2_s": models.EfficientNet_V2_S_Weights.DEFAULT,
    }
    assert {arch: w.url for arch, w in weights.items()} == WEIGHT_URLS


def test_loading_a_resnet18_imports_neither_torchvision_nor_lightning(tmp_path):
    """The predict command on its torch fallback: a fresh process loads model.pt and predicts one
    image through the command's own modules without importing either (about 3 s between them);
    the default, onnxruntime, imports no torch at all (test_onnx)."""
    net = build_network("resnet18", last_stride=1, pretrained=False, weights_path=None)
    export_model(tmp_path / "model.pt", net, "resnet18", 32, "pad", 0.5, 0.25)
    code = (
        "import sys, numpy as np\n"
        "from pneumo import deployment, file_inference\n"
        f"m = deployment.load_model(__import__('pathlib').Path({str(tmp_path / 'model.pt')!r}))\n"
        "probs, maps = m.predict(np.zeros((1, 32, 32), np.uint8), 'cam')\n"
        "print(sorted(k for k in ('torchvision', 'lightning', 'torchmetrics', 'pandas')"
        " if k in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_missing_pretrained_weights_say_how_to_get_them(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsNotFoundError, match=f"not found at {missing}") as e:
        build_network("resnet18", pretrained=True, weights_path=missing, last_stride=2)
    assert "torchvision.models.resnet18(weights='DEFAULT')" in str(e.value)
    assert "train.pretrained: false" in str(e.value)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError, match=r"hub/checkpoints/resnet18-f37072fd.pth"):
        build_network("resnet18", pretrained=True, weights_path=None, last_stride=2)


def test_export_is_byte_for_byte_deterministic(tmp_path):
    """The same network exported twice is the same file, whatever it is called and whichever
    process writes it (DVC hashes it: data/model in dvc.lock)."""
    torch.manual_seed(0)
    net = build_network("resnet18", pretrained=False, weights_path=None, last_stride=2)
    a, b = tmp_path / "model.pt", tmp_path / "other" / "copy.pt"
    export_model(a, net, "resnet18", 32, "pad", 0.5, 0.25)
    export_model(b, net, "resnet18", 32, "pad", 0.5, 0.25)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("last_stride", [2, 1])
def test_exported_model_round_trip(tmp_path, last_stride):
    torch.manual_seed(0)
    net = build_network(
        "resnet18", last_stride=last_stride, pretrained=False, weights_path=None
    ).eval()
    export_model(tmp_path / "model.pt", net, "resnet18", 48, "crop", 0.25, 0.5)
    loaded = load_exported(tmp_path / "model.pt")
    assert (loaded.arch, loaded.image_size, loaded.resize_mode) == ("resnet18", 48, "crop")
    assert loaded.last_stride == last_stride
    assert (loaded.mean, loaded.std) == (0.25, 0.5)
    assert not loaded.net.training
    images = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    with torch.no_grad():
        assert torch.equal(
            loaded.net(normalize(images, 0.25, 0.5)), net(normalize(images, 0.25, 0.5))
        )
    assert not list(tmp_path.glob("*.tmp"))


# ----------------------------------------------------------------------------------------------
# Losses


def test_pos_weight_auto_is_negatives_over_positives():
    assert pos_weight_from_targets(np.array([0, 0, 0, 1, 0, 1])) == 2.0
    assert resolve_pos_weight("auto", np.array([0, 0, 0, 1]), balanced_sampling=False) == 3.0
    assert resolve_pos_weight("auto", np.array([0, 0, 0, 1]), balanced_sampling=True) == 1.0
    assert resolve_pos_weight(2.5, np.array([0, 1]), balanced_sampling=False) == 2.5
    with pytest.raises(ValueError, match="3 negatives and 0 positives"):
        pos_weight_from_targets(np.array([0, 0, 0]))


def test_focal_loss_by_hand():
    logits, targets = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    p_pos, p_neg = sig(2.0), 1 - sig(-1.0)  # probability of the true class
    hand = (3 * (1 - p_pos) ** 2 * -math.log(p_pos) + (1 - p_neg) ** 2 * -math.log(p_neg)) / 2
    assert focal_loss(logits, targets, gamma=2.0, pos_weight=3.0).item() == pytest.approx(hand)


def test_focal_loss_with_gamma_zero_is_bce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, generator=g) * 4
    targets = (torch.rand(50, generator=g) > 0.6).float()
    for pw in (1.0, 3.3):
        bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor(pw))
        assert torch.allclose(focal_loss(logits, targets, 0.0, pw), bce, rtol=1e-6)
    # gamma > 0 down-weights the easy examples: never above BCE
    assert focal_loss(logits, targets, 2.0, 1.0) < F.binary_cross_entropy_with_logits(
        logits, targets
    )


# ----------------------------------------------------------------------------------------------
# The LightningModule

# the settings these tests were tuned with (params.yaml's train section has the pipeline's own)
MODULE = dict(
    arch="resnet18",
    pretrained=False,
    weights_path=None,
    lr=1e-4,
    weight_decay=1e-5,
    scheduler="cosine",
    max_epochs=20,
    loss="bce",
    pos_weight=1.0,
    focal_gamma=2.0,
    plateau_patience=2,
    last_stride=2,
)
DATA = dict(num_workers=0, balanced_sampling=False, augment={})


def _module(**settings) -> PneumoniaClassifier:
    return PneumoniaClassifier(**MODULE | settings)


def test_optimizer_and_schedulers():
    m = _module(lr=3e-4, weight_decay=1e-3, scheduler="cosine", max_epochs=7)
    conf = m.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["lr"] == 3e-4 and opt.defaults["weight_decay"] == 1e-3
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) and sched.T_max == 7
    plateau = _module(scheduler="plateau", plateau_patience=3).configure_optimizers()
    assert plateau["lr_scheduler"]["monitor"] == "val/auroc"
    assert plateau["lr_scheduler"]["scheduler"].mode == "max"
    assert isinstance(_module(scheduler="none").configure_optimizers(), torch.optim.Adam)
    with pytest.raises(ValueError, match="unknown scheduler 'step'"):
        _module(scheduler="step")


def test_module_loss_follows_its_settings():
    logits, y = torch.tensor([0.3, -2.0, 1.5]), torch.tensor([1.0, 0.0, 0.0])
    bce = _module(pos_weight=2.0).criterion(logits, y)
    assert torch.allclose(
        bce, F.binary_cross_entropy_with_logits(logits, y, pos_weight=torch.tensor(2.0))
    )
    focal = _module(loss="focal", focal_gamma=1.5, pos_weight=2.0).criterion(logits, y)
    assert torch.allclose(focal, focal_loss(logits, y, 1.5, 2.0))


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return write_blob_dataset(
        tmp_path_factory.mktemp("blobs"),
        {"train": 64, "val": 40},
        image_size=32,
        label_noise={"val": 0.15},
    )


def test_tiny_fit_lowers_the_loss_and_validation_matches_sklearn(blobs, tmp_path):
    before_threads = torch.get_num_threads()
    L.seed_everything(0)
    dm = XrayDataModule(blobs, batch_size=16, seed=0, **DATA)
    module = _module(lr=1e-3, scheduler="none", max_epochs=12)
    images = np.load(blobs / "train.npy")
    targets = torch.tensor(dm.train_targets(), dtype=torch.float32)

    def train_loss() -> float:
        module.eval()
        with torch.no_grad():
            return module.criterion(
                module(normalize(images, dm.mean, dm.std)).squeeze(1), targets
            ).item()

    before = train_loss()
    trainer = _trainer(max_epochs=12, limit_val_batches=0, default_root_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, dm)
    after = train_loss()
    # 12 epochs at 1e-3 fit 64 blob images on every CPU tried (0.70 -> below 0.05 with the
    # default kernels, ATEN_CPU_CAPABILITY=default and ONEDNN_MAX_CPU_ISA=SSE41 alike); the old 8
    # epochs at 3e-3 ended anywhere from 0.08 to 0.68 depending on the CPU's kernels
    assert after < 0.3 * before, (before, after)
    assert torch.get_num_threads() == before_threads

    # validation metrics are torchmetrics over the whole split: compare with scikit-learn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (logged,) = _trainer().validate(module, dm, verbose=False)
    val = np.load(blobs / "val.npy")
    y = dm.dataset("val").targets
    prob = predict_proba(module.net, val, dm.mean, dm.std, batch_size=64)
    assert logged["val/auroc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-6)
    assert logged["val/accuracy"] == pytest.approx(((prob > 0.5) == y).mean(), abs=1e-6)
    assert module.last_val_images == len(val)
    assert 0.5 < logged["val/auroc"] < 1.0  # learnt something; label noise keeps it imperfect


def test_network_from_checkpoint_gives_the_trained_weights(blobs, tmp_path):
    L.seed_everything(1)
    dm = XrayDataModule(blobs, batch_size=16, seed=0, **DATA)
    module = _module(pretrained=False, max_epochs=1)
    trainer = _trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=0, plugins=[AtomicCheckpointIO()]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    net, arch = network_from_checkpoint(tmp_path / "m.ckpt")
    assert arch == "resnet18" and not net.training
    for k, v in module.net.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k


# ----------------------------------------------------------------------------------------------
# Atomic checkpoints


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "best.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1

    real_save = torch.save

    def interrupted(obj, f, *a, **kw):
        f.write(b"half a checkpoint")  # then Ctrl-C arrives mid-write
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1  # the good one is intact
    assert list(tmp_path.iterdir()) == [path]  # and no temporary is left behind
    monkeypatch.setattr(torch, "save", real_save)
    io.save_checkpoint({"epoch": 3}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 3


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    (tmp_path / "best.ckpt").write_bytes(b"ok")
    (tmp_path / "best.ckpt.123.tmp").write_bytes(b"torn")
    assert remove_stale_temporaries(tmp_path) == [tmp_path / "best.ckpt.123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]
    assert remove_stale_temporaries(tmp_path / "absent") == []


# ----------------------------------------------------------------------------------------------
# Outputs


def test_training_summary():
    epochs = [
        {"epoch": 1.0, "train/loss": 0.9, "val/loss": 0.8, "val/auroc": 0.70},
        {"epoch": 2.0, "train/loss": 0.7, "val/loss": 0.6, "val/auroc": 0.85},
        {"epoch": 3.0, "train/loss": 0.6, "val/loss": 0.65, "val/auroc": 0.85},
    ]
    s = training_summary(epochs, 123, max_epochs=10)
    assert s["best_val_auroc"] == 0.85 and s["best_epoch"] == 2  # the first epoch reaching it
    assert s["epochs"] == 3 and s["max_epochs"] == 10
    assert training_timing(30.0, 20.0, 1000) == {"train_time_s": 30.0, "train_images_per_s": 50.0}
    assert s["val_images"] == 123
    assert s["last"] == {"train_loss": 0.6, "val_loss": 0.65, "val_auroc": 0.85}


def test_write_curves_flattens_dvclive_tsvs(tmp_path):
    src = tmp_path / "live" / "plots" / "metrics"
    (src / "val").mkdir(parents=True)
    (src / "val" / "auroc.tsv").write_text("step\tauroc\n1\t0.5\n2\t0.75\n")
    (src / "train").mkdir()
    (src / "train" / "loss.tsv").write_text("step\tloss\n1\t0.9\n2\t0.8\n")
    out = tmp_path / "plots" / "train"
    out.mkdir(parents=True)
    (out / "stale.tsv").write_text("old")
    written = write_curves(tmp_path / "live", out)
    assert sorted(p.name for p in written) == ["train_loss.tsv", "val_auroc.tsv"]
    assert sorted(p.name for p in out.iterdir()) == ["train_loss.tsv", "val_auroc.tsv"]
    assert (out / "val_auroc.tsv").read_text() == "epoch\tval_auroc\n1\t0.5\n2\t0.75\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["train"]  # no temporary left
