"""The evaluation modules (scores, operating_point, bootstrap, subgroups, evaluation): known
answers computed by hand, constructed cases, and scikit-learn where our own code remains."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from pneumo import bootstrap, scores, subgroups
from pneumo import operating_point as opp
from pneumo.calibration import fit_temperature
from pneumo.eval_checks import EvaluationError, check_thresholds, threshold_key
from pneumo.eval_outputs import Evaluation, plot_data, round_floats
from pneumo.evaluation import evaluate
from pneumo.runtime import apply_temperature


def _data(kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng({"smooth": 0, "ties": 1, "extremes": 2, "imbalanced": 3}[kind])
    n = 300
    y = (rng.random(n) < (0.08 if kind == "imbalanced" else 0.4)).astype(int)
    p = 1.0 / (1.0 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(0, 1.3, n))))
    if kind == "ties":  # few distinct scores: ties inside and across classes
        p = np.round(p, 1)
    if kind == "extremes":  # exact 0 and 1 exercise log-loss clipping and the last bin
        p[:10], p[10:20] = 0.0, 1.0
    return y, p


KINDS = ["smooth", "ties", "extremes", "imbalanced"]


def _pairwise_auc(y, p):
    """AUROC by its definition: the share of (positive, negative) pairs ranked right, ties 1/2."""
    pos = [b for a, b in zip(y, p, strict=True) if a == 1]
    neg = [b for a, b in zip(y, p, strict=True) if a == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


# ----------------------------------------------------------------------------------------------
# Threshold-free scores: hand computations


def test_threshold_free_by_hand():
    y, p = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    tf = scores.threshold_free(y, p, n_bins=2)
    assert (tf["n"], tf["positives"], tf["prevalence"]) == (4, 2, 0.5)
    assert tf["auroc"] == pytest.approx(3 / 4, abs=1e-15)  # 0.35 < 0.4 is the one wrong pair
    # thresholds 0.8 (P 1, R 1/2), 0.4 (P 1/2, R 1/2), 0.35 (P 2/3, R 1): AP = 1/2 * 1 + 1/2 * 2/3
    assert tf["auprc"] == pytest.approx(1 / 2 + 1 / 3, abs=1e-15)
    assert tf["brier"] == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4, abs=1e-15)
    hand = -np.mean(np.log([0.9, 0.6, 0.35, 0.8]))
    assert tf["logloss"] == pytest.approx(hand, abs=1e-15)
    # bins [0, .5): 0.1, 0.4, 0.35 (one positive), [.5, 1]: 0.8 (positive)
    ece = 3 / 4 * abs((0.1 + 0.4 + 0.35) / 3 - 1 / 3) + 1 / 4 * abs(0.8 - 1)
    assert tf["ece"] == pytest.approx(ece, abs=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_auroc_counts_ties_as_half_and_log_loss_clips(kind):
    y, p = _data(kind)
    tf = scores.threshold_free(y, p, n_bins=10)
    assert tf["auroc"] == pytest.approx(_pairwise_auc(y, p), abs=1e-12)
    # a probability of exactly 0 or 1 costs -log(eps), not infinity (float64 eps, as before)
    q = np.clip(p, np.finfo(np.float64).eps, 1 - np.finfo(np.float64).eps)
    hand = -np.mean(y * np.log(q) + (1 - y) * np.log1p(-q))
    assert math.isfinite(tf["logloss"]) and tf["logloss"] == pytest.approx(hand, abs=1e-12)


def test_plot_curves_by_hand():
    """ROC corners from (0, 0) to (1, 1), thresholds finite; PR thresholds descending, with no
    extra end point: the rows dvc.yaml draws."""
    y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    rows = plot_data(
        {"val": (y, p), "test": (y, p)}, {"t050": 0.5}, calibration_bins=2, uncalibrated={}
    )
    roc = [(r["fpr"], r["tpr"], r["threshold"]) for r in rows["roc_val.csv"]]
    assert roc == [(0, 0, 1.0), (0, 0.5, 0.8), (0.5, 0.5, 0.4), (0.5, 1, 0.35), (1, 1, 0.1)]
    pr = [(r["recall"], r["precision"], r["threshold"]) for r in rows["pr_val.csv"]]
    assert pr == [(0.5, 1, 0.8), (0.5, 0.5, 0.4), (1, round_floats(2 / 3), 0.35), (1, 0.5, 0.1)]
    cal = [(r["mean_prob"], r["frac_pos"], r["n"]) for r in rows["calibration_val.csv"]]
    assert cal == [(round_floats(0.85 / 3), round_floats(1 / 3), 3), (0.8, 1, 1)]
    assert [r["predicted"] for r in rows["confusion/t050.json"]] == ["negative"] * 3 + ["positive"]


# ----------------------------------------------------------------------------------------------
# Metrics at a threshold


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.6, 1.0])
def test_threshold_metrics_by_counting(kind, t):
    y, p = _data(kind)
    pred = (p >= t).astype(int)
    m = scores.threshold_metrics(y, p, t)
    tp, fp = int(np.sum(pred & y)), int(np.sum(pred & (1 - y)))
    fn, tn = int(np.sum((1 - pred) & y)), int(np.sum((1 - pred) & (1 - y)))
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["threshold"] == t
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred), abs=1e-12)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0.0), abs=1e-12)
    assert m["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-12)
    if tp + fp:
        assert m["precision"] == pytest.approx(skm.precision_score(y, pred), abs=1e-12)
    else:  # nothing predicted positive: precision undefined, reported as None, not NaN
        assert m["precision"] is None
    if tn + fn:
        assert m["npv"] == pytest.approx(tn / (tn + fn), abs=1e-12)
    else:
        assert m["npv"] is None


def test_undefined_ratios_are_none_not_nan():
    m = scores.threshold_metrics([1, 1, 1], [0.2, 0.3, 0.9], 0.5)  # no negatives at all
    assert m["specificity"] is None and m["recall"] == pytest.approx(1 / 3)
    assert m["npv"] == 0.0  # two predicted negatives, both wrong
    m = scores.threshold_metrics([0, 1], [0.1, 0.2], 0.5)  # nothing predicted positive
    assert m["precision"] is None and m["f1"] == 0.0 and m["recall"] == 0.0
    json.dumps(m, allow_nan=False)


# ----------------------------------------------------------------------------------------------
# Calibration


def test_ece_by_hand():
    y = np.array([0, 1, 0, 1, 1, 0, 1])
    p = np.array([0.05, 0.15, 0.12, 0.55, 0.95, 1.0, 0.58])
    # 10 bins: [0,.1): {0.05}; [.1,.2): {0.15, 0.12}; [.5,.6): {0.55, 0.58}; [.9,1]: {0.95, 1.0}
    bins = [([0.05], [0]), ([0.15, 0.12], [1, 0]), ([0.55, 0.58], [1, 1]), ([0.95, 1.0], [1, 0])]
    hand = sum(len(pb) / 7 * abs(np.mean(pb) - np.mean(yb)) for pb, yb in bins)
    assert scores.expected_calibration_error(y, p, n_bins=10) == pytest.approx(hand, abs=1e-12)
    t = scores.calibration_table(y, p, n_bins=10)
    assert t["count"].tolist() == [1, 2, 0, 0, 0, 2, 0, 0, 0, 2]
    assert t["frac_pos"][9] == 0.5 and t["mean_prob"][9] == pytest.approx(0.975)
    # two bins: [0, .5) and [.5, 1]
    hand2 = 3 / 7 * abs(np.mean([0.05, 0.15, 0.12]) - 1 / 3) + 4 / 7 * abs(
        np.mean([0.55, 0.95, 1.0, 0.58]) - 3 / 4
    )
    assert scores.expected_calibration_error(y, p, n_bins=2) == pytest.approx(hand2, abs=1e-12)


@pytest.mark.parametrize("kind", ["smooth", "imbalanced"])
def test_calibration_table_matches_sklearn(kind):
    y, p = _data(kind)
    t = scores.calibration_table(y, p, n_bins=10)
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="uniform")
    used = t["count"] > 0
    np.testing.assert_allclose(t["frac_pos"][used], frac, atol=1e-12)
    np.testing.assert_allclose(t["mean_prob"][used], mean, atol=1e-12)


def test_calibration_edge_goes_to_the_bin_above():
    """Why the bins are our own: tied scores on an inner edge (0.3 of scores rounded to 0.1) fall
    in [0.3, 0.4) here, as documented, and in scikit-learn's bin below."""
    y, p = np.array([0, 1, 1, 0]), np.array([0.3, 0.3, 0.7, 0.1])
    t = scores.calibration_table(y, p, n_bins=10)
    assert t["count"].tolist() == [0, 1, 0, 2, 0, 0, 0, 1, 0, 0]
    _, sk_mean = calibration_curve(y, p, n_bins=10)
    assert len(sk_mean) == 3 and t["lo"][3] == 0.3


