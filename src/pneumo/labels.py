"""RSNA-format labels -> one validated row per image -> stratified, group-aware data split.

The raw layout is the Kaggle archive's (see the data contract): a labels CSV with one row per box,
a detailed-class CSV row-aligned with it, and one image file per patientId. Every check here raises
``LabelError`` with a message that names the file, the line or the patient and the reason.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.atomic import atomic_dir
from pneumo.boxes import parse_boxes
from pneumo.dicom import ImageMeta, read_meta
from pneumo.rsna import CLASS_INFO_COLUMNS, CLASS_INFO_CSV, LABEL_COLUMNS, LABELS_CSV, TRAIN_IMAGES

log = logging.getLogger(__name__)

IMAGE_FILE_SUFFIXES = (".dcm", ".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
COLUMNS = [
    "patientId",
    "groupId",
    "image",
    "target",
    "class",
    "view",
    "sex",
    "age",
    "age_flag",
    "boxes",
]
BOX_COLUMNS = ["x", "y", "width", "height"]
VIEWS = ("PA", "AP")
SEXES = ("M", "F")
# RSNA's detailed classes and the Target each implies; other class names (folder source) are free.
RSNA_CLASS_TARGET = {"Lung Opacity": 1, "No Lung Opacity / Not Normal": 0, "Normal": 0}
# Short metric keys: `dvc metrics diff` prints dotted paths, and "No Lung Opacity / Not Normal"
# would make an unreadable one.
CLASS_KEYS = {
    "Normal": "normal",
    "Lung Opacity": "lung_opacity",
    "No Lung Opacity / Not Normal": "not_normal",
}
MAX_NAMED = 5  # how many ids an error or warning names before "and N more"


class LabelError(ValueError):
    """The raw labels or images are inconsistent; the message names the file, line or patient."""


# ----------------------------------------------------------------------------------------------
# Reading and validating the two CSVs


def read_labels(raw_dir: Path) -> pd.DataFrame:
    """Both label CSVs as one frame, one row per CSV row (with its `line`), validated."""
    labels_path, class_path = Path(raw_dir) / LABELS_CSV, Path(raw_dir) / CLASS_INFO_CSV
    labels = _read_csv(labels_path, list(LABEL_COLUMNS))
    classes = _read_csv(class_path, list(CLASS_INFO_COLUMNS))
    _check_aligned(labels, classes, labels_path, class_path)

    # line numbers as a text editor shows them (line 1 is the header) so errors can be looked up
    df = pd.DataFrame({"patientId": labels["patientId"], "line": np.arange(len(labels)) + 2})
    df["groupId"] = labels.get("groupId", "")
    df["groupId"] = df["groupId"].where(df["groupId"] != "", df["patientId"])
    for col in BOX_COLUMNS:
        df[col] = _parse_numbers(labels[col], col, df, labels_path)
    df["Target"] = _parse_target(labels["Target"], df, labels_path)
    df["class"] = classes["class"]
    _check_rows(df, labels_path, class_path)
    return df


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise LabelError(f"{path} not found (the download stage writes it)")
    try:
        # everything as text: ids such as "0001" must not become numbers, and empty box cells
        # must stay distinguishable from bad ones
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise LabelError(f"{path} is not a readable CSV: {e}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise LabelError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(df.columns)}"
        )
    if df.empty:
        raise LabelError(f"{path} has a header but no rows")
    df = df.apply(lambda s: s.str.strip())
    empty_id = df.index[df["patientId"] == ""]
    if len(empty_id):
        raise LabelError(f"{path}: empty patientId on {_lines(empty_id)}")
    return df


def _check_aligned(labels: pd.DataFrame, classes: pd.DataFrame, lpath: Path, cpath: Path) -> None:
    n = min(len(labels), len(classes))
    differ = np.flatnonzero(
        labels["patientId"].to_numpy()[:n] != classes["patientId"].to_numpy()[:n]
    )
    first = ""
    if len(differ):
        i = int(differ[0])
        first = (
            f"first mismatch on line {i + 2}: {lpath.name} has patientId "
            f"{labels['patientId'].iat[i]!r}, {cpath.name} has {classes['patientId'].iat[i]!r}"
        )
    if len(labels) != len(classes):
        raise LabelError(
            f"{cpath} has {len(classes):,} rows but {lpath} has {len(labels):,}: the detailed "
            f"class file must be row-aligned with the labels file" + (f"; {first}" if first else "")
        )
    if first:
        raise LabelError(f"{cpath} is not row-aligned with {lpath}: {first}")


def _parse_numbers(text: pd.Series, col: str, df: pd.DataFrame, path: Path) -> pd.Series:
    present = text != ""
    values = pd.to_numeric(text.where(present), errors="coerce").astype(float)
    bad = text.index[present & ~np.isfinite(values)]
    if len(bad):
        raise LabelError(f"{path}: {col} is not a finite number on {_rows(df, bad, text)}")
    return values


def _parse_target(text: pd.Series, df: pd.DataFrame, path: Path) -> pd.Series:
    values = pd.to_numeric(text, errors="coerce")
    bad = text.index[~values.isin([0, 1])]
    if len(bad):
        raise LabelError(
            f"{path}: unknown Target value (expected 0 or 1) on {_rows(df, bad, text)}"
        )
    return values.astype(int)


def _check_rows(df: pd.DataFrame, lpath: Path, cpath: Path) -> None:
    has = df[BOX_COLUMNS].notna()
    box = has.all(axis=1)
    implied = df["class"].map(RSNA_CLASS_TARGET)
    checks = [
        (has.any(axis=1) & ~box, lpath, "incomplete box (x, y, width, height)", None),
        (box & ((df["width"] <= 0) | (df["height"] <= 0)), lpath, "box width/height <= 0", None),
        (box & (df["Target"] == 0), lpath, "a Target 0 row has a box", None),
        # The folder source has image-level labels only (no box anywhere): its positives carry
        # []. In a file with boxes (RSNA) every positive row is one box, so an empty one is wrong.
        (~box & (df["Target"] == 1) & box.any(), lpath, "a Target 1 row has no box", None),
        (df["class"] == "", cpath, "empty class", None),
        (
            implied.notna() & (implied != df["Target"]),
            cpath,
            f"class contradicts {lpath.name}'s Target",
            df["class"],
        ),
    ]
    for mask, path, reason, values in checks:
        bad = df.index[mask]
        if len(bad):
            raise LabelError(f"{path}: {reason} on {_rows(df, bad, values)}")


def _lines(index: pd.Index) -> str:
    lines = [f"line {i + 2}" for i in index[:MAX_NAMED]]
    return ", ".join(lines) + _more(len(index))


def _rows(df: pd.DataFrame, index: pd.Index, values: pd.Series | None = None) -> str:
    parts = []
    for i in index[:MAX_NAMED]:
        part = f"line {df.at[i, 'line']} (patientId {df.at[i, 'patientId']}"
        if values is not None:
            part += f", value {values.at[i]!r}"
        parts.append(part + ")")
    return "; ".join(parts) + _more(len(index))


def _more(n: int) -> str:
    return f" and {n - MAX_NAMED:,} more" if n > MAX_NAMED else ""


def _named(ids: Sequence[str]) -> str:
    return ", ".join(map(str, ids[:MAX_NAMED])) + _more(len(ids))


# ----------------------------------------------------------------------------------------------
# One row per image


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
            raise LabelError(f"{file}: {len(ids):,} patient(s) with {what}: {_named(ids)}")
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


# ----------------------------------------------------------------------------------------------
# Images


def match_images(table: pd.DataFrame, raw_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Add the `image` path (relative to raw_dir); return the names of images that have no label."""
    images_dir = Path(raw_dir) / TRAIN_IMAGES
    if not images_dir.is_dir():
        raise LabelError(f"{images_dir} not found (the download stage writes it)")
    by_stem: dict[str, str] = {}
    duplicates = []
    with os.scandir(images_dir) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if entry.name.startswith(".") or suffix.lower() not in IMAGE_FILE_SUFFIXES:
                continue
            if stem in by_stem:
                duplicates.append(f"{by_stem[stem]} / {entry.name}")
            by_stem[stem] = entry.name
    if duplicates:
        raise LabelError(
            f"{images_dir}: {len(duplicates):,} patientId(s) have more than one image file: "
            f"{_named(sorted(duplicates))}"
        )
    missing = [pid for pid in table["patientId"] if pid not in by_stem]
    if missing:
        # RSNA ships every labelled image, so a gap means a broken download or a wrong folder:
        # dropping the rows silently would change the data set under the experiment
        raise LabelError(
            f"{len(missing):,} labelled patientId(s) have no image file "
            f"({'/'.join(IMAGE_FILE_SUFFIXES)}) in {images_dir}: {_named(missing)}"
        )
    labelled = set(table["patientId"])
    unlabelled = sorted(name for stem, name in by_stem.items() if stem not in labelled)
    out = table.copy()
    out["image"] = [f"{TRAIN_IMAGES}/{by_stem[pid]}" for pid in table["patientId"]]
    return out, unlabelled


