"""Cross-validation: the fold assignment (grouped, stratified, deterministic), a fold's data, and
the aggregate of the folds (mean and sd, the ensemble) against numpy and scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pneumo.cv.ensemble import aggregate, cv_headline, error_by_uncertainty
from pneumo.cv.folds import assign_folds, pooled_index, write_fold_data
from pneumo.runtime import apply_temperature

EVAL = {"thresholds": [0.5], "target_sensitivity": 0.9, "bootstrap": 100, "seed": 0}


def _index(n_groups: int, seed: int) -> pd.DataFrame:
    """Rows of patient groups of 1-3 images, 25 % positive, views PA/AP, RSNA-like."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_groups)
    group = np.repeat(np.arange(n_groups), sizes)
    target = np.repeat((rng.random(n_groups) < 0.25).astype(int), sizes)
    view = np.repeat(rng.choice(["PA", "AP"], n_groups), sizes)
    return pd.DataFrame(
        {
            "patientId": [f"p{i}" for i in range(len(group))],
            "groupId": [f"g{g}" for g in group],
            "target": target,
            "view": view,
        }
    )


@pytest.mark.parametrize("k", [3, 5])
def test_folds_are_grouped_stratified_and_deterministic(k):
    index = _index(600, seed=k)
    folds = assign_folds(index, k, seed=0)
    assert sorted(np.unique(folds)) == list(range(k))
    # no patient group in two folds
    assert (index.assign(fold=folds).groupby("groupId")["fold"].nunique() == 1).all()
    # strata balanced: each fold's share of every target x view stratum near 1/k
    share = pd.crosstab([index["target"], index["view"]], folds, normalize="index")
    assert np.abs(share.to_numpy() - 1 / k).max() < 0.05, share
    assert np.abs(np.bincount(folds) / len(folds) - 1 / k).max() < 0.03
    # the same rows give the same folds; another seed others
    assert np.array_equal(assign_folds(index, k, seed=0), folds)
    assert not np.array_equal(assign_folds(index, k, seed=1), folds)
    with pytest.raises(ValueError, match="at least 2 folds"):
        assign_folds(index, 1, seed=0)


def test_fold_data_divides_train_and_val_and_leaves_test(tmp_path):
    processed = tmp_path / "processed"
    processed.mkdir()
    index = _index(60, seed=1)
    n = len(index)
    images = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    cut = n * 2 // 3  # the first rows are the train split, the rest val
    for split, rows in (("train", slice(0, cut)), ("val", slice(cut, n)), ("test", slice(0, 5))):
        index.iloc[rows].to_csv(processed / f"{split}.csv", index=False)
        np.save(processed / f"{split}.npy", images[rows])
    (processed / "stats.json").write_text(json.dumps({"mean": 0.5, "std": 0.25}))
    seen = []
    for fold in range(3):
        out = tmp_path / f"fold{fold}"
        write_fold_data(processed, out, fold, 3, seed=0)
        tr, va = (pd.read_csv(out / f"{s}.csv", dtype=str) for s in ("train", "val"))
        assert set(tr.groupId).isdisjoint(va.groupId)
        assert sorted([*tr.patientId, *va.patientId]) == sorted(index.patientId)
        for s, df in (("train", tr), ("val", va)):  # each image is its row's (pixel = row)
            pixels = np.load(out / f"{s}.npy")[:, 0, 0]
            assert pixels.tolist() == [int(p[1:]) for p in df.patientId], s
        assert (out / "stats.json").read_text() == (processed / "stats.json").read_text()
        assert not (out / "test.npy").exists()
        seen += va.patientId.tolist()
    assert sorted(seen) == sorted(index.patientId)  # every image validated exactly once
    assert pooled_index(processed)["split"].tolist() == ["train"] * cut + ["val"] * (n - cut)


