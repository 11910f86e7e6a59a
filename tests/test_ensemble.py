"""Prediction with the cross-validation folds' ensemble: a folder of fold models gives the mean
of the members' calibrated probabilities and their sd; one model gives no sd at all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import predict as predict_script
from conftest import TINY_MODEL_SIZE
from pneumo.deployment import UsageError, load_model
from pneumo.imaging import load_for_model
from pneumo.model import build_network, export_model, load_exported, predict_logits
from pneumo.runtime import apply_temperature

TEMPERATURES = (0.7, 1.0, 2.0)


def _member(root: Path, fold: int, size: int = TINY_MODEL_SIZE) -> Path:
    import torch

    torch.manual_seed(fold)  # members differ, as fold models do
    d = root / f"fold{fold}"
    d.mkdir(parents=True)
    net = build_network("resnet18", pretrained=False, weights_path=None, last_stride=2)
    export_model(d / "model.pt", net, "resnet18", size, "pad", 0.45, 0.25)
    sha = load_exported(d / "model.pt").sha256
    calibration = {"temperature": TEMPERATURES[fold], "model_sha256": sha}
    (d / "calibration.json").write_text(json.dumps(calibration))
    return d


@pytest.fixture(scope="module")
def folds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cv")
    for fold in range(3):
        _member(root, fold)
    (root / "fold_notes").mkdir()  # not a fold: ignored
    return root


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        pixels = (rng.random((80, 70)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"x{i}.png")
        paths.append(root / f"x{i}.png")
    return paths


def test_the_ensemble_is_the_mean_of_calibrated_members_with_their_sd(folds, pngs, capsys):
    images = np.stack([load_for_model(p, TINY_MODEL_SIZE, "pad") for p in pngs])
    members = []
    for fold in range(3):
        m = load_exported(folds / f"fold{fold}" / "model.pt")
        logits = predict_logits(m.net, images, m.mean, m.std, 4)
        members.append(apply_temperature(logits, TEMPERATURES[fold]))
    members = np.array(members)
    assert np.ptp(members, axis=0).min() > 1e-3  # the members disagree: the sd can be checked
    op = folds / "op.json"
    op.write_text(json.dumps({"threshold": 0.5}))
    argv = [*map(str, pngs), "--model", str(folds), "--operating-point", str(op)]
    assert predict_script.main([*argv, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose([r["prob"] for r in records], members.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose([r["prob_sd"] for r in records], members.std(axis=0), atol=1e-6)
    assert {r["model"]["members"] for r in records} == {3}
    assert {r["model"]["runtime"] for r in records} == {"torch"}
    # and as text: p +- sd
    assert predict_script.main(argv) == 0
    assert capsys.readouterr().out.count(" +- ") == len(pngs)


def test_one_model_reports_no_uncertainty(folds, pngs, capsys):
    argv = [
        str(pngs[0]),
        "--model",
        str(folds / "fold0" / "model.pt"),
        "--json",
        "--threshold",
        "0.5",
    ]
    assert predict_script.main(argv) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["prob_sd"] is None and rec["model"]["members"] == 1


def test_an_ensemble_needs_members_that_read_the_same_input(tmp_path):
    _member(tmp_path, 0)
    with pytest.raises(UsageError, match="an ensemble needs 2 or more"):
        load_model(tmp_path)
    _member(tmp_path, 1, size=TINY_MODEL_SIZE // 2)
    with pytest.raises(UsageError, match="differ in image_size"):
        load_model(tmp_path)
    with pytest.raises(UsageError, match="torch runtime runs it"):
        load_model(tmp_path, "onnxruntime")