# ----------------------------------------------------------------------------------------------
# Operating points on a constructed ROC

POS = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.3, 0.2]
NEG = [0.72, 0.5, 0.45, 0.4, 0.35, 0.25, 0.15, 0.1, 0.05, 0.01]
Y_ROC = np.r_[np.ones(10, int), np.zeros(10, int)]
P_ROC = np.r_[POS, NEG]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (0.05, 0.95),  # one positive suffices
        (0.7, 0.65),  # 0.7 * 10 is 7.000000000000001 in floating point: still 7 positives
        (0.8, 0.6),  # exactly 8 of 10
        (0.81, 0.3),  # more than 8 -> the 9th positive's score
        (0.9, 0.3),
        (1.0, 0.2),  # every positive: the lowest positive score
    ],
)
def test_threshold_for_sensitivity_on_constructed_roc(target, expected):
    t = opp.threshold_for_sensitivity(Y_ROC, P_ROC, target)
    assert t == expected
    assert scores.threshold_metrics(Y_ROC, P_ROC, t)["recall"] >= target - 1e-12


def test_youden_on_constructed_roc_and_ties():
    # J: 0.75 -> .5, 0.65 -> .6, 0.6 -> .8 - .1 = .7 (the maximum), 0.3 -> .9 - .5 = .4
    assert opp.youden_threshold(Y_ROC, P_ROC) == 0.6
    fpr, tpr, thr = skm.roc_curve(Y_ROC, P_ROC, drop_intermediate=False)
    assert thr[np.argmax(tpr - fpr)] == 0.6
    # J = 0.5 at both 0.9 and 0.8: the higher threshold wins
    assert opp.youden_threshold([1, 1, 0, 0], [0.9, 0.8, 0.85, 0.1]) == 0.9