def _fold_predictions(k: int, seed: int) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    rng = np.random.default_rng(seed)
    y_test = (rng.random(200) < 0.3).astype(int)
    folds = []
    for f in range(k):
        y_val = (rng.random(150) < 0.3).astype(int)
        scale = 1.5 + f  # each fold differently over-confident
        frames = []
        for y in (y_val, y_test):
            logit = scale * (2.0 * (2 * y - 1) + rng.normal(0, 1.5, len(y)))
            frames.append(pd.DataFrame({"target": y, "logit": logit}))
        folds.append(tuple(frames))
    return folds


def test_aggregate_is_the_mean_and_sd_of_the_folds_and_the_ensemble_is_their_mean():
    folds = _fold_predictions(3, seed=2)
    detail = aggregate(folds, calibration_bins=10, **EVAL)
    per_fold = detail["per_fold"]
    aurocs = [roc_auc_score(v.target, v.logit) for v, _ in folds]
    np.testing.assert_allclose([f["auroc"] for f in per_fold], aurocs, rtol=1e-5)
    assert detail["val"]["auroc"]["mean"] == pytest.approx(np.mean(aurocs), rel=1e-5)
    assert detail["val"]["auroc"]["sd"] == pytest.approx(np.std(aurocs, ddof=1), rel=1e-4)
    temps = [f["temperature"] for f in per_fold]
    assert temps == sorted(temps)  # the more over-confident a fold, the higher its T
    calibrated = [
        apply_temperature(t.logit, f["temperature"])
        for (_, t), f in zip(folds, per_fold, strict=True)
    ]
    ens = np.mean(calibrated, axis=0)
    test = detail["ensemble"]["test"]
    y = folds[0][1].target
    assert test["auroc"] == pytest.approx(roc_auc_score(y, ens), abs=2e-5)
    assert test["auroc_lo"] <= test["auroc"] <= test["auroc_hi"]
    assert test["n"] == len(y) and "op" in test and "t050" in test
    bins = detail["ensemble"]["error_by_sd"]
    assert sum(b["n"] for b in bins) == len(y) and len(bins) == 3
    assert all(a["sd_hi"] <= b["sd_lo"] for a, b in zip(bins, bins[1:], strict=False))
    headline = cv_headline(detail)
    assert headline["folds"] == 3 and set(headline["val"]) == {"auroc", "auprc", "brier", "ece"}
    assert set(headline["ensemble"]["test"]["op"]) == {"threshold", "recall", "specificity"}


def test_the_error_rate_by_uncertainty_counts_the_wrong_decisions_per_sd_bin():
    y = np.array([1, 0, 1, 0, 1, 0])
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.6, 0.4])  # wrong: rows 2 and 3, at 0.5
    sd = np.array([0.01, 0.02, 0.30, 0.25, 0.10, 0.12])
    bins = error_by_uncertainty(y, p, sd, 0.5)
    assert [b["n"] for b in bins] == [2, 2, 2]
    assert [b["error_rate"] for b in bins] == [0.0, 0.0, 1.0]
    assert bins[0]["sd_lo"] == 0.01 and bins[2]["sd_hi"] == 0.30


@pytest.mark.parametrize(
    ("folds", "ids", "ensemble", "ok"),
    [
        (1, [], [], True),
        (3, [0, 1, 2], ["mean"], True),
        (3, [], [], False),  # -S cv.folds=3 alone: the matrix would be empty
        (3, [0, 1], ["mean"], False),
        (1, [0], ["mean"], False),
    ],
)
def test_the_fold_lists_must_match_cv_folds(folds, ids, ensemble, ok):
    from pydantic import ValidationError

    from pneumo.params import CvParams

    raw = {"folds": folds, "fold_ids": ids, "ensemble": ensemble, "seed": 0}
    if ok:
        assert CvParams(**raw).fold_ids == ids
    else:
        with pytest.raises(ValidationError, match=r"cv.fold_ids=\[.*\]' -S 'cv.ensemble="):
            CvParams(**raw)
