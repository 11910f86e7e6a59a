"""View, sex and age of every image from its DICOM header, read in threads, pydicom quiet."""

from __future__ import annotations

import collections
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from pneumo.image_io.header import ImageMeta, read_meta
from pneumo.progress import track

log = logging.getLogger(__name__)

VIEWS = ("PA", "AP")
SEXES = ("M", "F")


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
            results = list(
                track(
                    pool.map(lambda p: _read_one(p, reader), paths),
                    "split: read",
                    "headers",
                    total=len(paths),
                )
            )
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