@pytest.mark.parametrize("kind", KINDS)
def test_sensitivity_threshold_is_the_highest_that_qualifies(kind):
    y, p = _data(kind)
    for target in (0.5, 0.8, 0.9, 0.95):
        t = opp.threshold_for_sensitivity(y, p, target)
        assert scores.threshold_metrics(y, p, t)["recall"] >= target
        higher = np.unique(p[p > t])
        if len(higher):  # the next distinct score up already misses the target
            assert scores.threshold_metrics(y, p, higher[0])["recall"] < target


# ----------------------------------------------------------------------------------------------
# Bootstrap against a hand computation


def _percentile(values, q):
    v = sorted(values)
    h = (len(v) - 1) * q / 100
    lo = math.floor(h)
    return v[lo] + (h - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo])


def test_bootstrap_by_hand():
    y = np.array([0, 1, 0, 0, 0, 1])
    p = np.array([0.2, 0.7, 0.4, 0.7, 0.1, 0.3])
    seed, n_res, t = 5, 12, 0.35
    idx = np.random.default_rng(seed).integers(0, 6, size=(n_res, 6))
    aucs, sens, spec, skipped = [], [], [], 0
    for row in idx:
        yb, pb = [int(y[i]) for i in row], [float(p[i]) for i in row]
        if sum(yb) in (0, len(yb)):
            skipped += 1
            continue
        aucs.append(_pairwise_auc(yb, pb))
        tp = sum(1 for a, b in zip(yb, pb, strict=True) if a == 1 and b >= t)
        tn = sum(1 for a, b in zip(yb, pb, strict=True) if a == 0 and b < t)
        sens.append(tp / sum(yb))
        spec.append(tn / (len(yb) - sum(yb)))
    assert skipped > 0  # this seed draws one-class resamples: the skip path is exercised
    ci = bootstrap.auroc_sens_spec_intervals(y, p, {"t035": t}, n_resamples=n_res, seed=seed)
    assert ci["skipped"] == skipped and ci["n_resamples"] == n_res
    for name, vals in (("auroc", aucs), ("t035.recall", sens), ("t035.specificity", spec)):
        expected = (_percentile(vals, 2.5), _percentile(vals, 97.5))
        assert ci[name] == pytest.approx(expected, abs=1e-12), name


