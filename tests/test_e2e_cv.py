"""End to end, cross-validation: `dvc exp run -S cv.folds=3 ...` on the tiny profile with the
real dvc CLI, in a temporary git repository; run again, every fold comes from the run-cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from test_e2e_dvc import commit, dvc, ran_stages, run, tiny_project

pytestmark = pytest.mark.e2e

FOLDS = 3
CV = ["-S", f"cv.folds={FOLDS}", "-S", "cv.fold_ids=[0,1,2]", "-S", "cv.ensemble=[mean]"]
FOLD_STAGES = {f"cv_fold@{f}" for f in range(FOLDS)}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project in a fresh git + dvc repository with the tiny profile (one fold)."""
    repo = tiny_project(tmp_path_factory.mktemp("e2e-cv") / "project")
    commit(repo, "tiny profile")
    return repo


def test_one_fold_has_no_cv_stage(repo: Path) -> None:
    stages = dvc(repo, "stage", "list", "--name-only").stdout.split()
    assert not [s for s in stages if s.startswith("cv_")], stages
    assert {"train", "evaluate", "export"} <= set(stages)


def test_three_folds_then_the_run_cache(repo: Path) -> None:
    first = dvc(repo, "exp", "run", *CV).stdout
    ran = ran_stages(first)
    assert FOLD_STAGES | {"cv_aggregate@mean", "train", "evaluate"} <= ran, ran
    headline = json.loads((repo / "metrics/cv.json").read_text())
    assert headline["folds"] == FOLDS
    for key in ("auroc", "auprc", "brier", "ece"):
        assert set(headline["val"][key]) == {"mean", "sd"}, key
    test = headline["ensemble"]["test"]
    assert test["auroc_lo"] <= test["auroc"] <= test["auroc_hi"] and 0 <= test["ece"] <= 1
    detail = json.loads((repo / "data/detail/cv.json").read_text())
    assert len(detail["per_fold"]) == FOLDS and detail["ensemble"]["method"] == "mean"
    n_val = sum(f["n_val"] for f in detail["per_fold"])
    pooled = sum(
        len((repo / f"data/processed/{s}.csv").read_text().splitlines()) - 1
        for s in ("train", "val")
    )
    assert n_val == pooled  # every train and val image validated by exactly one fold
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in FOLD_STAGES:  # each fold's model is a DVC-tracked output
        assert lock[stage]["outs"][0]["path"] == f"data/cv/fold{stage[-1]}", lock[stage]
        assert (repo / f"data/cv/fold{stage[-1]}/model.pt").is_file()
    # the folds' ensemble predicts a file: the mean probability and the members' sd
    dcm = sorted((repo / "data/raw/stage_2_train_images").glob("*.dcm"))[0]
    out = run(repo, sys.executable, "src/predict.py", str(dcm), "--model", "data/cv", "--json")
    rec = json.loads(out.stdout)
    assert rec["model"]["members"] == FOLDS and rec["prob_sd"] > 0
    assert rec["threshold_source"].startswith("data/cv_operating_point.json")
    # `dvc exp show` carries the cv keys beside the single model's
    shown = dvc(repo, "exp", "show", "--json").stdout
    assert "ensemble.test.auroc" in shown or '"ensemble"' in shown

    # the same experiment again from the committed state: every fold restored, none trained
    run(repo, "git", "checkout", "--", "params.yaml")
    run(repo, "git", "clean", "-fdxq", "-e", ".dvc")  # the outputs and dvc.lock go
    second = dvc(repo, "exp", "run", *CV).stdout
    assert not ran_stages(second) & (FOLD_STAGES | {"train"}), ran_stages(second)
    for stage in FOLD_STAGES:
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in second, second
    assert json.loads((repo / "metrics/cv.json").read_text()) == headline
