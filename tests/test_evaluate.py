"""The infer and evaluate stages: library calls and the real scripts on files in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import brier_score_loss, recall_score, roc_auc_score

from conftest import run_stage
from pneumo import split_inference as infer
from pneumo.calibration import fit_temperature
from pneumo.eval_checks import EvaluationError
from pneumo.eval_outputs import write_evaluation
from pneumo.evaluation import evaluate, read_predictions
from pneumo.layout import PREDICTION_COLUMNS
from pneumo.model import build_network, export_model, load_exported, predict_proba
from pneumo.runtime import apply_temperature

ROOT = Path(__file__).resolve().parents[1]
EVAL_PARAMS = {
    "thresholds": [0.5, 0.25],
    "target_sensitivity": 0.9,
    "bootstrap": 200,
    "seed": 0,
    "calibration_bins": 10,
    "age_bands": [0, 40, 60, 120],
    "batch_size": 8,
}


LO, NORMAL, NOT_NORMAL = "Lung Opacity", "Normal", "No Lung Opacity / Not Normal"


def _predictions(n: int, seed: int) -> pd.DataFrame:
    """Prediction rows with signal; AP films positive more often, as in RSNA."""
    rng = np.random.default_rng(seed)
    view = rng.choice(["PA", "AP", ""], n, p=[0.5, 0.45, 0.05])
    y = (rng.random(n) < np.where(view == "AP", 0.4, 0.1)).astype(int)
    # doubled: an over-confident network, which the temperature softens (T > 1)
    logit = 2 * (3.0 * (2 * y - 1) + rng.normal(0, 1.5, n) - 1)
    return pd.DataFrame(
        {
            "patientId": [f"{seed}-{i:04d}" for i in range(n)],
            "target": y,
            "prob": 1 / (1 + np.exp(-logit)),
            "logit": logit,
            "view": view,
            "sex": rng.choice(["M", "F", ""], n, p=[0.5, 0.45, 0.05]),
            "age": rng.choice(["23", "47", "70", "", "151"], n),
            "class": np.where(y == 1, LO, rng.choice([NORMAL, NOT_NORMAL], n)),
        }
    )


@pytest.fixture
def predictions(tmp_path: Path) -> Path:
    out = tmp_path / "data" / "predictions"
    out.mkdir(parents=True)
    _predictions(240, 1).to_csv(out / "val.csv", index=False)
    _predictions(260, 2).to_csv(out / "test.csv", index=False)
    return out


def _leaves(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str) and "." not in k, k  # dots would break dvc's flat keys
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], obj


def test_evaluate_writes_outputs(predictions: Path, tmp_path: Path):
    val, test = (
        read_predictions(predictions / "val.csv"),
        read_predictions(predictions / "test.csv"),
    )
    params = {k: v for k, v in EVAL_PARAMS.items() if k != "batch_size"}
    result = evaluate(val, test, **params)
    headline, detail = tmp_path / "metrics/eval.json", tmp_path / "data/detail/eval.json"
    write_evaluation(result, headline, detail, tmp_path / "plots/eval", tmp_path / "op.json")
    metrics = json.loads(detail.read_text())
    flat = dict(_leaves(metrics))
    # the headline: a handful of the detail's figures, under the same names
    short = dict(_leaves(json.loads(headline.read_text())))
    assert len(short) == 16 and all(short[k] == flat[k] for k in short), short
    assert {"test.auroc_lo", "test.op.recall", "test.t025.specificity", "test.ece"} <= set(short)
    assert {"test.uncalibrated.ece", "calibration.temperature"} <= set(short)
    # every figure is of the calibrated probabilities, sigmoid(logit / T); T was fitted on val
    temperature = metrics["calibration"]["temperature"]
    assert temperature == pytest.approx(fit_temperature(val.target, val.logit), rel=1e-5)
    assert temperature > 1.1  # the fixture doubled its logits: over-confident
    val = val.assign(prob=apply_temperature(val.logit, temperature))
    test = test.assign(prob=apply_temperature(test.logit, temperature))
    assert flat["test.brier"] == pytest.approx(brier_score_loss(test.target, test.prob), rel=1e-5)
    raw = read_predictions(predictions / "test.csv")
    before = brier_score_loss(raw.target, raw.prob)
    assert flat["test.uncalibrated.brier"] == pytest.approx(before, rel=1e-5)
    # T minimises val's log loss (T = 1 among the candidates); test's need not improve, and
    # the ECE of 260 cases in 10 bins is too noisy to compare
    assert flat["val.uncalibrated.logloss"] > flat["val.logloss"]
    assert not any(k.startswith("val.") or ".view." in k for k in short)
    for v in flat.values():
        assert v is None or isinstance(v, (int, float, bool, str))
    assert flat["test.auroc"] == pytest.approx(roc_auc_score(test.target, test.prob), abs=1e-5)
    for key in ("test.auroc_lo", "test.t050.recall", "test.t025.recall_hi", "test.op.threshold"):
        assert isinstance(flat[key], float), key
    for key in ("val.auroc", "val.op.recall", "test.view.AP.auroc", "test.sex.F.t050.recall"):
        assert key in flat, key
    # RSNA-like confounding: AP films are positive more often
    assert flat["test.view.AP.prevalence"] > flat["test.view.PA.prevalence"]
    # specificity among the negatives of each detailed class, against scikit-learn's
    by_class = metrics["test"]["negatives_by_class"]
    assert set(by_class) == {"normal", "not_normal"}
    for key, name in (("normal", NORMAL), ("not_normal", NOT_NORMAL)):
        neg = test[test["class"] == name]
        assert by_class[key]["class"] == name and by_class[key]["n"] == len(neg)
        for decision in ("t050", "op"):
            t = metrics["test"][decision]["threshold"]
            pred = (neg.prob >= t).astype(int)
            fp = int(pred.sum())
            assert by_class[key][decision]["fp"] == fp
            spec = recall_score(1 - neg.target, 1 - pred)  # specificity: recall of the negatives
            assert by_class[key][decision]["specificity"] == pytest.approx(spec, abs=1e-6)
    op = json.loads((tmp_path / "op.json").read_text())
    assert set(op) == {
        "threshold",
        "target_sensitivity",
        "method",
        "threshold_lo",
        "threshold_hi",
        "n_val_positives",
        "youden_threshold",
        "temperature",
        "model_sha256",
    }
    assert op["temperature"] == pytest.approx(temperature, rel=1e-5) and op["model_sha256"] is None
    assert op["threshold_lo"] <= op["threshold"] <= op["threshold_hi"]
    assert flat["test.op.threshold_lo"] == pytest.approx(op["threshold_lo"], rel=1e-5)
    assert op["method"] == "target_sensitivity" and 0 < op["threshold"] < 1
    on_val = (val.prob >= op["threshold"])[val.target == 1].mean()
    assert on_val >= 0.9
    plots = {
        p.relative_to(tmp_path / "plots/eval").as_posix()
        for p in (tmp_path / "plots/eval").rglob("*.*")
    }
    assert plots == {
        *(
            f"{kind}_{s}.csv"
            for kind in ("roc", "pr", "calibration", "threshold")
            for s in ("val", "test")
        ),
        "calibration_val_uncalibrated.csv",
        "calibration_test_uncalibrated.csv",
        *(f"confusion/{k}.json" for k in ("t050", "t025", "op", "youden")),
        "calibration_ideal.csv",
    }
    rows = json.loads((tmp_path / "plots/eval/confusion/op.json").read_text())
    assert len(rows) == len(test) and set(rows[0]) == {"actual", "predicted"}
    roc = pd.read_csv(tmp_path / "plots/eval/roc_test.csv")
    assert list(roc.columns) == ["fpr", "tpr", "threshold"] and np.isfinite(roc.threshold).all()


def test_evaluate_script(predictions: Path, tmp_path: Path):
    """The stage as dvc runs it: `python src/evaluate.py` from a repo root with params.yaml."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": EVAL_PARAMS}))
    run = run_stage("evaluate.py", tmp_path)
    assert run.returncode == 0, run.stderr
    assert "test AUROC" in run.stdout
    metrics = json.loads((tmp_path / "data/detail/eval.json").read_text())
    assert metrics["test"]["op"]["target"] == 0.9
    assert "val" not in json.loads((tmp_path / "metrics/eval.json").read_text())
    op = json.loads((tmp_path / "data/operating_point.json").read_text())
    assert op["threshold"] == pytest.approx(metrics["val"]["op"]["threshold"], rel=1e-5)
    assert not list(tmp_path.rglob("*.tmp"))


