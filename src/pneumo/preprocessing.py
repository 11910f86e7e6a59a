"""The preprocess stage: data/raw + data/split -> data/processed, one uint8 (N, S, S) per split.

Every file goes through ``pneumo.imaging.load_square`` in the crash-surviving pool of
``pneumo.conversion``; this module plans the chunks, drops the rejected rows and writes the index
CSVs (boxes in the S frame), ``stats.json`` and ``rejected.csv``, all swapped in at once.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.atomic import atomic_dir
from pneumo.boxes import parse_boxes
from pneumo.conversion import Chunk, convert_chunks
from pneumo.imaging import SquareTransform
from pneumo.split_schema import PREPROCESS_COLUMNS, SPLITS
from pneumo.workers import n_workers

INDEX_COLUMNS = ("patientId", "groupId", "target", "class", "view", "sex", "age", "boxes")
REJECTED_COLUMNS = ("file", "patientId", "split", "reason")
_COPY_BLOCK = 256  # rows per block when compacting an array: ~13 MB at 224 px


class PreprocessError(Exception):
    """The preprocess inputs are unusable (a bad or empty split CSV, no readable train image)."""


class TooManyRejectedError(PreprocessError):
    """More than ``max_rejected_fraction`` of a split could not be read."""


@dataclass(frozen=True)
class SplitRow:
    """One image of a split CSV: the fields that may leave data/raw, plus its path."""

    fields: dict[str, str]  # INDEX_COLUMNS except boxes, verbatim
    image: str  # relative to data/raw
    boxes: np.ndarray  # (K, 4) xywh in the original image's pixels


def read_split_csv(path: Path) -> list[SplitRow]:
    """A split CSV (split stage output) -> rows; errors name the file, row and column."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in PREPROCESS_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise PreprocessError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = []
            for line, rec in enumerate(reader, start=2):
                if not rec["image"] or not rec["patientId"]:
                    raise PreprocessError(f"{path} line {line}: empty patientId or image")
                fields = {c: rec[c] or "" for c in INDEX_COLUMNS if c != "boxes"}
                boxes = parse_boxes(rec["boxes"], f"{path} line {line}")
                rows.append(SplitRow(fields, rec["image"], boxes))
    except FileNotFoundError:
        raise PreprocessError(f"{path} not found (run the split stage first)") from None
    except ValueError as e:  # a boxes cell
        raise PreprocessError(str(e)) from None
    return rows


def _safe_relative(image: str) -> bool:
    norm = os.path.normpath(image)
    return not os.path.isabs(norm) and norm != ".." and not norm.startswith(".." + os.sep)


@dataclass
class _SplitResult:
    rows: list[SplitRow]
    transforms: dict[int, SquareTransform] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))


def build_cache(
    raw_dir: Path,
    split_dir: Path,
    out_dir: Path,
    *,
    image_size: int,
    resize_mode: str,
    max_rejected_fraction: float,
    workers: int,
    chunk_size: int,
    file_timeout_s: int,
    progress: bool = True,
) -> dict[str, Any]:
    """data/raw + data/split -> data/processed (arrays, index CSVs, stats.json, rejected.csv).

    Everything is built in a pid-named sibling folder (``atomic_dir``) and swapped in when
    complete. When more than ``max_rejected_fraction`` of a split is rejected, ``out_dir`` holds
    only rejected.csv and ``TooManyRejectedError`` says how many and where to look. Returns a
    summary dict.
    """
    raw_dir, split_dir, out_dir = Path(raw_dir), Path(split_dir), Path(out_dir)
    splits = {name: _SplitResult(read_split_csv(split_dir / f"{name}.csv")) for name in SPLITS}
    if not splits["train"].rows:
        raise PreprocessError(f"{split_dir / 'train.csv'} has no rows")
    workers = n_workers(workers)

    with atomic_dir(out_dir) as tmp:
        chunks = _plan_chunks(
            tmp, splits, raw_dir, image_size, resize_mode, chunk_size, file_timeout_s
        )
        notes: Counter = Counter()
        for chunk, res in zip(chunks, convert_chunks(chunks, workers, progress), strict=True):
            split = splits[chunk.split]
            split.transforms.update(res.transforms)
            split.rejected.update(res.rejected)
            split.histogram += res.histogram
            notes.update(res.notes)
        _write_rejected(tmp / "rejected.csv", splits)
        failures = _too_many_rejected(splits, max_rejected_fraction)
        if failures:  # only the list of rejected files is swapped in: nothing looks finished
            for name in SPLITS:
                (tmp / f"{name}.npy.part").unlink()
        else:
            stats = _write_outputs(tmp, splits, image_size, resize_mode)
    if failures:
        raise TooManyRejectedError(f"{'; '.join(failures)}; see {out_dir / 'rejected.csv'}")
    return {
        "splits": {
            name: {"images": len(s.rows), "kept": len(s.transforms), "rejected": len(s.rejected)}
            for name, s in splits.items()
        },
        "stats": stats,
        "notes": dict(notes),
        "workers": workers,
    }


