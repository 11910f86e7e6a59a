"""The model card: every figure it prints is read back from the Markdown and compared with the
stage outputs it was made from; the card stage as dvc runs it (figures, summary, same bytes)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_stage
from pneumo.atomic import write_json
from pneumo.cam.analysis import summarize as cam_summary
from pneumo.cam.gallery import GROUPS, Tile, render_gallery
from pneumo.card_format import CardInputs
from pneumo.eval_outputs import write_evaluation
from pneumo.evaluation import evaluate
from pneumo.headline import MAX_KEYS, flat_keys
from pneumo.labels.summary import summarize as split_summary
from pneumo.model import build_network, export_model
from pneumo.model_card import closing_summary, render_card
from pneumo.training.outputs import training_summary
from test_evaluate import EVAL_PARAMS

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")
LO, NORMAL, NOT_NORMAL = "Lung Opacity", "Normal", "No Lung Opacity / Not Normal"
EVAL = {k: v for k, v in EVAL_PARAMS.items() if k != "batch_size"}


def _predictions(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    cls = np.where(y == 1, LO, rng.choice([NORMAL, NOT_NORMAL], n))
    # "Not Normal" negatives score higher: the shortcut the per-class specificity shows
    logit = 3.0 * (2 * y - 1) + 1.5 * (cls == NOT_NORMAL) + rng.normal(0, 1.5, n) - 1
    return pd.DataFrame(
        {
            "patientId": [f"{seed}-{i}" for i in range(n)],
            "target": y,
            "prob": 1 / (1 + np.exp(-logit)),
            "logit": logit,
            "view": rng.choice(["PA", "AP"], n),
            "sex": rng.choice(["M", "F"], n),
            "age": rng.choice(["23", "47", "70"], n),
            "class": cls,
        }
    )


def _split_detail() -> dict:
    rng = np.random.default_rng(1)
    parts = {}
    for name, n in (("train", 60), ("val", 20), ("test", 20)):
        y = (rng.random(n) < 0.3).astype(int)
        parts[name] = pd.DataFrame(
            {
                "groupId": [f"{name}{i}" for i in range(n)],
                "target": y,
                "class": np.where(y == 1, LO, NORMAL),
                "view": rng.choice(["PA", "AP"], n),
                "boxes": np.where(y == 1, "[[1, 2, 3, 4]]", "[]"),
            }
        )
    return split_summary(parts, {"impossible_age": 0})


def _cam_detail() -> dict:
    rng = np.random.default_rng(2)
    per_image = {
        f"{p}.{k}": list(rng.random(12))
        for p in ("cam", "baseline")
        for k in ("pointing", "iou", "dice", "mass")
    }
    per_image["random_corr"] = list(rng.uniform(-1, 1, 12))
    per_image |= {f"{p}.miou_gated": list(rng.random(40)) for p in ("cam", "baseline")}
    scores = {k: float(np.mean(per_image[f"cam.{k}"])) for k in ("pointing", "iou", "dice", "mass")}
    return {
        "method": "cam",
        "stitch": 4,
        "map_threshold": 0.6,
        "baseline.map_threshold": 0.5,
        "gate": 0.7,
        "baseline.gate": 0.6,
        "n_gated_images": 40,
        "methods": {
            m: {"map_threshold": 0.6, "val_iou": 0.3, **scores} for m in ("cam", "gradcam")
        },
        "pointing_tolerance_px": 4.3,
        "decision_threshold": 0.7,
        **cam_summary(per_image, 12, bootstrap=50, seed=0),
    }


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """A repository root holding every input of the card stage, made by the stages' own code."""
    root = tmp_path_factory.mktemp("card")
    result = evaluate(_predictions(200, 1), _predictions(240, 2), **EVAL)
    detail = root / "data/detail"
    write_evaluation(
        result,
        root / "metrics/eval.json",
        detail / "eval.json",
        root / "plots/eval",
        root / "data/operating_point.json",
    )
    write_json(detail / "split.json", _split_detail())
    write_json(detail / "cam.json", _cam_detail())
    epochs = [{"epoch": e, "val/auroc": a, "val/loss": 0.5} for e, a in ((1, 0.8), (2, 0.9))]
    write_json(detail / "train.json", training_summary(epochs, val_images=20, max_epochs=2))
    write_json(
        root / "metrics/export.json",
        {
            "onnx": {
                "max_abs_prob_diff": 3.1e-7,
                "ood_test_flagged": 0.013,
                "ood_auroc_generated": 0.997,
            }
        },
    )
    torch.manual_seed(0)
    net = build_network("resnet18", pretrained=False, weights_path=None, last_stride=1)
    provenance = {
        "data_source": "synthetic",
        "data_processed_md5": "abc.dir",
        "params": {"train": {"lr": 0.001, "batch_size": 32, "augment": {"hflip": False}}},
    }
    export_model(
        root / "data/model/model.pt", net, "resnet18", 32, "pad", 0.44, 0.25, provenance=provenance
    )
    (root / "data/export").mkdir(parents=True)
    (root / "data/export/model.onnx").write_bytes(b"not really onnx, only hashed")
    rng = np.random.default_rng(3)
    tile = Tile(
        rng.integers(0, 256, (32, 32), dtype=np.uint8),
        rng.random((32, 32)),
        np.array([[4.0, 4.0, 10.0, 12.0]]),
        "a caption",
    )
    for group in GROUPS:
        render_gallery(root / "plots/cam" / f"{group}.png", group, [tile] * 3, alpha=0.4)
    return root