def test_bootstrap_is_seeded_and_covers_the_estimate():
    y, p = _data("smooth")
    a = bootstrap.auroc_sens_spec_intervals(y, p, {"t050": 0.5}, n_resamples=300, seed=1)
    assert a == bootstrap.auroc_sens_spec_intervals(y, p, {"t050": 0.5}, n_resamples=300, seed=1)
    assert a != bootstrap.auroc_sens_spec_intervals(y, p, {"t050": 0.5}, n_resamples=300, seed=2)
    lo, hi = a["auroc"]
    assert lo < skm.roc_auc_score(y, p) < hi
    none = bootstrap.auroc_sens_spec_intervals(y, p, {"t050": 0.5}, n_resamples=0, seed=0)
    assert none["auroc"] == (None, None) and none["skipped"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_batched_auroc_equals_sklearn_row_by_row(kind):
    y, p = _data(kind)
    idx = bootstrap.resample_indices(20, len(y), seed=0)
    got = bootstrap.batched_auroc(y[idx], p[idx])
    expected = [skm.roc_auc_score(y[row], p[row]) for row in idx]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_mean_interval_brackets_the_mean_and_is_seeded():
    rng = np.random.default_rng(1)
    values = rng.random(200)
    lo, hi = bootstrap.mean_interval(values, 500, seed=3)
    assert lo < values.mean() < hi
    # the interval of a mean of 200 uniforms is about +-1.96 * 0.289 / sqrt(200) = +-0.04
    assert 0.06 < hi - lo < 0.1
    assert bootstrap.mean_interval(values, 500, seed=3) == (lo, hi)
    assert bootstrap.mean_interval(values, 500, seed=4) != (lo, hi)
    assert bootstrap.mean_interval([0.5, 0.5, 0.5], 100, seed=0) == (0.5, 0.5)
    assert all(math.isnan(v) for v in bootstrap.mean_interval([], 100, seed=0))


# ----------------------------------------------------------------------------------------------
# The operating point file


def test_operating_point_file_round_trip_and_fallback(tmp_path):
    spread = {"threshold_lo": 0.2, "threshold_hi": 0.4}
    record = opp.operating_point_record(0.3, 0.9, spread, 12, 0.35)
    path = tmp_path / "op.json"
    path.write_text(json.dumps(record))
    assert opp.read_operating_point(path) == opp.OperatingPoint(
        0.3, f"{path}, target sensitivity 0.9"
    )
    op, note = opp.operating_point_or_fallback(path)
    assert op.threshold == 0.3 and note is None
    op, note = opp.operating_point_or_fallback(tmp_path / "absent.json")
    assert op.threshold == opp.FALLBACK_THRESHOLD == 0.5
    assert "absent.json not found" in note and "dvc repro evaluate" in note


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"threshold": "high"}', r"op\.json: threshold must be a number in \[0, 1\], got 'high'"),
        ('{"threshold": true}', "got True"),
        ("[0.5]", "expected a JSON object"),
        ("{", "cannot read the operating point"),
    ],
)
def test_bad_operating_point_files_are_named(tmp_path, text, match):
    (tmp_path / "op.json").write_text(text)
    with pytest.raises(opp.OperatingPointError, match=match):
        opp.read_operating_point(tmp_path / "op.json")


