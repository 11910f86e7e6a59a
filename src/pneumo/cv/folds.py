"""The fold assignment and a fold's training data.

The test split stays as split wrote it; the train and val splits together are divided into k
folds by scikit-learn's ``StratifiedGroupKFold``: every image of a patient group (``groupId``)
in one fold, the folds' target x view mix as even as the groups allow, the shuffle seeded by
``cv.seed``, so the same rows always give the same folds. Fold f is trained on the other k - 1
folds and validated (best checkpoint, temperature) on fold f.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo.atomic import atomic_dir

POOLED = ("train", "val")  # the splits the folds divide; test is never touched


def assign_folds(index: pd.DataFrame, k: int, seed: int) -> np.ndarray:
    """Fold number (0 .. k-1) of each row of ``index`` (columns groupId, target, view)."""
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    strata = index["target"].astype(str) + "/" + index["view"].fillna("").astype(str)
    folds = np.empty(len(index), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, rows) in enumerate(splitter.split(index, strata, groups=index["groupId"])):
        folds[rows] = fold
    return folds


def pooled_index(processed: Path) -> pd.DataFrame:
    """The train and val rows of the processed cache, in that order, as text (as infer reads
    them), with ``split`` and ``row`` saying where each image is."""
    parts = []
    for split in POOLED:
        df = pd.read_csv(processed / f"{split}.csv", dtype=str, keep_default_na=False)
        parts.append(df.assign(split=split, row=np.arange(len(df))))
    return pd.concat(parts, ignore_index=True)


def write_fold_data(processed: Path, out: Path, fold: int, k: int, seed: int) -> None:
    """``out`` as a processed directory for fold ``fold``: train = the other folds, val = this
    one (``.npy`` and ``.csv`` each, rows in the cache's order), the cache's ``stats.json``
    unchanged (its normalisation is the train split's: a constant of the input, not a fit)."""
    index = pooled_index(processed)
    folds = assign_folds(index.assign(target=index["target"].astype(int)), k, seed)
    arrays = {s: np.load(processed / f"{s}.npy", mmap_mode="r") for s in POOLED}
    with atomic_dir(out) as tmp:
        for split, rows in (("train", index[folds != fold]), ("val", index[folds == fold])):
            # rows keep the pooled order (train rows, then val rows): gather the same way
            parts = [arrays[s][rows.loc[rows["split"] == s, "row"].to_numpy()] for s in POOLED]
            np.save(tmp / f"{split}.npy", np.concatenate(parts))
            rows.drop(columns=["split", "row"]).to_csv(tmp / f"{split}.csv", index=False)
        shutil.copyfile(processed / "stats.json", tmp / "stats.json")
