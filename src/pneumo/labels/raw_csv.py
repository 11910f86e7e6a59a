"""The labels CSV and the detailed-class CSV, read as text and validated row by row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pneumo.labels.errors import LabelError, at_lines, at_rows
from pneumo.rsna import CLASS_INFO_COLUMNS, CLASS_INFO_CSV, LABEL_COLUMNS, LABELS_CSV

BOX_COLUMNS = ["x", "y", "width", "height"]
# RSNA's detailed classes and the Target each implies; other class names (folder source) are free.
RSNA_CLASS_TARGET = {"Lung Opacity": 1, "No Lung Opacity / Not Normal": 0, "Normal": 0}


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
        raise LabelError(f"{path}: empty patientId on {at_lines(empty_id)}")
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
        raise LabelError(f"{path}: {col} is not a finite number on {at_rows(df, bad, text)}")
    return values


def _parse_target(text: pd.Series, df: pd.DataFrame, path: Path) -> pd.Series:
    values = pd.to_numeric(text, errors="coerce")
    bad = text.index[~values.isin([0, 1])]
    if len(bad):
        raise LabelError(
            f"{path}: unknown Target value (expected 0 or 1) on {at_rows(df, bad, text)}"
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
            raise LabelError(f"{path}: {reason} on {at_rows(df, bad, values)}")