class _PydicomLogCounter(logging.Filter):
    """Drops pydicom's per-file log warnings (they would flood the stage's log) and counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        self.counts[record.getMessage().split(":")[0]] += 1
        return False


def read_headers(
    paths: Sequence[Path],
    workers: int = 8,
    reader: Callable[[Path], ImageMeta] = read_meta,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """View / sex / age per path (empty where unknown) and {path: reason} for unreadable ones."""
    counter = _PydicomLogCounter()
    pydicom_log = logging.getLogger("pydicom")
    pydicom_log.addFilter(counter)
    start = time.perf_counter()
    try:
        # read_meta's catch_warnings is not thread-safe (threads restore each other's filter
        # lists), so keep pydicom's warnings out for the whole pool as well
        with warnings.catch_warnings(), ThreadPoolExecutor(max(1, workers)) as pool:
            warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
            warnings.filterwarnings("ignore", message="Invalid value for VR")
            results = list(pool.map(lambda p: _read_one(p, reader), paths))
    finally:
        pydicom_log.removeFilter(counter)
    unreadable = {str(p): r for p, (m, r) in zip(paths, results, strict=True) if r is not None}
    metas = [m for m, _ in results]
    meta = pd.DataFrame(
        {
            "view": [m.view if m.view in VIEWS else "" for m in metas],
            "sex": [m.sex if m.sex in SEXES else "" for m in metas],
            "age": pd.array([m.age for m in metas], dtype="Int64"),
        }
    )
    silenced = "; ".join(f"{n:,} x '{msg}'" for msg, n in counter.counts.most_common())
    log.info(
        "read %s headers in %.1f s (%d threads): view known %s, sex %s, age %s, unreadable %s%s",
        f"{len(paths):,}",
        time.perf_counter() - start,
        max(1, workers),
        f"{(meta['view'] != '').sum():,}",
        f"{(meta['sex'] != '').sum():,}",
        f"{meta['age'].notna().sum():,}",
        f"{len(unreadable):,}",
        f"; pydicom warnings silenced: {silenced}" if silenced else "",
    )
    return meta, unreadable


def _read_one(path: Path, reader: Callable[[Path], ImageMeta]) -> tuple[ImageMeta, str | None]:
    try:
        return reader(path), None
    except Exception as e:  # any broken header is recorded; preprocess rejects the file
        return ImageMeta(None, None, None), f"{type(e).__name__}: {e}"


# ----------------------------------------------------------------------------------------------
# The whole table


def build_table(
    raw_dir: Path, max_age: int, workers: int = 8
) -> tuple[pd.DataFrame, dict[str, int]]:
    """raw_dir -> one validated row per labelled image (the COLUMNS) and the flag counts."""
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
            _named(unlabelled),
        )
    meta, unreadable = read_headers([raw_dir / p for p in table["image"]], workers=workers)
    if unreadable:
        named = [f"{Path(p).name} ({r})" for p, r in unreadable.items()]
        log.warning(
            "%s unreadable header(s), view/sex/age left empty: %s",
            f"{len(unreadable):,}",
            _named(named),
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
            _named(ages),
        )
    flags = {
        "impossible_age": n_flagged,
        "images_without_labels": len(unlabelled),
        "unreadable_header": len(unreadable),
    }
    return table[COLUMNS], flags


def flag_ages(age: pd.Series, max_age: int) -> pd.Series:
    """1 where the age is known and above max_age (a data error such as RSNA's 155), else 0."""
    return (age > max_age).fillna(False).astype(int)


# ----------------------------------------------------------------------------------------------
# Split


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


# ----------------------------------------------------------------------------------------------
# Summary and outputs


def class_key(name: str) -> str:
    """A short, stable metrics key for a class ("No Lung Opacity / Not Normal" -> not_normal)."""
    if name in CLASS_KEYS:
        return CLASS_KEYS[name]
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "unnamed"


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


def write_splits(splits: dict[str, pd.DataFrame], out_dir: Path) -> None:
    """Write <split>.csv files into a temporary folder, then swap it in for out_dir."""
    with atomic_dir(out_dir) as tmp:
        for name in SPLITS:
            with (tmp / f"{name}.csv").open("w", newline="") as f:
                splits[name][COLUMNS].to_csv(f, index=False, lineterminator="\n")


def read_split(path: Path) -> pd.DataFrame:
    """Read data/split/<split>.csv with its dtypes: ids as text, age as nullable Int64."""
    path = Path(path)
    with path.open() as f:
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
    if list(df.columns) != COLUMNS:
        raise LabelError(f"{path}: columns {list(df.columns)} != expected {COLUMNS}")
    df["target"] = df["target"].astype(int)
    df["age_flag"] = df["age_flag"].astype(int)
    df["age"] = pd.array([int(a) if a != "" else None for a in df["age"]], dtype="Int64")
    return df
