"""raw_dir -> one validated row per labelled image: dedupe, image paths, headers, age flags."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from pneumo.labels.errors import LabelError, listed
from pneumo.labels.headers import read_headers
from pneumo.labels.images import match_images
from pneumo.labels.raw_csv import BOX_COLUMNS, read_labels
from pneumo.rsna import CLASS_INFO_CSV, LABELS_CSV, TRAIN_IMAGES
from pneumo.split_schema import SPLIT_COLUMNS

log = logging.getLogger(__name__)


def dedupe(labels: pd.DataFrame) -> pd.DataFrame:
    """One row per patientId (first-appearance order): groupId, target, class, boxes (JSON list)."""
    g = labels.groupby("patientId", sort=False)
    agg = g.agg(
        groupId=("groupId", "first"),
        n_group=("groupId", "nunique"),
        t_min=("Target", "min"),
        target=("Target", "max"),
        n_class=("class", "nunique"),
        cls=("class", "first"),
    )
    for bad, file, what in [
        (agg["t_min"] != agg["target"], LABELS_CSV, "both Target 0 and Target 1 rows"),
        (agg["n_class"] > 1, CLASS_INFO_CSV, "rows with different classes"),
        (agg["n_group"] > 1, LABELS_CSV, "rows with different groupIds"),
    ]:
        if bad.any():
            ids = list(agg.index[bad])
            raise LabelError(f"{file}: {len(ids):,} patient(s) with {what}: {listed(ids)}")
    boxes: dict[str, list[list[float]]] = {pid: [] for pid in agg.index}
    with_box = labels.dropna(subset=BOX_COLUMNS)
    for pid, *xywh in with_box[["patientId", *BOX_COLUMNS]].itertuples(index=False):
        boxes[pid].append([_number(v) for v in xywh])
    return pd.DataFrame(
        {
            "patientId": agg.index.to_numpy(),
            "groupId": agg["groupId"].to_numpy(),
            "target": agg["target"].to_numpy().astype(int),
            "class": agg["cls"].to_numpy(),
            "boxes": [json.dumps(boxes[pid], separators=(",", ":")) for pid in agg.index],
        }
    )


def _number(v: float) -> int | float:
    """RSNA's coordinates are whole pixels written as 264.0: keep the JSON short."""
    return int(v) if float(v).is_integer() else float(v)


def build_table(
    raw_dir: Path, max_age: int, workers: int = 8
) -> tuple[pd.DataFrame, dict[str, int]]:
    """raw_dir -> one validated row per labelled image (the SPLIT_COLUMNS) and the flag counts."""
    raw_dir = Path(raw_dir)
    labels = read_labels(raw_dir)
    table = dedupe(labels)
    log.info(
        "labels: %s rows -> %s images, %s positive, %s boxes",
        f"{len(labels):,}",
        f"{len(table):,}",
        f"{int(table['target'].sum()):,}",
        f"{int(labels['x'].notna().sum()):,}",
    )
    table, unlabelled = match_images(table, raw_dir)
    if unlabelled:
        log.warning(
            "%s image(s) in %s have no label and are not used: %s",
            f"{len(unlabelled):,}",
            raw_dir / TRAIN_IMAGES,
            listed(unlabelled),
        )
    meta, unreadable = read_headers([raw_dir / p for p in table["image"]], workers=workers)
    if unreadable:
        named = [f"{Path(p).name} ({r})" for p, r in unreadable.items()]
        log.warning(
            "%s unreadable header(s), view/sex/age left empty: %s",
            f"{len(unreadable):,}",
            listed(named),
        )
    table = pd.concat([table.reset_index(drop=True), meta], axis=1)
    table["age_flag"] = flag_ages(table["age"], max_age)
    n_flagged = int(table["age_flag"].sum())
    if n_flagged:
        ages = sorted(int(a) for a in table.loc[table["age_flag"] == 1, "age"])
        log.warning(
            "%d impossible age(s) > split.max_age=%d flagged (age_flag=1), kept: %s",
            n_flagged,
            max_age,
            listed(ages),
        )
    flags = {
        "impossible_age": n_flagged,
        "images_without_labels": len(unlabelled),
        "unreadable_header": len(unreadable),
    }
    return table[list(SPLIT_COLUMNS)], flags


def flag_ages(age: pd.Series, max_age: int) -> pd.Series:
    """1 where the age is known and above max_age (a data error such as RSNA's 155), else 0."""
    return (age > max_age).fillna(False).astype(int)
