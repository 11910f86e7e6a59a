"""The square transform, and the preprocess stage on a tiny raw + split tree written here."""

from __future__ import annotations

import csv
import faulthandler
import json
import os
import signal
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

import pneumo.conversion as conversion
from conftest import run_stage
from pneumo.image_io.read import read_image
from pneumo.imaging import fit_to_square, load_for_model
from pneumo.preprocessing import (
    INDEX_COLUMNS,
    TooManyRejectedError,
    build_cache,
    pixel_stats,
)
from pneumo.split_schema import SPLIT_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(1)


# ----------------------------------------------------------------------------------------------
# fit_to_square


def _bright_bbox(img: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(img > 127)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("mode", ["pad", "crop", "stretch"])
def test_boxes_follow_the_pixels(mode):
    img = np.zeros((120, 200), np.uint8)  # landscape, so pad and crop differ from stretch
    box = [70.0, 20.0, 60.0, 80.0]  # x, y, w, h: inside the centre crop (40..160)
    img[20:100, 70:130] = 255
    out, t = fit_to_square(img, 50, mode)
    assert out.shape == (50, 50) and out.dtype == np.uint8
    x, y, w, h = t.apply_boxes([box])[0]
    # the drawn rectangle lands where the transformed box says, to within the filter's blur
    np.testing.assert_allclose(_bright_bbox(out), [x, y, x + w, y + h], atol=1.0)
    np.testing.assert_allclose(t.invert_boxes([[x, y, w, h]])[0], box, atol=1e-9)
    if mode == "pad":  # letterbox: black bands above and below, centred
        assert t.offset_x == 0 and t.offset_y == (50 - 30) // 2
        assert out[: int(t.offset_y)].max() == 0 and out[int(t.offset_y) + 30 :].max() == 0
    if mode == "stretch":
        assert (t.scale_x, t.scale_y) == (50 / 200, 50 / 120)


def test_crop_clips_partial_boxes_and_drops_outside_ones():
    _, t = fit_to_square(np.zeros((100, 200), np.uint8), 100, "crop")  # keeps x in 50..150
    boxes = t.apply_boxes([[30, 10, 40, 20], [0, 0, 40, 50], [60, 20, 30, 30]])
    np.testing.assert_allclose(boxes, [[0, 10, 20, 20], [10, 20, 30, 30]])
    assert t.apply_boxes(np.zeros((0, 4))).shape == (0, 4)


def test_square_input_of_the_target_size_is_unchanged():
    img = RNG.integers(0, 256, (32, 32), dtype=np.uint8)
    for mode in ("pad", "crop", "stretch"):
        out, t = fit_to_square(img, 32, mode)
        np.testing.assert_array_equal(out, img)
        np.testing.assert_allclose(t.apply_boxes([[1, 2, 3, 4]]), [[1, 2, 3, 4]])


def test_pixel_stats_are_exact_for_huge_counts():
    hist = RNG.integers(0, 27_000 * 224 * 224 // 50, 256)
    n = Fraction(int(hist.sum()))
    s1 = sum(Fraction(v * int(c)) for v, c in enumerate(hist))
    s2 = sum(Fraction(v * v * int(c)) for v, c in enumerate(hist))
    mean, var = s1 / n / 255, (s2 / n - (s1 / n) ** 2) / 255**2
    stats = pixel_stats(hist)
    assert stats["mean"] == pytest.approx(float(mean), rel=1e-15)
    assert stats["std"] == pytest.approx(float(var) ** 0.5, rel=1e-13)


# ----------------------------------------------------------------------------------------------
# A tiny data/raw + data/split


def _dicom(path: Path, arr: np.ndarray, bits_stored: int = 8) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.Modality, ds.PatientID, ds.PatientName, ds.PatientSex = "CR", path.stem, path.stem, "M"
    ds.set_pixel_data(arr, "MONOCHROME2", bits_stored)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _picture(h: int, w: int, box: list[int] | None) -> np.ndarray:
    img = RNG.integers(20, 90, (h, w), dtype=np.uint8)
    if box:
        x, y, bw, bh = box
        img[y : y + bh, x : x + bw] = 230
    return img


def make_tree(root: Path) -> dict[str, list[dict]]:
    """data/raw with DICOMs (8/12-bit, non-square), PNG, JPEG and a corrupt file + split CSVs."""
    images = root / "data/raw/stage_2_train_images"
    images.mkdir(parents=True)
    specs = {  # name: (h, w, box or None, kind)
        "t0": (60, 100, [60, 10, 30, 40], "dcm8"),
        "t1": (80, 80, None, "dcm12"),
        "t2": (90, 50, [5, 30, 20, 40], "png"),
        "t3": (40, 64, None, "jpg"),
        "t4": (64, 64, [10, 10, 20, 20], "dcm8"),
        "t5": (50, 70, None, "dcm8"),
        "t6": (70, 40, [0, 0, 30, 70], "png"),  # a box reaching three borders
        "bad": (0, 0, None, "corrupt"),
        "t7": (33, 99, [80, 5, 19, 20], "dcm8"),
        "v0": (55, 45, [10, 10, 10, 10], "dcm8"),
        "v1": (45, 55, None, "png"),
        "s0": (64, 48, None, "dcm12"),
        "s1": (48, 64, [40, 10, 24, 30], "dcm8"),
    }
    rows: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for name, (h, w, box, kind) in specs.items():
        suffix = {"png": ".png", "jpg": ".jpg"}.get(kind, ".dcm")
        path = images / f"{name}{suffix}"
        if kind == "corrupt":
            path.write_bytes(b"\x00garbage" * 50)
        elif kind == "dcm12":
            _dicom(path, (_picture(h, w, box).astype(np.uint16) * 16), bits_stored=12)
        elif kind == "dcm8":
            _dicom(path, _picture(h, w, box))
        else:
            Image.fromarray(_picture(h, w, box)).save(path, quality=95)
        split = {"v": "val", "s": "test"}.get(name[0], "train")
        rows[split].append(
            {
                "patientId": name,
                "groupId": f"g-{name}",
                "image": f"stage_2_train_images/{path.name}",
                "target": int(box is not None),
                "class": "Lung Opacity" if box else "Normal",
                "view": "PA" if kind != "png" else "",
                "sex": "F",
                "age": "" if kind == "png" else "151",
                "age_flag": 0 if kind == "png" else 1,
                "boxes": json.dumps([box] if box else []),
            }
        )
    split_dir = root / "data/split"
    split_dir.mkdir(parents=True)
    for split, recs in rows.items():
        with (split_dir / f"{split}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=SPLIT_COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(recs)
    return rows


def _run(root: Path, out: str = "processed", **kw) -> dict:
    args = dict(image_size=32, resize_mode="pad", max_rejected_fraction=0.2, workers=2)
    args |= dict(chunk_size=64, file_timeout_s=120)
    args.update(kw)
    return build_cache(
        root / "data/raw", root / "data/split", root / f"data/{out}", progress=False, **args
    )


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("mode", ["pad", "crop", "stretch"])
def test_stage_outputs(tmp_path, mode):
    rows = make_tree(tmp_path)
    summary = _run(tmp_path, resize_mode=mode, chunk_size=3)
    out = tmp_path / "data/processed"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["rejected.csv", "stats.json"]
        + [f"{s}.{e}" for s in ("train", "val", "test") for e in ("npy", "csv")]
    )
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["processed", "raw", "split"]
    for split, recs in rows.items():
        kept = [r for r in recs if r["patientId"] != "bad"]
        arr = np.load(out / f"{split}.npy", mmap_mode="r")
        assert arr.dtype == np.uint8 and arr.shape == (len(kept), 32, 32)
        index = _read_csv(out / f"{split}.csv")
        assert list(index[0]) == list(INDEX_COLUMNS)  # no image path, no age_flag
        assert [r["patientId"] for r in index] == [r["patientId"] for r in kept]
        for i, (rec, src) in enumerate(zip(index, kept, strict=True)):
            path = tmp_path / "data/raw" / src["image"]
            # row order = index order, and the cache holds exactly what prediction computes
            np.testing.assert_array_equal(arr[i], load_for_model(path, 32, mode))
            _, t = fit_to_square(read_image(path), 32, mode)
            expected = t.apply_boxes(json.loads(src["boxes"])) if src["target"] else []
            np.testing.assert_allclose(
                np.reshape(json.loads(rec["boxes"]), (-1, 4)),
                np.reshape(expected, (-1, 4)),
                atol=1e-3,
            )
            for col in ("groupId", "target", "class", "view", "sex", "age"):
                assert rec[col] == str(src[col])
    train = np.load(out / "train.npy")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["mean"] == pytest.approx((train / 255.0).mean(), abs=1e-9)
    assert stats["std"] == pytest.approx((train / 255.0).std(), abs=1e-9)
    assert (stats["image_size"], stats["resize_mode"], stats["n_train"]) == (32, mode, 8)
    rejected = _read_csv(out / "rejected.csv")
    assert [(r["file"], r["patientId"], r["split"]) for r in rejected] == [
        ("stage_2_train_images/bad.dcm", "bad", "train")
    ]
    assert "not a DICOM, PNG or JPEG" in rejected[0]["reason"]
    assert summary["splits"]["train"] == {"images": 9, "kept": 8, "rejected": 1}


def test_workers_and_chunking_do_not_change_a_byte(tmp_path):
    make_tree(tmp_path)
    _run(tmp_path, out="one", workers=1, chunk_size=64)
    _run(tmp_path, out="two", workers=2, chunk_size=2)
    one, two = tmp_path / "data/one", tmp_path / "data/two"
    assert sorted(os.listdir(one)) == sorted(os.listdir(two))
    for name in os.listdir(one):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_too_many_rejected_fails_and_keeps_the_report(tmp_path):
    make_tree(tmp_path)
    out = tmp_path / "data/processed"
    out.mkdir()
    (out / "train.npy").write_bytes(b"stale output of an earlier run")
    with pytest.raises(TooManyRejectedError) as info:
        _run(tmp_path, max_rejected_fraction=0.1)
    msg = str(info.value)
    assert "1 of 9 images of the train split" in msg and "11.1%" in msg
    assert str(out / "rejected.csv") in msg
    # nothing that looks finished is left, but the list of rejected files is
    assert os.listdir(out) == ["rejected.csv"]
    assert _read_csv(out / "rejected.csv")[0]["patientId"] == "bad"
    assert sorted(os.listdir(tmp_path / "data")) == ["processed", "raw", "split"]


def test_a_crashing_or_hanging_decoder_costs_one_row(tmp_path, monkeypatch):
    rows = make_tree(tmp_path)
    images = tmp_path / "data/raw/stage_2_train_images"
    real = conversion.load_square

    def flaky(path, size, mode):  # the forked workers inherit this patch
        if Path(path).name == "t1.dcm":
            faulthandler.disable()  # pytest's handler would print the worker's stack
            os.kill(os.getpid(), signal.SIGSEGV)
        if Path(path).name == "t5.dcm":
            time.sleep(30)  # ended by the 1 s alarm
        return real(path, size, mode)

    monkeypatch.setattr(conversion, "load_square", flaky)
    t0 = time.monotonic()
    _run(tmp_path, chunk_size=3, file_timeout_s=1, max_rejected_fraction=0.5)
    assert time.monotonic() - t0 < 25
    out = tmp_path / "data/processed"
    reasons = {r["patientId"]: r["reason"] for r in _read_csv(out / "rejected.csv")}
    assert set(reasons) == {"bad", "t1", "t5"}
    assert "crashed the worker process (SIGSEGV)" in reasons["t1"]
    assert "took longer than 1 s" in reasons["t5"]
    index = _read_csv(out / "train.csv")
    kept = [r for r in rows["train"] if r["patientId"] not in reasons]
    assert [r["patientId"] for r in index] == [r["patientId"] for r in kept]
    arr = np.load(out / "train.npy")
    for i, rec in enumerate(kept):
        np.testing.assert_array_equal(arr[i], real(images.parent / rec["image"], 32, "pad").image)


def test_stage_script_runs_from_the_repo_layout(tmp_path):
    make_tree(tmp_path)
    params = (
        "preprocess:\n  image_size: 24\n  resize_mode: crop\n  max_rejected_fraction: 0.2\n"
        "  workers: 2\n  chunk_size: 4\n  file_timeout_s: 60\n"
    )
    (tmp_path / "params.yaml").write_text(params)
    done = run_stage("preprocess.py", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "preprocess" in done.stderr and "train: 8 of 9 images (1 rejected)" in done.stderr
    assert np.load(tmp_path / "data/processed/train.npy").shape == (8, 24, 24)
    (tmp_path / "params.yaml").write_text(params.replace("0.2", "0.05"))
    failed = run_stage("preprocess.py", tmp_path)
    assert failed.returncode != 0
    assert "see data/processed/rejected.csv" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert os.listdir(tmp_path / "data/processed") == ["rejected.csv"]
