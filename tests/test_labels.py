"""Labels, dedupe, image matching, header reading and the stratified group split (pneumo.labels)."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.misc import warn_and_log
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from conftest import run_stage
from pneumo.image_io.header import read_meta
from pneumo.labels.errors import LabelError
from pneumo.labels.headers import read_headers
from pneumo.labels.images import match_images
from pneumo.labels.raw_csv import read_labels
from pneumo.labels.split import split_patients
from pneumo.labels.split_files import read_split, write_splits
from pneumo.labels.summary import class_key, summarize
from pneumo.labels.table import build_table, dedupe, flag_ages
from pneumo.rsna import CLASS_INFO_CSV, LABELS_CSV, TRAIN_IMAGES
from pneumo.split_schema import SPLIT_COLUMNS, SPLITS

ROOT = Path(__file__).resolve().parents[1]
LO, NLO, NORMAL = "Lung Opacity", "No Lung Opacity / Not Normal", "Normal"


# ----------------------------------------------------------------------------------------------
# Builders: RSNA-shaped CSVs and real (tiny, uncompressed) DICOM files


def write_csvs(raw: Path, rows: list[tuple], classes: list[tuple] | None = None, group=None):
    """rows: (patientId, box or None, Target); classes default to the one RSNA's Target implies."""
    raw.mkdir(parents=True, exist_ok=True)
    header = ["patientId", "x", "y", "width", "height", "Target"] + (["groupId"] if group else [])
    with (raw / LABELS_CSV).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, (pid, box, target) in enumerate(rows):
            xywh = [f"{v:.1f}" for v in box] if box else ["", "", "", ""]
            w.writerow([pid, *xywh, target] + ([group[i]] if group else []))
    if classes is None:
        classes = [(pid, LO if t == 1 else NORMAL) for pid, _, t in rows]
    with (raw / CLASS_INFO_CSV).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patientId", "class"])
        w.writerows(classes)


def write_dicom(path: Path, view: str = "PA", sex: str = "M", age: str = "62") -> None:
    """An RSNA-like header (bare-number PatientAge) on an 8x8 uncompressed image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = ds.PatientName = path.stem
    ds.Modality, ds.ViewPosition, ds.PatientSex = "CR", view, sex
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.arange(64, dtype=np.uint8).tobytes()
    with config.disable_value_validation():  # pydicom rightly calls "62" an invalid AS: RSNA has it
        ds.PatientAge = age
        ds.save_as(path, enforce_file_format=True)


def make_raw(raw: Path, n_neg: int = 30, n_pos: int = 12, seed: int = 0) -> list[str]:
    """A small raw dir with DICOMs: positives have 1-2 boxes, views mixed, a few ages."""
    rng = np.random.default_rng(seed)
    rows, ids = [], []
    images = raw / TRAIN_IMAGES
    images.mkdir(parents=True)
    for i in range(n_neg + n_pos):
        pid = str(uuid.UUID(int=int(rng.integers(2**63)) + i))
        ids.append(pid)
        if i < n_neg:
            rows.append((pid, None, 0))
        else:
            for _ in range(1 + i % 2):
                rows.append((pid, (100 + i, 200.0, 150.5, 300.0), 1))
        view = "AP" if (i % 3 == 0) else "PA"
        write_dicom(images / f"{pid}.dcm", view=view, sex="MF"[i % 2], age=str(20 + i))
    write_csvs(raw, rows)
    return ids


def rsna_rows(seed: int = 0) -> tuple[list[tuple], list[tuple]]:
    """Labels and class rows with the exact structure of RSNA's stage_2 training CSVs."""
    rng = np.random.default_rng(seed)
    n_boxes = [0] * 20672 + [1] * 2614 + [2] * 3266 + [3] * 119 + [4] * 13
    neg_classes = [NLO] * 11821 + [NORMAL] * 8851
    rng.shuffle(neg_classes)
    patients = [(str(uuid.UUID(int=int(rng.integers(2**63)) * 2 + k)), k) for k in n_boxes]
    order = rng.permutation(len(patients))
    rows, classes, neg = [], [], iter(neg_classes)
    for j in order:
        pid, k = patients[j]
        if k == 0:
            rows.append((pid, None, 0))
            classes.append((pid, next(neg)))
        for _ in range(k):  # a positive patient's box rows are consecutive, as in RSNA
            box = rng.integers(0, 700, 2).tolist() + rng.integers(40, 500, 2).tolist()
            rows.append((pid, box, 1))
            classes.append((pid, LO))
    return rows, classes


