"""data/split/<split>.csv: written all at once, read back with their dtypes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pneumo.atomic import atomic_dir
from pneumo.labels.errors import LabelError
from pneumo.split_schema import SPLIT_COLUMNS, SPLITS


def write_splits(splits: dict[str, pd.DataFrame], out_dir: Path) -> None:
    """Write <split>.csv files into a temporary folder, then swap it in for out_dir."""
    with atomic_dir(out_dir) as tmp:
        for name in SPLITS:
            with (tmp / f"{name}.csv").open("w", newline="") as f:
                splits[name][list(SPLIT_COLUMNS)].to_csv(f, index=False, lineterminator="\n")


def read_split(path: Path) -> pd.DataFrame:
    """Read data/split/<split>.csv with its dtypes: ids as text, age as nullable Int64."""
    path = Path(path)
    with path.open() as f:
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
    if list(df.columns) != list(SPLIT_COLUMNS):
        raise LabelError(f"{path}: columns {list(df.columns)} != expected {list(SPLIT_COLUMNS)}")
    df["target"] = df["target"].astype(int)
    df["age_flag"] = df["age_flag"].astype(int)
    df["age"] = pd.array([int(a) if a != "" else None for a in df["age"]], dtype="Int64")
    return df
