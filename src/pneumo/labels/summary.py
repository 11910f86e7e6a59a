"""The split's counts for data/detail/split.json: images, groups, positives, boxes, classes and
views per split."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pneumo.boxes import parse_boxes
from pneumo.labels.headers import VIEWS
from pneumo.rsna import class_key
from pneumo.split_schema import SPLITS


def summarize(splits: dict[str, pd.DataFrame], flags: dict[str, int]) -> dict[str, Any]:
    """Counts per split (and in total) of images, groups, positives, boxes, classes and views."""
    names = sorted({c for part in splits.values() for c in part["class"]})
    keys: dict[str, str] = {}
    for name in names:
        key = class_key(name)
        while key in keys.values():  # two names that slug alike still get their own key
            key += "_"
        keys[name] = key
    out: dict[str, Any] = {name: _summary(splits[name], keys) for name in SPLITS}
    out["total"] = _summary(pd.concat([splits[s] for s in SPLITS]), keys)
    out["flags"] = {k: int(v) for k, v in flags.items()}
    return out


def _summary(df: pd.DataFrame, class_keys: dict[str, str]) -> dict[str, Any]:
    n, positive = len(df), int(df["target"].sum())
    views = df["view"].where(df["view"].isin(VIEWS), "unknown").value_counts()
    classes = df["class"].value_counts()
    return {
        "n": n,
        "groups": int(df["groupId"].nunique()),
        "positive": positive,
        "prevalence": round(positive / n, 4) if n else 0.0,
        "boxes": int(sum(len(parse_boxes(b, "the split table")) for b in df["boxes"])),
        "class": {k: int(classes.get(name, 0)) for name, k in class_keys.items()},
        "view": {v: int(views.get(v, 0)) for v in (*VIEWS, "unknown")},
    }
