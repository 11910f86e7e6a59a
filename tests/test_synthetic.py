"""The synthetic RSNA-format generator: headers, decoding, labels, determinism, proportions and
how hard its task is for a model of global image statistics."""

from __future__ import annotations

import csv
import hashlib
import re
import uuid
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage

from fixtures import KAGGLE_ZIP_NAME, global_features, global_stats_auroc, write_kaggle_zip
from pneumo.rsna import CLASS_INFO_CSV, LABELS_CSV, TRAIN_IMAGES
from pneumo.synthetic import generate
from pneumo.synthetic.cohort import BOX_COUNT_P, CLASSES, patient_rng, sample_patient
from pneumo.synthetic.render import render, synthesize

SIZE = 128
N = 40
SEED = 3


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "raw"
    summary = generate(out, N, image_size=SIZE, seed=SEED, workers=1)
    assert summary["n_patients"] == N
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout(raw: Path) -> None:
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        [TRAIN_IMAGES, LABELS_CSV, CLASS_INFO_CSV]
    )
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]  # no temp dir left
    files = sorted((raw / TRAIN_IMAGES).iterdir())
    assert len(files) == N and all(p.suffix == ".dcm" for p in files)


def test_dicom_headers(raw: Path) -> None:
    labels = {r["patientId"]: r for r in read_rows(raw / LABELS_CSV)}
    uids = set()
    for path in sorted((raw / TRAIN_IMAGES).iterdir()):
        with open(path, "rb") as f:
            assert f.read(132)[128:] == b"DICM"
        ds = pydicom.dcmread(path)
        meta = ds.file_meta
        assert meta.TransferSyntaxUID == JPEGBaseline8Bit == "1.2.840.10008.1.2.4.50"
        assert ds.SOPClassUID == meta.MediaStorageSOPClassUID == SecondaryCaptureImageStorage
        assert ds.SOPInstanceUID == meta.MediaStorageSOPInstanceUID
        assert (ds.Modality, ds.ConversionType, ds.BodyPartExamined) == ("CR", "WSD", "CHEST")
        assert ds.ViewPosition in ("PA", "AP")
        assert ds.SeriesDescription == f"view: {ds.ViewPosition}"
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored) == (1, 8, 8)
        assert (ds.HighBit, ds.PixelRepresentation) == (7, 0)
        assert (ds.Rows, ds.Columns) == (SIZE, SIZE)
        assert ds.PatientID == str(ds.PatientName) == path.stem
        assert str(uuid.UUID(ds.PatientID)) == ds.PatientID
        assert ds.PatientID in labels
        assert ds.PatientSex in ("M", "F")
        age = ds[0x00101010].value
        assert re.fullmatch(r"\d{1,3}", age), age  # a bare number, as RSNA writes it
        assert ds.StudyDate == "19010101"
        spacing = [float(v) * SIZE / 1024 for v in ds.PixelSpacing]  # in 1024-px terms
        assert spacing[0] == spacing[1] and 0.13 <= spacing[0] <= 0.2
        assert ds["PixelData"].VR == "OB"
        trio = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert len(set(trio)) == 3 and not uids & set(trio)
        uids.update(trio)


def test_decodes_like_the_drawing(raw: Path) -> None:
    rows = read_rows(raw / LABELS_CSV)
    first = rows[0]["patientId"]
    ds = pydicom.dcmread(raw / TRAIN_IMAGES / f"{first}.dcm")
    pixels = ds.pixel_array
    assert pixels.dtype == np.uint8 and pixels.shape == (SIZE, SIZE)
    patient, rendered = synthesize(SEED, 0, SIZE)
    assert patient.patient_id == first
    err = np.abs(pixels.astype(int) - rendered.image.astype(int))
    assert err.mean() < 3 and pixels.std() > 20  # JPEG at quality 92, of a real picture


