"""Memmap dataset, rank-aware samplers, batch augmentation and the DataModule."""

from __future__ import annotations

import json
import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fixtures import write_blob_dataset
from pneumo.data.augment import augment_batch, random_affine
from pneumo.data.datamodule import XrayDataModule, batch_loader, loader_workers
from pneumo.data.dataset import DataError, MemmapImages, read_stats, read_targets
from pneumo.data.sampler import EpochSampler, balanced_weights
from pneumo.model import normalize

AUG = dict(rotation_deg=10.0, translate=0.1, scale=0.1, brightness=0.2, contrast=0.2, hflip=True)
NO_AUG = dict.fromkeys(AUG, 0.0) | {"hflip": False}
AFFINE = {k: v for k, v in NO_AUG.items() if k not in ("brightness", "contrast")}
DATA = dict(num_workers=0, balanced_sampling=False, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return write_blob_dataset(
        tmp_path_factory.mktemp("processed"), {"train": 40, "val": 13, "test": 7}, image_size=32
    )


def test_blob_dataset_follows_the_processed_contract(processed):
    stats = json.loads((processed / "stats.json").read_text())
    train = np.load(processed / "train.npy", mmap_mode="r")
    assert train.dtype == np.uint8 and train.shape == (40, 32, 32)
    assert stats["image_size"] == 32 and stats["resize_mode"] == "pad" and stats["n_train"] == 40
    assert stats["mean"] == pytest.approx(train.mean() / 255)
    assert stats["std"] == pytest.approx((np.asarray(train) / 255).std())
    targets = read_targets(processed, "train")
    assert set(np.unique(targets)) == {0, 1}
    # positives carry the blob: brighter on average than negatives
    peak = np.asarray(train).reshape(40, -1).max(1)
    assert peak[targets == 1].mean() > peak[targets == 0].mean() + 20


def test_read_stats_and_targets_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="stats.json not found"):
        read_stats(tmp_path)
    (tmp_path / "stats.json").write_text(json.dumps({"mean": 0.5, "image_size": 32}))
    with pytest.raises(DataError, match="missing key.*std.*resize_mode"):
        read_stats(tmp_path)
    (tmp_path / "val.csv").write_text("patientId,target\na,0\nb,2\n")
    with pytest.raises(DataError, match=r"val.csv: row 3: target must be 0 or 1, got 2"):
        read_targets(tmp_path, "val")


def test_memmap_dataset_items_and_errors(processed, tmp_path):
    ds = MemmapImages(processed / "val.npy", read_targets(processed, "val"))
    image, target = ds[3]
    assert len(ds) == 13
    assert image.dtype == torch.uint8 and image.shape == (32, 32)
    assert torch.equal(image, torch.from_numpy(np.load(processed / "val.npy")[3]))
    assert target.item() == read_targets(processed, "val")[3]
    with pytest.raises(DataError, match="13 images but 12 rows"):
        MemmapImages(processed / "val.npy", np.zeros(12))
    np.save(tmp_path / "bad.npy", np.zeros((2, 4, 4), dtype=np.float32))
    with pytest.raises(DataError, match=r"bad.npy: expected uint8 \(N, S, S\)"):
        MemmapImages(tmp_path / "bad.npy", np.zeros(2))


def test_memmap_is_reopened_per_process_and_never_pickled(processed):
    ds = MemmapImages(processed / "train.npy", read_targets(processed, "train"))
    ds[0]
    assert isinstance(ds._arr, np.memmap)
    # a pickled memmap would carry all 40 x 32 x 32 bytes; the dataset carries only its path
    assert len(pickle.dumps(ds)) < 40 * 32 * 32
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._arr is None and torch.equal(clone[5][0], ds[5][0])
    first = ds._arr
    ds._pid = -1  # as seen from a forked worker: another pid
    ds[0]
    assert ds._arr is not first
    # real worker processes read the same batches as the main process
    loader = dict(batch_size=8, sampler=EpochSampler(len(ds), seed=3))
    main = [b[0] for b in DataLoader(ds, **loader)]
    workers = [b[0] for b in DataLoader(ds, num_workers=2, **loader)]
    assert all(torch.equal(a, b) for a, b in zip(main, workers, strict=True))


@pytest.mark.parametrize("n, world", [(13, 2), (13, 3), (5, 4), (8, 2)])
def test_evaluation_shards_cover_every_sample_once(n, world):
    shards = [
        list(EpochSampler(n, seed=0, rank=r, world=world, shuffle=False)) for r in range(world)
    ]
    assert sorted(sum(shards, [])) == list(range(n))  # no padding, no duplicates
    assert [
        len(EpochSampler(n, seed=0, rank=r, world=world, shuffle=False)) for r in range(world)
    ] == list(map(len, shards))