def _rows(md: str, label: str) -> list[list[float]]:
    """Numbers of each cell after the first, in the table row whose first cell is ``label``."""
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == label:
            return [[float(x) for x in NUMBER.findall(c)] for c in cells[1:]]
    raise AssertionError(f"no table row {label!r} in the card")


def _close(got: list[float], *want: float | None, digits: int = 3) -> None:
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(round(w, digits), abs=10**-digits / 2 + 1e-9), (got, want)


def _card_of(root: Path) -> tuple[str, CardInputs]:
    from pneumo.card_inputs import read_card_inputs

    figures = {"roc": "figures/roc.png", "calibration": "figures/calibration.png"}
    inputs = read_card_inputs(
        root / "data/model/model.pt",
        root / "data/export/model.onnx",
        root / "data/detail",
        root / "metrics/export.json",
        figures,
    )
    return render_card(inputs), inputs


def test_every_figure_of_the_card_is_the_detail_files(outputs: Path) -> None:
    md, inputs = _card_of(outputs)
    detail = json.loads((outputs / "data/detail/eval.json").read_text())
    test, val = detail["test"], detail["val"]
    _close(_rows(md, "AUROC [95 % CI]")[0], test["auroc"], test["auroc_lo"], test["auroc_hi"])
    _close(_rows(md, "AUROC [95 % CI]")[1], val["auroc"], val["auroc_lo"], val["auroc_hi"])
    for label, key in (
        ("AUPRC", "auprc"),
        ("Brier score", "brier"),
        ("ECE (calibration error)", "ece"),
        ("log loss", "logloss"),
    ):
        _close([x for cell in _rows(md, label) for x in cell], test[key], val[key])
    for label, key in (
        ("fixed 0.50", "t050"),
        ("fixed 0.25", "t025"),
        ("operating point (val sensitivity >= 0.90)", "op"),
    ):
        b = test[key]
        cells = _rows(md, label)
        _close(cells[0], b["threshold"])
        _close(cells[1], b["recall"], b["recall_lo"], b["recall_hi"])
        _close(cells[2], b["specificity"], b["specificity_lo"], b["specificity_hi"])
        _close(cells[3] + cells[4], b["precision"], b["npv"])
        assert [c[0] for c in cells[5:]] == [b["tp"], b["fp"], b["tn"], b["fn"]]
    for attr, label in (("view", "view"), ("sex", "sex"), ("age", "age band")):
        for level, g in test[attr].items():
            cells = _rows(md, f"{label} {level}")
            assert cells[0] == [g["n"]] and cells[1] == [g["positives"]]
            _close(
                cells[2] + cells[3] + cells[4],
                g["auroc"],
                g["op"]["recall"],
                g["op"]["specificity"],
            )
    by_class = test["negatives_by_class"]
    assert by_class["not_normal"]["op"]["specificity"] < by_class["normal"]["op"]["specificity"]
    for block in by_class.values():
        cells = _rows(md, block["class"])
        assert cells[0] == [block["n"]]
        for cell, key in zip(cells[1:], ("t050", "t025", "op", "youden"), strict=True):
            _close(cell, block[key]["specificity"], block[key]["fp"])
    cam = inputs.cam
    for key, label in (("pointing", "pointing game (hit rate)"), ("iou", "IoU with the boxes")):
        model, baseline = _rows(md, label)
        _close(model, cam[f"cam.{key}"], cam[f"cam.{key}_lo"], cam[f"cam.{key}_hi"])
        _close(
            baseline, cam[f"baseline.{key}"], cam[f"baseline.{key}_lo"], cam[f"baseline.{key}_hi"]
        )
    diff, same = _rows(md, "onnx")  # its test AUROC is evaluate's, above
    assert diff == [pytest.approx(3.1e-7)] and same == []
    export = json.loads((outputs / "metrics/export.json").read_text())["onnx"]
    ood = re.search(r"(\S+) of the test split is flagged.*AUROC (\S+)\. A flagged", md, re.S)
    assert [float(x) for x in ood.groups()] == [
        export["ood_test_flagged"],
        export["ood_auroc_generated"],
    ]
    split = inputs.split
    for name in ("train", "val", "test"):
        cells = _rows(md, name)
        assert [c[0] for c in cells[:3]] == [split[name][k] for k in ("n", "groups", "positive")]
    sha = hashlib.sha256((outputs / "data/model/model.pt").read_bytes()).hexdigest()
    onnx = hashlib.sha256((outputs / "data/export/model.onnx").read_bytes()).hexdigest()
    assert f"`{sha[:12]}`" in md and f"`{onnx[:12]}`" in md
    assert "**Not a clinical model.**" in md and "**synthetic" in md


