"""The stratified (target x view), group-aware train / val / test split."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pneumo.labels.errors import LabelError
from pneumo.labels.headers import VIEWS
from pneumo.split_schema import SPLITS


def group_strata(df: pd.DataFrame) -> pd.DataFrame:
    """Per groupId (sorted): size, target (max over its images) and its most common known view."""
    g = df.groupby("groupId", sort=True)
    groups = g.agg(size=("patientId", "size"), target=("target", "max"))
    counts = (
        df[df["view"].isin(VIEWS)]
        .groupby(["groupId", "view"])
        .size()
        .rename("n")
        .reset_index()
        # most common view; a tie goes to the alphabetically first so the stratum is reproducible
        .sort_values(["groupId", "n", "view"], ascending=[True, False, True])
        .drop_duplicates("groupId")
    )
    mode = counts.set_index("groupId")["view"]
    groups["view"] = mode.reindex(groups.index).fillna("")
    return groups


def split_patients(
    df: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    """Stratified (target x view) split at the group level: {"train", "val", "test"} frames.

    df needs patientId, groupId, target and view; rows keep their order within each split. The
    fractions' ranges are checked where params.yaml is read (``pneumo.params.SplitParams``).
    """
    groups = group_strata(df)
    rng = np.random.default_rng(seed)
    assignment = pd.Series("train", index=groups.index, dtype=object)
    for _, by_target in groups.groupby("target", sort=True):
        # Rounding is carried from one view stratum to the next within a class, so each class's
        # val/test counts are within one group of their ideal: the prevalence of every split
        # matches the data's, and a class with a handful of groups reaches every split.
        ideal = {"test": 0.0, "val": 0.0}
        taken = {"test": 0, "val": 0}
        for _, stratum in by_target.groupby("view", sort=True):
            order = rng.permutation(len(stratum))
            ids = stratum.index.to_numpy()[order]
            sizes = stratum["size"].to_numpy()[order]
            ideal["test"] += sizes.sum() * test_fraction
            ideal["val"] += sizes.sum() * val_fraction
            quota = {k: max(0, math.floor(ideal[k] - taken[k] + 0.5)) for k in ideal}
            # a group goes where the middle of its images falls on the line: test, val, train
            middle = np.cumsum(sizes) - sizes / 2
            names = np.where(
                middle < quota["test"],
                "test",
                np.where(middle < quota["test"] + quota["val"], "val", "train"),
            )
            assignment.loc[ids] = names
            for k in taken:
                taken[k] += int(sizes[names == k].sum())
    where = df["groupId"].map(assignment)
    splits = {name: df[where == name].reset_index(drop=True) for name in SPLITS}
    _check_splits(splits, groups, val_fraction, test_fraction)
    return splits


def _check_splits(
    splits: dict[str, pd.DataFrame], groups: pd.DataFrame, val_fraction: float, test_fraction: float
) -> None:
    for name, part in splits.items():
        for target, label in [(1, "positive"), (0, "negative")]:
            if (part["target"] == target).any():
                continue
            n = int((groups["target"] == target).sum())
            need = math.ceil(0.5 / min(val_fraction, test_fraction))
            raise LabelError(
                f"the {name} split would have no {label} image: the data has {n:,} {label} "
                f"group(s); with split.val_fraction={val_fraction} and "
                f"split.test_fraction={test_fraction} every split needs about {need} of each class"
            )
