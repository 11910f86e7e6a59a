"""The intended-use gate (real CT, MR and US files refused, RSNA-format chest films accepted), its
override, and the model's provenance with the warning of a synthetic-trained model, from the
command line and from the service."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset

from pneumo.intended_use import NO_HEADER, OFF, PASSED, check_file, header_refusals
from pneumo.model import build_network, export_model, load_exported
from pneumo.provenance import dvc_dir_md5, provenance_warning, training_provenance
from pneumo.synthetic import generate
from serve import create_app
from test_predict import jsonl, run_cli
from test_serve import _upload

MR = "pydicom-data__data_store__data__MR2_UNCR.dcm"  # the file of the issue: p=0.9978 before


def header(**elements: object) -> Dataset:
    """A header with RSNA's values (CR, CHEST, PA, one 8-bit gray frame), ``elements`` replaced."""
    ds = Dataset()
    values = {"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": "PA"}
    values |= {"SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2"}
    for keyword, value in (values | elements).items():
        if value is not None:
            setattr(ds, keyword, value)
    return ds


@pytest.fixture(scope="module")
def rsna_dicom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rsna")
    generate(root / "raw", n_patients=1, image_size=96, seed=1, workers=1)
    return next((root / "raw" / "stage_2_train_images").glob("*.dcm"))


@pytest.fixture(scope="module")
def mr_dicom(dicom_zoo) -> Path:
    return dicom_zoo / "files" / MR


# ----------------------------------------------------------------------------------------------
# The rules, on hand-built headers


def test_rsna_header_passes():
    assert header_refusals(header()) == []
    assert header_refusals(header(Modality="DX", ViewPosition="AP")) == []


@pytest.mark.parametrize(
    "part", ["CHEST", "chest ", "THORAX", "TORACE", "CHEST PA", "PORT_CHEST", ""]
)
def test_chest_spellings_and_an_absent_body_part_pass(part):
    assert header_refusals(header(BodyPartExamined=part)) == []
    assert header_refusals(header(BodyPartExamined=None, ViewPosition=None)) == []


@pytest.mark.parametrize(
    ("elements", "reason"),
    [
        ({"Modality": "MR"}, "Modality MR"),
        ({"Modality": "OT"}, "Modality OT"),
        ({"Modality": None}, "no Modality"),
        ({"BodyPartExamined": "CSPINE"}, "BodyPartExamined CSPINE, not the chest"),
        ({"BodyPartExamined": "TSPINE"}, "not the chest"),
        ({"ViewPosition": "LL"}, "ViewPosition LL: not a frontal"),
        ({"ViewPosition": "LATERAL"}, "not a frontal"),
        ({"NumberOfFrames": 10}, "multi-frame data (10 frames)"),
        ({"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB"}, "colour data (RGB)"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "colour data (PALETTE COLOR)"),
    ],
)
def test_each_rule_refuses_with_its_reason(elements, reason):
    reasons = header_refusals(header(**elements))
    assert len(reasons) == 1 and reason in reasons[0]


def test_png_has_no_header_and_passes(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    assert check_file(tmp_path / "x.png") == (NO_HEADER, None)


# ----------------------------------------------------------------------------------------------
# Real files


def test_rsna_format_chest_dicom_is_accepted(rsna_dicom):
    ds = pydicom.dcmread(rsna_dicom, stop_before_pixels=True)
    assert (ds.Modality, ds.BodyPartExamined) == ("CR", "CHEST")
    assert check_file(rsna_dicom) == (PASSED, None)


def _zoo_rows(zoo: Path, modalities: tuple[str, ...]) -> list[dict]:
    with (zoo / "zoo.csv").open() as f:
        return [r for r in csv.DictReader(f) if r["Modality"] in modalities]


def test_zoo_ct_mr_and_us_are_refused_for_their_modality(dicom_zoo):
    rows = _zoo_rows(dicom_zoo, ("CT", "MR", "US"))
    assert {r["Modality"] for r in rows} == {"CT", "MR", "US"} and len(rows) > 50
    for r in rows:
        verdict, reason = check_file(dicom_zoo / r["file"])
        assert verdict == "refused" and f"Modality {r['Modality']}:" in reason, r["file"]
        assert "\n" not in reason


def test_zoo_multi_frame_and_colour_files_name_it(dicom_zoo):
    reasons = {
        r["file"]: check_file(dicom_zoo / r["file"])[1] for r in _zoo_rows(dicom_zoo, ("US", "MR"))
    }
    assert (
        "multi-frame data (10 frames)"
        in reasons["files/pydicom-data__data_store__data__emri_small.dcm"]
    )
    assert "colour data (RGB)" in reasons["files/pydicom-data__data_store__data__US1_UNCR.dcm"]


def test_zoo_chest_radiographs_pass_and_a_lateral_spine_does_not(dicom_zoo):
    rows = _zoo_rows(dicom_zoo, ("CR", "DX"))
    chest = [r for r in rows if r["BodyPartExamined"] == "CHEST" and r["decode"] == "ok"]
    assert len(chest) >= 4
    for r in chest:
        assert check_file(dicom_zoo / r["file"]) == (PASSED, None), r["file"]
    spine = next(r for r in rows if r["BodyPartExamined"] == "CSPINE")
    reason = check_file(dicom_zoo / spine["file"])[1]
    assert "BodyPartExamined CSPINE" in reason and "ViewPosition LL" in reason


# ----------------------------------------------------------------------------------------------
# The command line


def test_cli_refuses_the_mr_and_still_predicts_the_chest(mr_dicom, rsna_dicom, model_path, capsys):
    code, out, err = run_cli([mr_dicom, rsna_dicom, "--model", model_path], capsys)
    assert code == 1
    assert f"{mr_dicom}: refused: Modality MR: the model reads chest radiographs" in err
    assert out.count("\n") == 1 and str(rsna_dicom) in out
    assert "1 predicted, 0 failed, 1 refused" in err

    code, out, _ = run_cli([mr_dicom, rsna_dicom, "--model", model_path, "--json"], capsys)
    recs = jsonl(out)
    assert code == 1
    assert recs[0] == {"file": str(mr_dicom), "refused": recs[0]["refused"]}
    assert recs[0]["refused"].startswith("Modality MR")
    assert recs[1]["gate"] == PASSED and "prob" in recs[1]


def test_no_gate_predicts_the_mr_and_says_so(mr_dicom, model_path, capsys):
    code, out, err = run_cli([mr_dicom, "--model", model_path, "--json", "--no-gate"], capsys)
    recs = jsonl(out)
    assert code == 0
    assert recs[0]["gate"] == OFF and 0 <= recs[0]["prob"] <= 1
    assert any("it would refuse: Modality MR" in n for n in recs[0]["notes"])
    code, out, err = run_cli([mr_dicom, "--model", model_path, "--no-gate"], capsys)
    assert code == 0 and "[gate off: research use]" in out
    assert "intended-use gate off" in err


def test_png_passes_without_a_header(tmp_path, model_path, capsys):
    Image.fromarray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)).save(
        tmp_path / "a.png"
    )
    code, out, _ = run_cli([tmp_path / "a.png", "--model", model_path, "--json"], capsys)
    recs = jsonl(out)
    assert code == 0 and recs[0]["gate"] == NO_HEADER