def test_a_card_of_real_data_does_not_say_synthetic(outputs: Path) -> None:
    md, inputs = _card_of(outputs)
    real = CardInputs(**{**inputs.__dict__, "provenance": {"data_source": "rsna"}})
    md = render_card(real)
    assert "synthetic" not in md.lower() and "**Not a clinical model.**" in md
    assert "RSNA Pneumonia Detection Challenge" in md
    summary = closing_summary(real, "reports/model_card.md", ["plots/cam/"])
    assert "trained on rsna data" in summary and "reports/model_card.md" in summary


def test_card_stage_script(outputs: Path) -> None:
    """python src/card.py as dvc runs it: the card, its PNGs, the closing summary, same bytes."""
    first = run_stage("card.py", outputs, timeout=300)
    assert first.returncode == 0, first.stderr
    card = (outputs / "reports/model_card.md").read_text()
    figures = sorted(p.name for p in (outputs / "reports/figures").iterdir())
    assert figures == ["calibration.png", "cam_fn.png", "cam_fp.png", "cam_tp.png", "roc.png"]
    for name in figures:  # every figure is embedded, by a path relative to the card
        assert f"(figures/{name})" in card, name
    assert "model card: reports/model_card.md" in first.stdout and "test AUROC" in first.stdout
    before = {p: p.read_bytes() for p in (outputs / "reports").rglob("*") if p.is_file()}
    again = run_stage("card.py", outputs, timeout=300)
    assert again.returncode == 0, again.stderr
    assert {p: p.read_bytes() for p in before} == before  # no date, no timing in any byte
    headline = json.loads((outputs / "metrics/eval.json").read_text())
    assert len(flat_keys(headline)) == 16


CARD, METRICS = ROOT / "reports" / "model_card.md", ROOT / "metrics"


@pytest.mark.skipif(not CARD.is_file(), reason="reports/model_card.md not generated yet")
def test_the_committed_card_agrees_with_the_committed_metrics() -> None:
    """The card and metrics/ come from one `dvc repro`: their shared figures must be equal."""
    md = CARD.read_text()
    ev = json.loads((METRICS / "eval.json").read_text())["test"]
    cam = json.loads((METRICS / "cam.json").read_text())
    _close(_rows(md, "AUROC [95 % CI]")[0], ev["auroc"], ev["auroc_lo"], ev["auroc_hi"])
    _close(_rows(md, "ECE (calibration error)")[0], ev["ece"])
    op = _rows(md, "operating point (val sensitivity >= 0.90)")
    _close(op[0], ev["op"]["threshold"])
    assert op[1][0] == pytest.approx(ev["op"]["recall"], abs=5e-4)
    assert op[2][0] == pytest.approx(ev["op"]["specificity"], abs=5e-4)
    for key, label in (("pointing", "pointing game (hit rate)"), ("iou", "IoU with the boxes")):
        model, baseline = _rows(md, label)
        assert model[0] == pytest.approx(cam[f"cam.{key}"], abs=5e-4)
        assert baseline[0] == pytest.approx(cam[f"baseline.{key}"], abs=5e-4)


def test_the_headline_metrics_fit_the_budget() -> None:
    """`dvc metrics show` on the committed metrics/: at most MAX_KEYS keys in all."""
    files = [METRICS / f"{n}.json" for n in ("train", "eval", "cam", "export")]
    keys = [k for f in files if f.is_file() for k in flat_keys(json.loads(f.read_text()))]
    if "last" in json.loads((METRICS / "train.json").read_text()):
        pytest.skip("metrics/ still from before the headline split (the lead's repro makes it)")
    assert len(keys) <= MAX_KEYS, keys