def _plan_chunks(
    tmp: Path,
    splits: dict[str, _SplitResult],
    raw_dir: Path,
    size: int,
    mode: str,
    chunk_size: int,
    timeout_s: int,
) -> list[Chunk]:
    """Allocate each split's array in ``tmp`` and cut its readable rows into worker chunks."""
    chunks = []
    for name, split in splits.items():
        _allocate(tmp / f"{name}.npy.part", len(split.rows), size)
        todo = []
        for i, row in enumerate(split.rows):
            if _safe_relative(row.image):
                todo.append(i)
            else:
                split.rejected[i] = "image path points outside data/raw"
        for start in range(0, len(todo), chunk_size):
            rows = tuple(todo[start : start + chunk_size])
            paths = tuple(str(raw_dir / split.rows[i].image) for i in rows)
            npy = str(tmp / f"{name}.npy.part")
            chunks.append(Chunk(name, npy, rows, paths, size, mode, timeout_s))
    return chunks


def _write_outputs(
    tmp: Path, splits: dict[str, _SplitResult], size: int, mode: str
) -> dict[str, Any]:
    """The kept rows' arrays and index CSVs, and stats.json; returns the stats."""
    for name, split in splits.items():
        keep = sorted(split.transforms)
        _compact(tmp / f"{name}.npy.part", tmp / f"{name}.npy", keep, size)
        _write_index(tmp / f"{name}.csv", split, keep)
    train = splits["train"]
    stats = {
        **pixel_stats(train.histogram),
        "image_size": size,
        "resize_mode": mode,
        "n_train": len(train.transforms),
    }
    with (tmp / "stats.json").open("w") as f:
        json.dump(stats, f, indent=2)
        f.write("\n")
    return stats


def pixel_stats(histogram: np.ndarray) -> dict[str, float]:
    """Mean and (population) std of pixel values / 255 from a 256-bin histogram, exactly."""
    counts = [int(c) for c in histogram]
    n = sum(counts)
    if n == 0:
        raise PreprocessError("no training pixels to compute the mean and std from")
    # Python integers: exact over any number of images; the only rounding is the final division
    s1 = sum(v * c for v, c in enumerate(counts))
    s2 = sum(v * v * c for v, c in enumerate(counts))
    return {"mean": s1 / (n * 255), "std": math.sqrt(n * s2 - s1 * s1) / (n * 255)}


def _allocate(path: Path, n: int, size: int) -> None:
    if n == 0:  # a zero-length array cannot be memory-mapped
        _save_empty(path, size)
    else:
        np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size)).flush()


def _save_empty(path: Path, size: int) -> None:
    with path.open("wb") as f:  # a file object: np.save would append ".npy" to a path
        np.save(f, np.zeros((0, size, size), np.uint8))


def _compact(part: Path, final: Path, keep: list[int], size: int) -> None:
    """Drop rejected rows: rename when none, else copy kept rows block by block (flat memory)."""
    src = np.load(part, mmap_mode="r")
    n = src.shape[0]
    if len(keep) == n:
        del src
        os.replace(part, final)
        return
    if not keep:
        del src
        _save_empty(final, size)
    else:
        dst = np.lib.format.open_memmap(
            final, mode="w+", dtype=np.uint8, shape=(len(keep), size, size)
        )
        for start in range(0, len(keep), _COPY_BLOCK):
            block = keep[start : start + _COPY_BLOCK]
            dst[start : start + len(block)] = src[block]
        dst.flush()
        del dst, src
    part.unlink()


def _write_index(path: Path, split: _SplitResult, keep: Iterable[int]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=INDEX_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for i in keep:
            row = split.rows[i]
            boxes = split.transforms[i].apply_boxes(row.boxes)
            rounded = [[round(float(v), 3) for v in b] for b in boxes]
            writer.writerow({**row.fields, "boxes": json.dumps(rounded)})


def _write_rejected(path: Path, splits: dict[str, _SplitResult]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=REJECTED_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for name, split in splits.items():
            for i in sorted(split.rejected):
                row = split.rows[i]
                writer.writerow(
                    {
                        "file": row.image,
                        "patientId": row.fields["patientId"],
                        "split": name,
                        "reason": split.rejected[i],
                    }
                )


def _too_many_rejected(splits: dict[str, _SplitResult], max_fraction: float) -> list[str]:
    failures = []
    for name, split in splits.items():
        n, bad = len(split.rows), len(split.rejected)
        if n and bad / n > max_fraction:
            failures.append(
                f"{bad} of {n} images of the {name} split were rejected ({bad / n:.1%} > "
                f"preprocess.max_rejected_fraction {max_fraction:.1%})"
            )
    return failures


def print_summary(summary: dict[str, Any], out_dir: Path, file: Any = sys.stderr) -> None:
    """One line per split, the stats and the reader's notes, for the stage log."""
    for name, s in summary["splits"].items():
        print(f"{name}: {s['kept']} of {s['images']} images ({s['rejected']} rejected)", file=file)
    st = summary["stats"]
    print(f"train mean {st['mean']:.4f} std {st['std']:.4f} -> {out_dir}", file=file)
    for note, count in sorted(summary["notes"].items(), key=lambda kv: -kv[1]):
        print(f"note: {count} x {note}", file=file)