def test_labels_schema(raw: Path) -> None:
    labels = read_rows(raw / LABELS_CSV)
    classes = read_rows(raw / CLASS_INFO_CSV)
    with open(raw / LABELS_CSV) as f:
        assert f.readline() == "patientId,x,y,width,height,Target\n"
    with open(raw / CLASS_INFO_CSV) as f:
        assert f.readline() == "patientId,class\n"
    assert [r["patientId"] for r in labels] == [r["patientId"] for r in classes]
    per_patient: dict[str, list[dict[str, str]]] = {}
    for row, cls in zip(labels, classes, strict=True):
        per_patient.setdefault(row["patientId"], []).append(row)
        assert cls["class"] in CLASSES
        assert (row["Target"] == "1") == (cls["class"] == "Lung Opacity")
    assert len(per_patient) == N
    images = {p.stem for p in (raw / TRAIN_IMAGES).iterdir()}
    assert set(per_patient) == images
    for rows in per_patient.values():
        if rows[0]["Target"] == "0":
            assert len(rows) == 1
            assert all(rows[0][k] == "" for k in ("x", "y", "width", "height"))
        else:
            assert 1 <= len(rows) <= 4 and all(r["Target"] == "1" for r in rows)
            for r in rows:
                x, y, w, h = (float(r[k]) for k in ("x", "y", "width", "height"))
                assert r["x"].endswith(".0")  # written as the Kaggle CSV writes them
                assert x >= 0 and y >= 0 and w > 0 and h > 0
                assert x + w <= SIZE and y + h <= SIZE
    assert any(r["Target"] == "1" for r in labels) and any(r["Target"] == "0" for r in labels)


def test_boxes_lie_in_the_lungs_and_bound_the_opacity() -> None:
    size, seen = 192, 0
    for index in range(200):
        rng = patient_rng(11, index)
        patient = sample_patient(rng, index)
        rendered = render(patient, rng, size)
        op, lungs = rendered.opacity, rendered.lungs  # working grid == image (size < WORK_SIZE)
        if not patient.target:
            assert len(rendered.boxes) == 0 and not op.any()
            continue
        assert len(rendered.boxes) == patient.n_boxes
        covered = np.zeros_like(lungs)
        for x, y, w, h in rendered.boxes.astype(int):
            inside = lungs[y : y + h, x : x + w]
            assert inside.mean() > 0.6, (index, x, y, w, h)
            # tight: the opacity touches all four sides of its box
            blob = op[y : y + h, x : x + w] > 0
            assert blob[0].any() and blob[-1].any() and blob[:, 0].any() and blob[:, -1].any()
            covered[y : y + h, x : x + w] = True
        assert not (op > 0)[~covered].any()  # no opacity outside the boxes
        assert (lungs[op > 0.3]).mean() > 0.97  # and all of it in the lung fields
        seen += 1
        if seen >= 25:
            break
    assert seen >= 25


def test_box_sizes_in_rsna_range() -> None:
    widths, heights = [], []
    for index in range(400):
        rng = patient_rng(4, index)
        patient = sample_patient(rng, index)
        if patient.target:
            boxes = render(patient, rng, 128).boxes * 1024 / 128
            widths += list(boxes[:, 2])
            heights += list(boxes[:, 3])
    assert len(widths) > 80
    assert 120 <= np.median(widths) <= 300 and 160 <= np.median(heights) <= 400
    assert min(widths) >= 24 and max(widths) <= 560 and max(heights) <= 960