# ----------------------------------------------------------------------------------------------
# Keys, validation, subgroups


def test_threshold_keys():
    assert threshold_key(0.5) == "t050"
    assert threshold_key(0.25) == "t025"
    assert threshold_key(0.125) == "t0125"
    assert threshold_key(0.05) == "t005"
    assert threshold_key(1.0) == "t100"
    assert threshold_key(0) == "t000"
    assert threshold_key(1e-5) == "t000001"
    grid = np.unique(np.r_[np.round(np.linspace(0, 1, 1001), 3), 0.1 + 0.2, 1 / 3])
    keys = [threshold_key(float(t)) for t in grid]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "0.5", True, None])
def test_bad_thresholds_are_named(bad):
    with pytest.raises(EvaluationError, match=r"evaluate\.thresholds\[1\]"):
        check_thresholds([0.5, bad], "evaluate.thresholds")


def test_duplicate_threshold_is_an_error():
    with pytest.raises(EvaluationError, match="twice"):
        check_thresholds([0.5, 0.25, 0.50], "evaluate.thresholds")


def test_bad_inputs_name_the_row():
    with pytest.raises(EvaluationError, match=r"row 2: prob nan"):
        scores.threshold_free([0, 1, 0], [0.1, 0.2, np.nan], n_bins=10)
    with pytest.raises(EvaluationError, match=r"row 1: prob 1.2"):
        scores.threshold_metrics([0, 1], [0.1, 1.2], 0.5)
    with pytest.raises(EvaluationError, match=r"row 0: target 2"):
        scores.calibration_table([2, 1], [0.1, 0.2], n_bins=10)
    with pytest.raises(EvaluationError, match="all 3 cases are negative"):
        scores.threshold_free([0, 0, 0], [0.1, 0.2, 0.3], n_bins=10)


def test_age_bands():
    edges = [0, 40, 60, 120]
    assert subgroups.age_band_labels(edges) == ["0-39", "40-59", "60-120"]
    ages = ["0", "39", "40", "59", "60", "120", "121", "155", "", "-1", "abc", None, 61.0]
    got = subgroups.assign_age_bands(ages, edges).tolist()
    assert got == [
        "0-39",
        "0-39",
        "40-59",
        "40-59",
        "60-120",
        "60-120",
        "unknown",
        "unknown",
        "unknown",
        "unknown",
        "unknown",
        "unknown",
        "60-120",
    ]
    assert subgroups.age_band_labels([18, 19, 65]) == ["18", "19-65"]
    with pytest.raises(EvaluationError, match="increasing"):
        subgroups.assign_age_bands([1], [0, 60, 40])