@pytest.mark.parametrize("weighted", [False, True])
def test_training_shards_are_even_seeded_and_change_per_epoch(weighted):
    n, world = 13, 2
    weights = np.linspace(1, 2, n) if weighted else None

    def epoch(e, seed=7):
        samplers = [
            EpochSampler(n, seed=seed, rank=r, world=world, weights=weights) for r in range(world)
        ]
        for s in samplers:
            s.set_epoch(e)
        return [list(s) for s in samplers]

    shards = epoch(0)
    assert [len(s) for s in shards] == [math.ceil(n / world)] * world  # equal steps per rank
    assert epoch(0) == shards and epoch(1) != shards and epoch(0, seed=8) != shards
    if not weighted:
        assert set(sum(shards, [])) == set(range(n))


def test_permuted_labels_shuffle_train_only_keeping_the_counts(processed):
    true = read_targets(processed, "train")
    dm = XrayDataModule(processed, batch_size=8, augment=NO_AUG, permute_labels=True, **DATA)
    shuffled = dm.dataset("train").targets
    assert sorted(shuffled) == sorted(true) and (shuffled != true).any()  # same counts, moved
    np.testing.assert_array_equal(dm.train_targets(), shuffled)  # pos_weight sees the same
    np.testing.assert_array_equal(dm.dataset("val").targets, read_targets(processed, "val"))
    again = XrayDataModule(processed, batch_size=8, augment=NO_AUG, permute_labels=True, **DATA)
    np.testing.assert_array_equal(again.dataset("train").targets, shuffled)  # seeded
    other = XrayDataModule(
        processed, batch_size=8, augment=NO_AUG, permute_labels=True, **(DATA | {"seed": 1})
    )
    assert (other.dataset("train").targets != shuffled).any()
    plain = XrayDataModule(processed, batch_size=8, augment=NO_AUG, **DATA)
    np.testing.assert_array_equal(plain.dataset("train").targets, true)


def test_balanced_sampling_draws_both_classes_equally():
    targets = np.array([0] * 90 + [1] * 10)
    w = balanced_weights(targets)
    assert w[0] == pytest.approx(1 / 90) and w[-1] == pytest.approx(1 / 10)
    drawn = []
    for e in range(20):
        s = EpochSampler(100, seed=0, weights=w)
        s.set_epoch(e)
        drawn += list(s)
    assert targets[drawn].mean() == pytest.approx(0.5, abs=0.05)
    with pytest.raises(DataError, match="both classes"):
        balanced_weights(np.zeros(5))


def _images(b=4, s=32, seed=0):
    return torch.rand(b, 1, s, s, generator=torch.Generator().manual_seed(seed))


def test_augment_is_deterministic_per_seed_and_keeps_shape():
    x = _images()
    a = augment_batch(x, torch.Generator().manual_seed(1), **AUG)
    b = augment_batch(x, torch.Generator().manual_seed(1), **AUG)
    c = augment_batch(x, torch.Generator().manual_seed(2), **AUG)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        augment_batch(x[:, 0], torch.Generator(), **AUG)


def test_augment_with_zero_magnitudes_is_the_identity():
    x = _images()
    assert torch.equal(augment_batch(x, torch.Generator().manual_seed(0), **NO_AUG), x)


def test_hflip_alone_mirrors_about_half_the_images_exactly():
    x = _images(b=64, s=16)
    out = augment_batch(x, torch.Generator().manual_seed(0), **NO_AUG | {"hflip": True})
    same = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x, strict=True)]
    mirrored = [torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, x, strict=True)]
    assert all(s != m for s, m in zip(same, mirrored, strict=True))  # each is one or the other
    assert 16 < sum(mirrored) < 48


def test_affine_parameters_stay_in_their_ranges():
    g = torch.Generator().manual_seed(0)
    rot = random_affine(200, g, **AFFINE | {"rotation_deg": 10.0})
    angles = torch.rad2deg(torch.atan2(rot[:, 1, 0], rot[:, 0, 0]))
    assert angles.abs().max() <= 10.0 + 1e-4 and angles.abs().max() > 8
    assert torch.allclose(torch.linalg.det(rot[:, :, :2]), torch.ones(200), atol=1e-5)
    zoom = random_affine(200, g, **AFFINE | {"scale": 0.2})[:, 0, 0]
    assert zoom.min() >= 1 / 1.2 - 1e-6 and zoom.max() <= 1 / 0.8 + 1e-6
    shift = random_affine(200, g, **AFFINE | {"translate": 0.1})[:, :, 2]
    assert shift.abs().max() <= 0.2 + 1e-6 and shift.abs().max() > 0.15