def test_synthetic_trained_model_warns_on_every_answer(
    rsna_dicom, synthetic_model, model_path, capsys
):
    code, out, _ = run_cli([rsna_dicom, rsna_dicom, "--model", synthetic_model, "--json"], capsys)
    recs = jsonl(out)
    assert code == 0 and len(recs) == 2
    assert all("trained on synthetic phantoms" in r["warning"] for r in recs)
    code, out, err = run_cli([rsna_dicom, "--model", synthetic_model], capsys)
    assert "warning: this model was trained on synthetic phantoms" in err and "warning" not in out
    # a model file without provenance (older, or conftest's) gives no warning
    code, out, err = run_cli([rsna_dicom, "--model", model_path, "--json"], capsys)
    recs = jsonl(out)
    assert recs[0]["warning"] is None and "warning" not in err


# ----------------------------------------------------------------------------------------------
# The service


def test_service_gives_422_and_the_override(mr_dicom, rsna_dicom, synthetic_model):
    with TestClient(create_app(synthetic_model, threshold=0.5)) as client:
        r = client.post("/predict", files=_upload(mr_dicom))
        assert r.status_code == 422
        assert r.json()["refused"].startswith("Modality MR") and r.json()["file"] == mr_dicom.name
        assert client.post("/predict?cam=true", files=_upload(mr_dicom)).status_code == 422
        r = client.post("/predict?gate=false", files=_upload(mr_dicom))
        assert r.status_code == 200 and r.json()["gate"] == OFF
        r = client.post("/predict", files=_upload(rsna_dicom))
        assert r.status_code == 200 and r.json()["gate"] == PASSED
        assert "synthetic phantoms" in r.json()["warning"]
        health = client.get("/health").json()
        assert health["provenance"]["data_source"] == "synthetic" and health["warning"]


# ----------------------------------------------------------------------------------------------
# Provenance in the model file


def test_provenance_round_trips_and_old_files_load(tmp_path, torch_model_path):
    prov = training_provenance(
        "rsna", np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]), "abc.dir", {"lr": 0.001}
    )
    assert prov["train"] == {"n": 4, "positives": 2, "prevalence": 0.5}
    assert prov["val"]["prevalence"] == 0.25 and prov["params"] == {"train": {"lr": 0.001}}
    net = build_network("resnet18", pretrained=False, weights_path=None, last_stride=2)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    export_model(a, net, "resnet18", 32, "pad", 0.5, 0.25, provenance=prov)
    export_model(b, net, "resnet18", 32, "pad", 0.5, 0.25, provenance=prov)
    assert a.read_bytes() == b.read_bytes()  # no time, no commit: the same bytes
    assert load_exported(a).provenance == prov and provenance_warning(prov) is None
    # a file written before provenance existed has no key at all
    payload = torch.load(torch_model_path, weights_only=True)
    payload.pop("provenance")
    torch.save(payload, tmp_path / "old.pt")
    assert load_exported(tmp_path / "old.pt").provenance is None


def test_processed_hash_is_dvcs_directory_hash(tmp_path):
    data = tmp_path / "processed"
    (data / "sub").mkdir(parents=True)
    (data / "train.csv").write_text("patientId,target\na,1\n")
    (data / "sub" / "x.npy").write_bytes(bytes(range(256)) * 10)
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True
    )
    subprocess.run(
        [sys.executable, "-m", "dvc", "add", "-q", "processed"], cwd=tmp_path, check=True
    )
    import yaml

    expected = yaml.safe_load((tmp_path / "processed.dvc").read_text())["outs"][0]["md5"]
    assert dvc_dir_md5(data) == expected