def test_subgroups_one_class_empty_and_unknown():
    y = np.array([1, 0, 1, 0, 1, 1, 0])
    p = np.array([0.9, 0.2, 0.6, 0.7, 0.8, 0.4, 0.1])
    labels = subgroups.subgroup_labels(["AP", "AP", "AP", "AP", "PA", "PA", None])
    groups = subgroups.subgroup_metrics(y, p, labels, {"t050": 0.5}, levels=("PA", "AP", "LL"))
    assert list(groups) == ["PA", "AP", "LL", "unknown"]
    ap = groups["AP"]
    assert ap["n"] == 4 and ap["positives"] == 2 and ap["prevalence"] == 0.5
    assert ap["auroc"] == pytest.approx(skm.roc_auc_score(y[:4], p[:4]), abs=1e-12)
    assert ap["t050"] == {"recall": 1.0, "specificity": 0.5}
    pa = groups["PA"]  # positives only: AUROC and specificity undefined
    assert pa["auroc"] is None and pa["auroc_note"] == "only positives"
    assert pa["t050"] == {"recall": 0.5, "specificity": None}
    assert groups["LL"]["n"] == 0 and groups["LL"]["auroc_note"] == "no cases"
    assert groups["unknown"]["auroc_note"] == "only negatives"
    json.dumps(groups, allow_nan=False)


# ----------------------------------------------------------------------------------------------
# The whole evaluation


def _frame(y, p, rng):
    n = len(y)
    return pd.DataFrame(
        {
            "patientId": [f"p{i}" for i in range(n)],
            "target": y,
            "prob": p,
            # the logit evaluate calibrates (clipped: p is exactly 0 or 1 in some fixtures)
            "logit": np.log(np.clip(p, 1e-12, 1)) - np.log1p(-np.clip(p, 0, 1 - 1e-12)),
            "view": rng.choice(["PA", "AP", ""], n),
            "sex": rng.choice(["M", "F"], n),
            "age": rng.choice(["25", "45", "75", "", "150"], n),
            "class": np.where(np.asarray(y) == 1, "Lung Opacity", "Normal"),
        }
    )


def test_operating_point_interval_against_sklearn():
    """Re-choose the threshold on each val resample with sklearn's ROC curve, score test with
    sklearn's recall: the same percentile intervals."""
    yv, pv = _data("smooth")
    yt, pt = _data("ties")
    got = bootstrap.operating_point_interval((yv, pv), (yt, pt), 0.8, n_resamples=300, seed=3)
    idx = np.random.default_rng(3).integers(0, len(yv), size=(300, len(yv)))
    thr, sens, spec = [], [], []
    for row in idx:
        y, p = yv[row], pv[row]
        if not 0 < y.sum() < len(y):
            continue
        fpr, tpr, t = skm.roc_curve(y, p, drop_intermediate=False)
        chosen = t[np.argmax(tpr >= math.ceil(0.8 * y.sum() - 1e-9) / y.sum())]
        thr.append(chosen)
        sens.append(skm.recall_score(yt, pt >= chosen))
        spec.append(skm.recall_score(1 - yt, pt < chosen))
    for key, values in (
        ("threshold", thr),
        ("recall_rechosen", sens),
        ("specificity_rechosen", spec),
    ):
        lo, hi = np.percentile(values, [2.5, 97.5])
        assert got[f"{key}_lo"] == pytest.approx(lo) and got[f"{key}_hi"] == pytest.approx(hi)
    assert got["threshold_lo"] < got["threshold_hi"]  # the choice really moves


# the settings these tests were written for (params.yaml's evaluate section has the pipeline's)
EVALUATE = dict(
    thresholds=(0.5, 0.25),
    target_sensitivity=0.9,
    bootstrap=1000,
    seed=0,
    calibration_bins=10,
    age_bands=(0, 40, 60, 120),
)


def _evaluate(val: pd.DataFrame, test: pd.DataFrame, **settings) -> Evaluation:
    return evaluate(val, test, **EVALUATE | settings)