def test_translation_moves_a_blob_by_the_shift():
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 28:36, 28:36] = 1.0
    g = torch.Generator().manual_seed(5)
    theta = random_affine(1, torch.Generator().manual_seed(5), **AFFINE | {"translate": 0.1})
    out = augment_batch(x, g, **NO_AUG | {"translate": 0.1})
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    cx = (out[0, 0] * xs).sum() / out[0, 0].sum()
    cy = (out[0, 0] * ys).sum() / out[0, 0].sum()
    # theta maps output to input coords, so the content moves by -shift (in pixels: shift * 32)
    assert cx.item() == pytest.approx(31.5 - theta[0, 0, 2].item() * 32, abs=0.05)
    assert cy.item() == pytest.approx(31.5 - theta[0, 1, 2].item() * 32, abs=0.05)


def test_datamodule_normalises_like_the_exported_model_and_augments_train_only(processed):
    dm = XrayDataModule(processed, batch_size=8, augment=AUG, **DATA)
    images, targets = next(iter(dm.val_dataloader()))
    assert images.dtype == torch.uint8 and targets.dtype == torch.float32
    expected = normalize(images, dm.mean, dm.std)
    assert torch.equal(dm.transform_batch(images, train=False), expected)
    assert torch.equal(dm.on_after_batch_transfer((images, targets), 0)[0], expected)
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1)
    dm.setup("fit")
    augmented = dm.on_after_batch_transfer((images, targets), 0)[0]
    assert augmented.shape == expected.shape and not torch.equal(augmented, expected)
    plain = XrayDataModule(processed, batch_size=8, augment={}, **DATA)
    assert torch.equal(plain.transform_batch(images, train=True), expected)


def test_datamodule_loaders(processed):
    dm = XrayDataModule(processed, batch_size=8, augment={}, **DATA)
    train = list(dm.train_dataloader())
    assert [len(b[1]) for b in train] == [8] * 5  # 40 images, last partial batch dropped
    val = list(dm.val_dataloader())
    assert [len(b[1]) for b in val] == [8, 5]
    assert torch.equal(
        torch.cat([b[0] for b in val]), torch.from_numpy(np.load(processed / "val.npy"))
    )
    assert len(dm.test_dataloader().dataset) == 7
    assert list(dm.train_targets()) == list(read_targets(processed, "train"))


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_loader_reads_the_batches_a_per_sample_loader_collates(processed, workers):
    # the train stage's numerics rest on this: the same bytes, dtypes and order per batch
    ds = MemmapImages(processed / "train.npy", read_targets(processed, "train"))
    sampler = EpochSampler(len(ds), seed=5, rank=1, world=2, shuffle=True)
    sampler.set_epoch(3)
    per_sample = list(DataLoader(ds, batch_size=6, sampler=sampler, drop_last=True))
    loader = batch_loader(
        ds, sampler, batch_size=6, drop_last=True, num_workers=workers, pin_memory=False
    )
    batched = list(loader)
    assert len(batched) == len(per_sample) == len(loader) == 3  # 20 of 40 on rank 1, 2 left
    for (xa, ya), (xb, yb) in zip(per_sample, batched, strict=True):
        assert xa.dtype == xb.dtype == torch.uint8 and ya.dtype == yb.dtype == torch.float32
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # the epoch reaches the sampler the way Lightning sets it
    from lightning.fabric.utilities.data import _set_sampler_epoch

    _set_sampler_epoch(loader, 4)
    assert sampler.epoch == 4
    assert not torch.equal(next(iter(loader))[0], batched[0][0])


def test_batch_read_keeps_the_order_asked_for(processed):
    ds = MemmapImages(processed / "val.npy", read_targets(processed, "val"))
    images, targets = ds.batch([7, 2, 7, 0])
    whole = np.load(processed / "val.npy")
    assert np.array_equal(images.numpy(), whole[[7, 2, 7, 0]])
    assert targets.tolist() == ds.targets[[7, 2, 7, 0]].tolist()


def test_loader_workers_and_pinned_memory_follow_the_device(processed):
    assert loader_workers(3, "cpu", 8, 1) == loader_workers(3, "cuda", 8, 1) == 3
    assert loader_workers("auto", "cpu", 64, 1) == loader_workers("auto", "mps", 8, 1) == 0
    assert loader_workers("auto", "cuda", 64, 1) == 4  # capped
    assert loader_workers("auto", "cuda", 16, 8) == 1  # 2 cores per GPU process, one for it
    assert loader_workers("auto", "cuda", 2, 4) == 1  # never none on a GPU
    dm = XrayDataModule(processed, batch_size=8, augment={}, **(DATA | {"num_workers": "auto"}))
    assert dm.loader_options() == {"num_workers": 0, "pin_memory": False}  # no trainer: CPU
    on = {"cpu": torch.device("cpu"), "cuda": torch.device("cuda", 0)}
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=on["cpu"]), num_devices=1)
    assert dm.loader_options() == {"num_workers": 0, "pin_memory": False}
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=on["cuda"]), num_devices=1)
    options = dm.loader_options()
    assert options["pin_memory"] and options["num_workers"] >= 1