def test_deterministic_and_independent_of_workers(raw: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(again, N, image_size=SIZE, seed=SEED, workers=2)
    assert digest(again) == digest(raw)
    other = tmp_path / "other"
    generate(other, 4, image_size=SIZE, seed=SEED + 1, workers=1)
    assert not set(digest(other).values()) & set(digest(raw).values())
    # a prefix of the dataset is the smaller dataset: patient i depends on (seed, i) only
    prefix = tmp_path / "prefix"
    generate(prefix, 5, image_size=SIZE, seed=SEED, workers=1)
    images = {k: v for k, v in digest(prefix).items() if k.startswith(TRAIN_IMAGES)}
    assert len(images) == 5 and images.items() <= digest(raw).items()


def test_generate_replaces_output_and_cleans_up_on_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    (out / "stale").write_text("x")
    generate(out, 2, image_size=64, seed=0, workers=1)
    assert not (out / "stale").exists() and (out / LABELS_CSV).is_file()
    before = digest(out)

    def boom(*args: object) -> list[dict]:
        raise RuntimeError("interrupted")

    monkeypatch.setattr("pneumo.synthetic.files._draw_all", boom)
    with pytest.raises(RuntimeError):
        generate(out, 2, image_size=64, seed=1, workers=1)
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    with pytest.raises(ValueError, match="n_patients"):
        generate(out, 0, image_size=64, seed=0, workers=1)


def test_proportions_like_rsna() -> None:
    """Metadata of 20,000 patients (no drawing): RSNA's mix within a point or two."""
    patients = [sample_patient(patient_rng(9, i), i) for i in range(20000)]
    target = np.array([p.target for p in patients])
    ap = np.array([p.view == "AP" for p in patients])
    male = np.array([p.sex == "M" for p in patients])
    age = np.array([p.age for p in patients])
    cls = Counter(p.cls for p in patients)
    assert abs(target.mean() - 0.225) < 0.012
    assert abs(ap.mean() - 0.46) < 0.015
    assert abs(target[ap].mean() - 0.383) < 0.02 and abs(target[~ap].mean() - 0.093) < 0.012
    assert abs(male.mean() - 0.57) < 0.015
    assert abs(target[male].mean() - 0.231) < 0.02 and abs(target[~male].mean() - 0.217) < 0.02
    assert abs(cls["Normal"] / 20000 - 0.332) < 0.015
    assert abs(cls["No Lung Opacity / Not Normal"] / 20000 - 0.443) < 0.015
    valid = age[age <= 120]
    assert np.median(valid) == pytest.approx(49, abs=1.5)
    assert np.percentile(valid, 25) == pytest.approx(34, abs=2)
    assert np.percentile(valid, 75) == pytest.approx(59, abs=2)
    assert valid.min() >= 1 and valid.max() <= 100
    assert 20 <= (age > 120).sum() <= 30  # a handful of impossible ages to flag
    boxes = Counter(p.n_boxes for p in patients if p.target)
    n_pos = target.sum()
    for k, expected in zip((1, 2, 3, 4), BOX_COUNT_P, strict=True):
        assert abs(boxes[k] / n_pos - expected) < 0.025


def test_impossible_ages_in_a_small_dataset(raw: Path) -> None:
    """Patient 11 of every dataset has an impossible age: a few hundred patients have one."""
    ages = [sample_patient(patient_rng(s, 11), 11).age for s in range(5)]
    assert all(a > 120 for a in ages)
    patient = sample_patient(patient_rng(SEED, 11), 11)
    ds = pydicom.dcmread(raw / TRAIN_IMAGES / f"{patient.patient_id}.dcm", stop_before_pixels=True)
    assert int(ds[0x00101010].value) > 120


def test_global_statistics_do_not_give_the_answer() -> None:
    """A logistic regression on mean, std and a 16-bin histogram stays at AUROC <= 0.75.

    The view is still a confounder, as in RSNA: AP films are far more often positive and look
    different globally (flatter, smaller lungs), so the statistics recognise the view; the
    opacities themselves are local and leave the histogram alone.
    """
    from sklearn.metrics import roc_auc_score

    n, size = 500, 96
    feats, target, ap = [], [], []
    for index in range(n):
        patient, rendered = synthesize(21, index, size)
        feats.append(global_features(rendered.image))
        target.append(patient.target)
        ap.append(int(patient.view == "AP"))
    x, y, view = np.stack(feats), np.array(target), np.array(ap)
    assert 0.15 < y.mean() < 0.3
    assert global_stats_auroc(x, y) <= 0.75
    assert 0.65 < roc_auc_score(y, view) < 0.78  # the confounder: RSNA's view alone gives 0.71
    assert global_stats_auroc(x, view) > 0.75  # AP films look different


def test_write_kaggle_zip_is_deterministic(raw: Path, tmp_path: Path) -> None:
    a = write_kaggle_zip(raw, tmp_path / "a" / KAGGLE_ZIP_NAME)
    b = write_kaggle_zip(raw, tmp_path / "b" / KAGGLE_ZIP_NAME)
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        assert za.namelist() == zb.namelist()
        assert all(za.read(n) == zb.read(n) for n in za.namelist())
        assert all("/" not in n or n.count("/") == 1 for n in za.namelist())