def test_bad_predictions_name_the_file_and_line(tmp_path: Path):
    df = _predictions(20, 3)
    df.loc[5, "prob"] = np.nan
    df.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(EvaluationError, match=r"nan\.csv: line 7 \(patientId 3-0005\): prob"):
        read_predictions(tmp_path / "nan.csv")
    df = _predictions(20, 3)
    df.loc[2, "target"] = 3
    df.to_csv(tmp_path / "target.csv", index=False)
    with pytest.raises(EvaluationError, match=r"line 4 .*target '3' is not 0 or 1"):
        read_predictions(tmp_path / "target.csv")
    _predictions(5, 3).drop(columns="prob").to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(EvaluationError, match="missing column"):
        read_predictions(tmp_path / "cols.csv")


# ----------------------------------------------------------------------------------------------
# infer


def _processed(root: Path, size: int, resize_mode: str = "pad") -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("val", 5), ("test", 7)):
        np.save(root / f"{split}.npy", rng.integers(0, 256, (n, size, size), dtype=np.uint8))
        pd.DataFrame(
            {
                "patientId": [f"{split}{i}" for i in range(n)],
                "groupId": [f"g{split}{i}" for i in range(n)],
                "target": [i % 2 for i in range(n)],
                "class": ["Lung Opacity", "Normal"] * (n // 2) + ["Normal"] * (n % 2),
                "view": ["PA", "AP", ""] * (n // 3) + ["PA"] * (n % 3),
                "sex": ["M", "", "F"] * (n // 3) + ["F"] * (n % 3),
                "age": ["34", "", "151"] * (n // 3) + ["60"] * (n % 3),
                "boxes": ["[]"] * n,
            }
        ).to_csv(root / f"{split}.csv", index=False)
    stats = {"mean": 0.5, "std": 0.25, "image_size": size, "resize_mode": resize_mode, "n_train": 9}
    (root / "stats.json").write_text(json.dumps(stats))
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    export_model(
        path,
        build_network("resnet18", pretrained=False, weights_path=None, last_stride=2),
        "resnet18",
        32,
        "pad",
        mean=0.45,
        std=0.2,
    )
    return path


def test_infer_matches_predict_proba(model_file: Path, tmp_path: Path):
    processed = _processed(tmp_path / "processed", 32)
    out = tmp_path / "predictions"
    infer.run(model_file, processed, out, batch_size=3)
    model = load_exported(model_file)
    for split in ("val", "test"):
        got = read_predictions(out / f"{split}.csv")
        raw = pd.read_csv(out / f"{split}.csv", dtype=str, keep_default_na=False)
        assert list(raw.columns) == list(PREDICTION_COLUMNS)
        index = pd.read_csv(processed / f"{split}.csv", dtype=str, keep_default_na=False)
        for col in ("patientId", "view", "sex", "age", "class"):  # passed through, in order
            assert raw[col].tolist() == index[col].tolist(), col
        images = np.load(processed / f"{split}.npy")
        expected = predict_proba(model.net, images, model.mean, model.std, batch_size=3)
        np.testing.assert_allclose(got.prob.to_numpy(), expected, rtol=0, atol=1e-12)
        # the logit is the prob's float32 input, stored exactly
        assert np.array_equal(got.logit.to_numpy(), got.logit.to_numpy().astype(np.float32))
        np.testing.assert_allclose(apply_temperature(got.logit, 1.0), expected, atol=1e-12)
    made_by = json.loads((out / "model.json").read_text())
    assert made_by == {"sha256": model.sha256}
    assert not (tmp_path / "predictions.tmp").exists()


def test_infer_image_size_mismatch(model_file: Path, tmp_path: Path):
    processed = _processed(tmp_path / "processed", 16)
    with pytest.raises(ValueError, match=r"shape \(16, 16\) but the model expects \(32, 32\)"):
        infer.run(model_file, processed, tmp_path / "predictions", batch_size=4)
    assert not (tmp_path / "predictions").exists()


def test_infer_resize_mode_mismatch(model_file: Path, tmp_path: Path):
    processed = _processed(tmp_path / "processed", 32, resize_mode="crop")
    with pytest.raises(ValueError, match="resize_mode 'crop'.*'pad'"):
        infer.run(model_file, processed, tmp_path / "predictions", batch_size=4)


def test_infer_then_evaluate_scripts(model_file: Path, tmp_path: Path):
    """Both stages as dvc runs them, from a repo root holding the model and processed arrays."""
    _processed(tmp_path / "data" / "processed", 32)
    (tmp_path / "data" / "model").mkdir()
    (tmp_path / "data" / "model" / "model.pt").write_bytes(model_file.read_bytes())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": EVAL_PARAMS}))
    for script in ("infer.py", "evaluate.py"):
        run = run_stage(script, tmp_path)
        assert run.returncode == 0, f"{script}: {run.stderr}"
    test = read_predictions(tmp_path / "data/predictions/test.csv")
    assert test.patientId.tolist() == [f"test{i}" for i in range(7)]
    metrics = json.loads((tmp_path / "data/detail/eval.json").read_text())
    assert metrics["test"]["n"] == 7 and metrics["val"]["n"] == 5
    op = json.loads((tmp_path / "data/operating_point.json").read_text())
    # the temperature is fitted for this model.pt, which prediction checks before applying it
    assert op["model_sha256"] == load_exported(model_file).sha256 and op["temperature"] > 0
    calibration = json.loads((tmp_path / "data/calibration.json").read_text())
    assert calibration == {"temperature": op["temperature"], "model_sha256": op["model_sha256"]}