@pytest.fixture(scope="module")
def rsna_table(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    raw = tmp_path_factory.mktemp("rsna")
    rows, classes = rsna_rows()
    write_csvs(raw, rows, classes)
    rowlevel = read_labels(raw)
    return rowlevel, dedupe(rowlevel)


def with_views(table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Give the table RSNA's view confounder: AP films far more often positive than PA."""
    rng = np.random.default_rng(seed)
    p_ap = np.where(table["target"] == 1, 0.775, 0.367)  # -> PA 9 % and AP 38 % positive
    view = np.where(rng.random(len(table)) < p_ap, "AP", "PA")
    view[rng.random(len(table)) < 0.02] = ""  # a few unknown views
    return table.assign(view=view)


# ----------------------------------------------------------------------------------------------
# The RSNA structure


def test_rsna_structure_dedupes_to_26684_patients(rsna_table):
    rowlevel, table = rsna_table
    assert len(rowlevel) == 30227
    assert len(table) == 26684 and table["patientId"].is_unique
    assert int(table["target"].sum()) == 6012
    assert table["class"].value_counts().to_dict() == {NLO: 11821, NORMAL: 8851, LO: 6012}
    n_boxes = table["boxes"].map(lambda b: len(json.loads(b)))
    assert int(n_boxes.sum()) == 9555
    assert n_boxes[table["target"] == 1].value_counts().to_dict() == {
        1: 2614,
        2: 3266,
        3: 119,
        4: 13,
    }
    assert (table.loc[table["target"] == 0, "boxes"] == "[]").all()
    assert (table["groupId"] == table["patientId"]).all()  # no groupId column: the patient


def test_dedupe_keeps_every_box_in_file_order(tmp_path):
    rows = [("a", None, 0), ("b", (1, 2, 3, 4), 1), ("b", (5.5, 6, 7, 8), 1), ("c", None, 0)]
    write_csvs(tmp_path, rows)
    table = dedupe(read_labels(tmp_path))
    assert table["patientId"].tolist() == ["a", "b", "c"]
    assert json.loads(table.loc[1, "boxes"]) == [[1, 2, 3, 4], [5.5, 6, 7, 8]]
    assert table["target"].tolist() == [0, 1, 0]


# ----------------------------------------------------------------------------------------------
# Validation errors, each with its message


def test_unknown_target_names_line_and_value(tmp_path):
    write_csvs(tmp_path, [("a", None, 0), ("b", None, 2), ("c", None, "yes")])
    with pytest.raises(LabelError, match=r"unknown Target.*line 3 \(patientId b, value '2'\)"):
        read_labels(tmp_path)


def test_conflicting_targets_name_the_patient(tmp_path):
    rows = [("a", None, 0), ("p1", None, 0), ("p1", (1, 2, 3, 4), 1)]
    write_csvs(tmp_path, rows)
    with pytest.raises(LabelError, match=r"1 patient\(s\) with both Target 0 and Target 1.*p1"):
        dedupe(read_labels(tmp_path))


def test_conflicting_classes_name_the_patient(tmp_path):
    rows = [("a", None, 0), ("a", None, 0)]
    write_csvs(tmp_path, rows, classes=[("a", NORMAL), ("a", NLO)])
    with pytest.raises(LabelError, match=r"different classes: a$"):
        dedupe(read_labels(tmp_path))


def test_misaligned_class_file(tmp_path):
    rows = [("a", None, 0), ("b", None, 0), ("c", None, 0)]
    write_csvs(tmp_path, rows, classes=[("a", NORMAL), ("c", NORMAL), ("b", NORMAL)])
    with pytest.raises(LabelError, match=r"not row-aligned.*line 3.*'b'.*'c'"):
        read_labels(tmp_path)
    write_csvs(tmp_path, rows, classes=[("a", NORMAL), ("b", NORMAL)])
    with pytest.raises(LabelError, match=r"has 2 rows but .* has 3: .*row-aligned"):
        read_labels(tmp_path)


@pytest.mark.parametrize(
    ("rows", "classes", "message"),
    [
        ([("a", (1, 2, 3, 4), 0)], [("a", NORMAL)], r"Target 0 row has a box on line 2"),
        ([("a", (1, 2, 3, 4), 1), ("b", None, 1)], None, r"Target 1 row has no box on line 3"),
        ([("a", None, 0)], [("a", LO)], r"class contradicts .*Target on line 2.*'Lung Opacity'"),
        ([("a", None, 0)], [("a", "")], r"empty class on line 2"),
        ([("a", (1, 2, 0, 4), 1)], None, r"width/height <= 0 on line 2"),
    ],
)
def test_row_errors(tmp_path, rows, classes, message):
    write_csvs(tmp_path, rows, classes)
    with pytest.raises(LabelError, match=message):
        read_labels(tmp_path)


def test_image_level_labels_without_any_box_are_allowed(tmp_path):
    # the folder source: PNEUMONIA rows are Target 1 with no box anywhere in the file
    rows = [("n1", None, 0), ("p1", None, 1)]
    write_csvs(tmp_path, rows, classes=[("n1", "NORMAL"), ("p1", "PNEUMONIA")])
    table = dedupe(read_labels(tmp_path))
    assert table["target"].tolist() == [0, 1] and table["boxes"].tolist() == ["[]", "[]"]


def test_bad_csv_shapes(tmp_path):
    with pytest.raises(LabelError, match=r"stage_2_train_labels.csv not found"):
        read_labels(tmp_path)
    (tmp_path / LABELS_CSV).write_text("patientId,x,y,Target\na,,,0\n")
    (tmp_path / CLASS_INFO_CSV).write_text("patientId,class\na,Normal\n")
    with pytest.raises(LabelError, match=r"missing column\(s\) width, height"):
        read_labels(tmp_path)
    (tmp_path / LABELS_CSV).write_text("patientId,x,y,width,height,Target\na,abc,1,2,3,1\n")
    with pytest.raises(LabelError, match=r"x is not a finite number on line 2.*'abc'"):
        read_labels(tmp_path)


def test_missing_image_is_an_error(tmp_path):
    ids = make_raw(tmp_path, n_neg=3, n_pos=1)
    (tmp_path / TRAIN_IMAGES / f"{ids[1]}.dcm").unlink()
    table = dedupe(read_labels(tmp_path))
    with pytest.raises(LabelError, match=rf"1 labelled patientId\(s\) have no image.*{ids[1]}"):
        match_images(table, tmp_path)


def test_two_files_for_one_patient_is_an_error(tmp_path):
    ids = make_raw(tmp_path, n_neg=2, n_pos=1)
    Image.new("L", (8, 8)).save(tmp_path / TRAIN_IMAGES / f"{ids[0]}.png")
    table = dedupe(read_labels(tmp_path))
    with pytest.raises(LabelError, match=rf"more than one image file: {ids[0]}"):
        match_images(table, tmp_path)


# ----------------------------------------------------------------------------------------------
# The full table from real files: headers, flags


def test_build_table_reads_headers_and_flags(tmp_path, caplog):
    ids = make_raw(tmp_path, n_neg=8, n_pos=4)
    images = tmp_path / TRAIN_IMAGES
    write_dicom(images / f"{ids[0]}.dcm", view="AP", sex="F", age="155")  # RSNA's data error
    # an interrupted copy: cut inside the header of the second file-meta element
    # (preamble 128 + "DICM" 4 + group length 12 + 9 bytes), which pydicom cannot parse
    broken = images / f"{ids[1]}.dcm"
    broken.write_bytes(broken.read_bytes()[:153])
    write_dicom(images / "unlabelled-1.dcm")
    Image.new("L", (8, 8)).save(images / f"{ids[2]}.png")
    (images / f"{ids[2]}.dcm").unlink()
    (images / "notes.txt").write_text("not an image")

    with caplog.at_level(logging.INFO):
        table, flags = build_table(tmp_path, max_age=120)

    assert list(table.columns) == list(SPLIT_COLUMNS)
    assert flags == {"impossible_age": 1, "images_without_labels": 1, "unreadable_header": 1}
    t = table.set_index("patientId")
    assert t.loc[ids[0], ["view", "sex", "age", "age_flag"]].tolist() == ["AP", "F", 155, 1]
    assert t.loc[ids[1], ["view", "sex"]].tolist() == ["", ""] and pd.isna(t.loc[ids[1], "age"])
    assert t.loc[ids[2], "image"] == f"{TRAIN_IMAGES}/{ids[2]}.png"
    assert t.loc[ids[2], "view"] == ""  # PNG: no header
    assert t.loc[ids[3], ["view", "sex", "age", "age_flag"]].tolist() == ["AP", "F", 23, 0]
    assert "unlabelled-1" not in set(t.index)
    log = caplog.text
    assert "1 image(s)" in log and "unlabelled-1.dcm" in log
    assert "1 unreadable header(s)" in log and f"{ids[1]}.dcm" in log
    assert "1 impossible age(s) > split.max_age=120" in log and "155" in log


def test_read_headers_silences_pydicom_and_counts(tmp_path, caplog):
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.dcm")
        write_dicom(paths[-1], age=str(30 + i))

    def noisy_reader(path: Path):
        # what pydicom's validation does for every RSNA file when it objects to the bare age
        warn_and_log("Invalid value for VR AS: '62'.")
        return read_meta(path)

    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        caplog.clear()
        meta, unreadable = read_headers(paths, workers=3, reader=noisy_reader)
    assert meta["age"].tolist() == [30, 31, 32, 33, 34, 35] and unreadable == {}
    assert not [w for w in caught if "VR AS" in str(w.message)]
    assert not [r for r in caplog.records if r.name == "pydicom"]
    summary = [r.getMessage() for r in caplog.records if r.name == "pneumo.labels.headers"]
    assert len(summary) == 1 and "6 x 'Invalid value for VR AS'" in summary[0]
    assert not logging.getLogger("pydicom").filters  # the counter is removed afterwards


def test_flag_ages():
    age = pd.array([5, None, 120, 121, 155], dtype="Int64")
    assert flag_ages(pd.Series(age), 120).tolist() == [0, 0, 0, 1, 1]


# ----------------------------------------------------------------------------------------------
# The split


def test_split_rsna_scale_is_stratified_without_leakage(rsna_table):
    table = with_views(rsna_table[1])
    splits = split_patients(table, val_fraction=0.15, test_fraction=0.15, seed=42)
    assert sum(len(s) for s in splits.values()) == len(table)
    seen: set[str] = set()
    for s in splits.values():
        assert not seen & set(s["patientId"])
        seen |= set(s["patientId"])
    for name, fraction in [("val", 0.15), ("test", 0.15), ("train", 0.70)]:
        assert abs(len(splits[name]) - fraction * len(table)) <= 2
    overall = table["target"].mean()
    fractions = {"train": 0.70, "val": 0.15, "test": 0.15}
    for name, s in splits.items():
        # exact stratification: each (target, view) stratum is cut at its own fraction
        for (target, view), n in table.groupby(["target", "view"]).size().items():
            got = ((s["target"] == target) & (s["view"] == view)).sum()
            assert abs(got - fractions[name] * n) <= 1.5, (name, target, view)
        assert abs(s["target"].mean() - overall) < 0.01
        for view in ("PA", "AP"):
            expect = table.loc[table["view"] == view, "target"].mean()
            assert abs(s.loc[s["view"] == view, "target"].mean() - expect) < 0.01
            share = (table["view"] == view).mean()
            assert abs((s["view"] == view).mean() - share) < 0.01


def test_split_is_deterministic_and_order_independent(rsna_table):
    table = with_views(rsna_table[1]).iloc[:4000]
    a = split_patients(table, 0.15, 0.15, seed=7)
    b = split_patients(table, 0.15, 0.15, seed=7)
    shuffled = table.sample(frac=1.0, random_state=1)
    c = split_patients(shuffled, 0.15, 0.15, seed=7)
    d = split_patients(table, 0.15, 0.15, seed=8)
    for name in SPLITS:
        pd.testing.assert_frame_equal(a[name], b[name])
        assert set(a[name]["patientId"]) == set(c[name]["patientId"])
    assert set(a["test"]["patientId"]) != set(d["test"]["patientId"])


def test_groups_stay_together(rsna_table):
    rng = np.random.default_rng(3)
    table = with_views(rsna_table[1]).iloc[:3000].copy()
    # patients with 1 to 6 images each (the folder source's person12_bacteria_45 naming)
    sizes = rng.integers(1, 7, 1000)
    table["groupId"] = np.repeat([f"person{i}" for i in range(1000)], sizes)[: len(table)]
    splits = split_patients(table, 0.2, 0.1, seed=0)
    owner = {}
    for name, s in splits.items():
        for g in s["groupId"]:
            assert owner.setdefault(g, name) == name, f"group {g} in {owner[g]} and {name}"
    assert sum(len(s) for s in splits.values()) == len(table)
    for name, fraction in [("val", 0.2), ("test", 0.1)]:
        assert abs(len(splits[name]) / len(table) - fraction) < 0.01


def test_both_classes_in_every_split_or_a_clear_error():
    table = pd.DataFrame(
        {
            "patientId": [f"p{i}" for i in range(40)],
            "target": [1] * 7 + [0] * 33,
            "view": ["PA", "AP"] * 20,
        }
    )
    table["groupId"] = table["patientId"]
    splits = split_patients(table, 0.15, 0.15, seed=0)
    for s in splits.values():
        assert set(s["target"]) == {0, 1}
    few = table.iloc[3:]  # 4 positives: 0.15 x 4 rounds to none for val and test
    with pytest.raises(LabelError, match=r"the \w+ split would have no positive image.*4 pos"):
        split_patients(few, 0.1, 0.1, seed=0)


# ----------------------------------------------------------------------------------------------
# Summary and outputs


def test_summarize_and_write_round_trip(tmp_path):
    raw = tmp_path / "raw"
    make_raw(raw, n_neg=30, n_pos=12)
    table, flags = build_table(raw, max_age=120)
    splits = split_patients(table, 0.2, 0.2, seed=0)
    summary = summarize(splits, flags)
    assert set(summary) == {"train", "val", "test", "total", "flags"}
    total = summary["total"]
    assert total["n"] == 42 and total["positive"] == 12 and total["prevalence"] == round(12 / 42, 4)
    assert total["boxes"] == 18  # positives alternate 1 and 2 boxes
    assert total["class"] == {"lung_opacity": 12, "normal": 30}
    assert total["view"] == {"PA": 28, "AP": 14, "unknown": 0}
    for key in ("n", "positive", "boxes"):
        assert sum(summary[s][key] for s in SPLITS) == total[key]
    assert set(summary["test"]["class"]) == set(total["class"])  # stable keys, zeros included
    json.dumps(summary)

    out = tmp_path / "split"
    write_splits(splits, out)
    write_splits(splits, out)  # replacing a finished output works too
    assert sorted(os.listdir(tmp_path)) == ["raw", "split"]  # no temp folder left behind
    for name in SPLITS:
        with (out / f"{name}.csv").open() as f:
            assert f.readline().strip() == ",".join(SPLIT_COLUMNS)
        back = read_split(out / f"{name}.csv")
        pd.testing.assert_frame_equal(
            back, splits[name][list(SPLIT_COLUMNS)].reset_index(drop=True)
        )


def test_class_keys_read_well():
    assert [class_key(c) for c in (LO, NLO, NORMAL)] == ["lung_opacity", "not_normal", "normal"]
    assert class_key("PNEUMONIA") == "pneumonia" and class_key("Viral / bacterial") == (
        "viral_bacterial"
    )


def test_stage_script_end_to_end(tmp_path):
    """python src/split.py in a temporary working copy: outputs, metrics, and a clean error."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    make_raw(tmp_path / "data" / "raw", n_neg=30, n_pos=12)
    done = run_stage("split.py", tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "data" / "detail" / "split.json").read_text())
    assert metrics["total"]["n"] == 42 and metrics["flags"]["impossible_age"] == 0
    for name in SPLITS:
        assert len(read_split(tmp_path / "data" / "split" / f"{name}.csv")) == metrics[name]["n"]
    assert "train" in done.stderr and "positive" in done.stderr
    assert "split: read 42/42 headers" in done.stderr  # progress, plain off a terminal

    (tmp_path / "data" / "raw" / LABELS_CSV).write_text("patientId,x,y,width,height,Target\n")
    done = run_stage("split.py", tmp_path)
    assert done.returncode == 1 and "split: error:" in done.stderr and "no rows" in done.stderr
    assert "Traceback" not in done.stderr


def test_read_headers_survives_the_dicom_zoo(dicom_zoo, caplog):
    """217 real-world files (odd syntaxes, no file meta, no pixels): a meta or a reason for each."""
    files = sorted((dicom_zoo / "files").iterdir())
    with caplog.at_level(logging.INFO):
        meta, unreadable = read_headers(files)
    assert len(meta) == len(files) > 200
    assert set(meta["view"]) <= {"PA", "AP", ""} and set(meta["sex"]) <= {"M", "F", ""}
    assert (meta["view"] != "").any() and meta["age"].notna().any()
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]
    for path, reason in unreadable.items():
        assert path in map(str, files) and reason