def test_evaluate_layout_and_op_point():
    rng = np.random.default_rng(0)
    yv, pv = _data("smooth")
    yt, pt = _data("ties")
    val, test_frame = _frame(yv, pv, rng), _frame(yt, pt, rng)
    ev = _evaluate(val, test_frame, thresholds=[0.5, 0.25, 0.125], bootstrap=200)
    # evaluate scores the calibrated probabilities: its temperature, fitted on val, checked by
    # test_calibration; here everything downstream of it is checked against sklearn on them
    temperature = ev.operating_point["temperature"]  # unrounded (the metrics round it)
    assert temperature == pytest.approx(fit_temperature(yv, val["logit"].to_numpy()))
    pv = apply_temperature(val["logit"].to_numpy(), temperature)
    pt = apply_temperature(test_frame["logit"].to_numpy(), temperature)
    op = {k: v for k, v in ev.operating_point.items() if k not in ("temperature", "model_sha256")}
    spread = bootstrap.operating_point_interval((yv, pv), (yt, pt), 0.9, 200, 0)
    assert op == {
        "threshold": opp.threshold_for_sensitivity(yv, pv, 0.9),
        "target_sensitivity": 0.9,
        "method": "target_sensitivity",
        "threshold_lo": spread["threshold_lo"],
        "threshold_hi": spread["threshold_hi"],
        "n_val_positives": int(yv.sum()),
        "youden_threshold": opp.youden_threshold(yv, pv),
    }
    assert op["threshold_lo"] <= op["threshold"] <= op["threshold_hi"]
    test = ev.metrics["test"]
    assert test["auroc"] == pytest.approx(skm.roc_auc_score(yt, pt), abs=1e-5)  # rounded
    assert test["auroc_lo"] <= test["auroc"] <= test["auroc_hi"]
    for key in ("t050", "t025", "t0125", "op", "youden"):
        block = test[key]
        assert {"recall", "recall_lo", "recall_hi", "specificity_lo", "tp", "npv"} <= set(block)
        assert block["recall_lo"] <= block["recall"] <= block["recall_hi"]
    # the val operating point is applied unchanged to test
    assert test["op"]["tp"] == scores.confusion_counts(yt, pt, op["threshold"])["tp"]
    assert ev.metrics["val"]["op"]["recall"] >= 0.9
    assert set(test["view"]) == {"PA", "AP", "unknown"}
    assert set(test["age"]) == {"0-39", "40-59", "60-120", "unknown"}
    json.dumps(ev.metrics, allow_nan=False)
    assert set(ev.plots) >= {
        "roc_test.csv",
        "pr_val.csv",
        "confusion/op.json",
        "threshold_test.csv",
    }
    assert len(ev.plots["confusion/t0125.json"]) == len(yt)
    assert all(math.isfinite(r["threshold"]) for r in ev.plots["roc_val.csv"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"thresholds": [0.5, 2.0]}, r"evaluate\.thresholds\[1\]=2\.0"),
        ({"thresholds": [0.5, 0.25, 0.5]}, r"evaluate\.thresholds\[2\]=0\.5 is listed twice"),
        ({"target_sensitivity": 0.0}, r"target sensitivity 0\.0 must be in \(0, 1\]"),
        ({"target_sensitivity": 1.5}, r"target sensitivity 1\.5 must be in \(0, 1\]"),
        ({"age_bands": [0, 60, 40]}, r"age band edges \[0, 60, 40\] must be"),
    ],
)
def test_evaluate_refuses_what_would_silently_mislead(kwargs, match):
    """The library's own checks; the ranges of every setting are test_params' (EvaluateParams)."""
    rng = np.random.default_rng(0)
    y, p = _data("smooth")
    with pytest.raises(EvaluationError, match=match):
        _evaluate(_frame(y, p, rng), _frame(y, p, rng), bootstrap=10, **kwargs)


def test_evaluate_one_class_split_is_a_clear_error():
    rng = np.random.default_rng(0)
    y, p = _data("smooth")
    with pytest.raises(EvaluationError, match=r"test predictions: all 300 cases are negative"):
        _evaluate(_frame(y, p, rng), _frame(np.zeros_like(y), p, rng), bootstrap=10)


def test_round_floats():
    assert round_floats({"a": [np.float64(0.123456789), 3], "b": None}) == {
        "a": [0.123457, 3],
        "b": None,
    }
    with pytest.raises(EvaluationError, match="non-finite"):
        round_floats(float("nan"))
