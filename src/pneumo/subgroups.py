"""Scores per subgroup of the test split (view, sex, age band; the negatives by detailed class),
with stable keys for the JSON.

Conventions: ``pneumo.eval_checks``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pneumo.eval_checks import EvaluationError, check_binary
from pneumo.rsna import class_key
from pneumo.scores import confusion_counts, ratio, threshold_metrics

SUBGROUP_LEVELS = {"view": ("PA", "AP"), "sex": ("M", "F")}  # always reported, for stable keys


def age_band_labels(edges: Sequence[int]) -> list[str]:
    """Labels of the bands ``[e_k, e_{k+1})``, the last one closed: [0, 40, 60, 120] -> 0-39,
    40-59, 60-120."""
    labels = []
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        top = hi if k == len(edges) - 2 else hi - 1
        labels.append(str(lo) if top == lo else f"{lo}-{top}")
    return labels


def assign_age_bands(ages: Any, edges: Sequence[int]) -> np.ndarray:
    """The band label of each age; missing ages and ages outside the edges are "unknown"."""
    edges = list(edges)
    # kept beside EvaluateParams' check: searchsorted on edges out of order bands ages wrongly
    if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=False)):
        raise EvaluationError(f"age band edges {edges} must be at least two increasing numbers")
    a = pd.to_numeric(pd.Series(ages), errors="coerce").to_numpy(dtype=np.float64)
    labels = np.array(age_band_labels(edges) + ["unknown"], dtype=object)
    band = np.searchsorted(np.asarray(edges, dtype=np.float64), a, side="right") - 1
    band[a == edges[-1]] = len(edges) - 2  # the last band is closed on the right
    band[~((a >= edges[0]) & (a <= edges[-1]))] = len(edges) - 1  # also NaN -> unknown
    return labels[band]


def subgroup_labels(values: Any) -> np.ndarray:
    """Category labels with missing or empty values as "unknown"."""
    s = pd.Series(values, dtype=object)
    s = s.where(s.notna(), "").astype(str).str.strip()
    return s.where(s != "", "unknown").to_numpy(dtype=object)


def subgroups_by_attribute(
    df: pd.DataFrame, decisions: Mapping[str, float], age_bands: Sequence[int]
) -> dict[str, dict[str, dict[str, Any]]]:
    """``subgroup_metrics`` of one split's predictions by view, sex and age band."""
    y, p = check_binary(df["target"].to_numpy(), df["prob"].to_numpy())
    levels = {**SUBGROUP_LEVELS, "age": age_band_labels(age_bands)}
    labels = {
        "view": subgroup_labels(df["view"]),
        "sex": subgroup_labels(df["sex"]),
        "age": assign_age_bands(df["age"], age_bands),
    }
    return {a: subgroup_metrics(y, p, labels[a], decisions, levels[a]) for a in labels}


def subgroup_metrics(
    y: Any,
    p: Any,
    labels: Any,
    decisions: Mapping[str, float],
    levels: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """Per label: count, positives, prevalence, AUROC and sensitivity / specificity per decision.

    ``levels`` are always reported (count 0 and nulls when absent) so that keys stay stable;
    other labels found in the data follow, "unknown" last. A subgroup with one class has AUROC
    None and an ``auroc_note`` saying why.
    """
    y, p = check_binary(y, p)
    labels = np.asarray(labels, dtype=object)
    found = sorted(set(labels) - set(levels) - {"unknown"})
    order = [*levels, *found, *(["unknown"] if "unknown" in set(labels) else [])]
    out = {}
    for level in order:
        mask = labels == level
        out[str(level)] = _one_subgroup(y[mask], p[mask], decisions)
    return out


def _one_subgroup(y: np.ndarray, p: np.ndarray, decisions: Mapping[str, float]) -> dict[str, Any]:
    n, n_pos = len(y), int(y.sum())
    g: dict[str, Any] = {"n": n, "positives": n_pos, "prevalence": ratio(n_pos, n)}
    if n == 0:
        g["auroc"], g["auroc_note"] = None, "no cases"
    elif n_pos in (0, n):
        g["auroc"] = None
        g["auroc_note"] = "only positives" if n_pos else "only negatives"
    else:
        g["auroc"] = float(roc_auc_score(y, p))
    for key, t in decisions.items():
        m = threshold_metrics(y, p, t)
        g[key] = {"recall": m["recall"], "specificity": m["specificity"]}
    return g


def specificity_by_class(
    df: pd.DataFrame, decisions: Mapping[str, float]
) -> dict[str, dict[str, Any]]:
    """Among the negatives, per detailed class (RSNA's "Normal" and "No Lung Opacity / Not
    Normal"): count, and per decision the false positives and the specificity.

    RSNA's "Not Normal" films carry other disease, lines and devices; a model that learnt the
    devices as a shortcut for opacity shows it as a lower specificity there than on "Normal".
    Keys are ``pneumo.rsna.class_key``'s (``normal``, ``not_normal``).
    """
    y, p = check_binary(df["target"].to_numpy(), df["prob"].to_numpy())
    labels = subgroup_labels(df["class"])
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(labels[y == 0])):
        mask = (y == 0) & (labels == name)
        block: dict[str, Any] = {"class": name, "n": int(mask.sum())}
        for key, t in decisions.items():
            fp = confusion_counts(y[mask], p[mask], t)["fp"]
            block[key] = {"fp": fp, "specificity": ratio(block["n"] - fp, block["n"])}
        out[class_key(name)] = block
    return out
