"""``LabelError`` and the short lists of lines, rows or ids its messages name."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

MAX_NAMED = 5  # how many ids an error or warning names before "and N more"


class LabelError(ValueError):
    """The raw labels or images are inconsistent; the message names the file, line or patient."""


def at_lines(index: pd.Index) -> str:
    """The first CSV lines of ``index`` (line 1 is the header), and how many more."""
    lines = [f"line {i + 2}" for i in index[:MAX_NAMED]]
    return ", ".join(lines) + _more(len(index))


def at_rows(df: pd.DataFrame, index: pd.Index, values: pd.Series | None = None) -> str:
    """The first rows of ``index`` as line and patientId (and the bad value), and how many more."""
    parts = []
    for i in index[:MAX_NAMED]:
        part = f"line {df.at[i, 'line']} (patientId {df.at[i, 'patientId']}"
        if values is not None:
            part += f", value {values.at[i]!r}"
        parts.append(part + ")")
    return "; ".join(parts) + _more(len(index))


def _more(n: int) -> str:
    return f" and {n - MAX_NAMED:,} more" if n > MAX_NAMED else ""


def listed(ids: Sequence[str]) -> str:
    """The first ids, and how many more."""
    return ", ".join(map(str, ids[:MAX_NAMED])) + _more(len(ids))
