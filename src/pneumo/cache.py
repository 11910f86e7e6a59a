"""The npy cache: every image brought to S x S and written into one uint8 array per split.

``fit_to_square`` is the one geometric transform (pad / crop / stretch) and ``SquareTransform``
moves boxes exactly as it moves pixels; ``load_for_model`` (read + fit) is the one preprocessing
path, shared by the preprocess stage and single-image prediction. ``build_cache`` is the stage:
a process pool converts chunks of files, each worker writing its rows straight into the split's
memory-mapped ``.npy``, so memory does not grow with the number of images.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from pneumo.atomic import remove, swap_in
from pneumo.dicom import ImageReadError, read_image_with_notes
from pneumo.workers import die_with_parent, n_workers, process_pool

RESIZE_MODES = ("pad", "crop", "stretch")
SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ("patientId", "groupId", "image", "target", "class", "view", "sex", "age", "boxes")
INDEX_COLUMNS = ("patientId", "groupId", "target", "class", "view", "sex", "age", "boxes")
REJECTED_COLUMNS = ("file", "patientId", "split", "reason")
# Pillow's BILINEAR resize is a true area filter when shrinking (its support widens with the
# scale factor), so 1024 -> 224 is antialiased; about 1.5 ms per RSNA image on one core.
RESAMPLE = Image.Resampling.BILINEAR
_COPY_BLOCK = 256  # rows per block when compacting an array: ~13 MB at 224 px
# Degenerate inputs, refused by prediction and rejected by preprocess. Chest radiographs are
# 1000 px and more (RSNA 1024, Kermany 1000 to 2000): below MIN_SIDE nothing of one survives.
# A radiograph spans most of the gray scale: when the 1st to 99th percentiles lie within
# MIN_SPREAD gray levels the image is blank, a flat test card or an empty frame.
MIN_SIDE = 32
MIN_SPREAD = 8


class PreprocessError(Exception):
    """The preprocess inputs are unusable (bad split CSV, bad arguments)."""


class TooManyRejectedError(PreprocessError):
    """More than ``max_rejected_fraction`` of a split could not be read."""


# ----------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class SquareTransform:
    """Maps original pixel coordinates into the S x S frame: ``x' = x * scale_x + offset_x``.

    Coordinates are pixel edges (RSNA's x, y is a box's top-left corner), which is also how
    Pillow's resize places pixels, so a box drawn on the input covers the same pixels after.
    """

    size: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def apply_boxes(self, boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """(K, 4) xywh in original pixels -> (K', 4) xywh in the S frame, clipped to the frame.

        A box partly outside the frame (crop mode, or a box past the image border) is clipped;
        a box left with no area is dropped, so K' <= K.
        """
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        x0 = np.clip(b[:, 0] * self.scale_x + self.offset_x, 0, self.size)
        y0 = np.clip(b[:, 1] * self.scale_y + self.offset_y, 0, self.size)
        x1 = np.clip((b[:, 0] + b[:, 2]) * self.scale_x + self.offset_x, 0, self.size)
        y1 = np.clip((b[:, 1] + b[:, 3]) * self.scale_y + self.offset_y, 0, self.size)
        keep = (x1 > x0) & (y1 > y0)
        return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)[keep]

    def invert_boxes(self, boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """(K, 4) xywh in the S frame -> original pixels (no clipping), to draw on the input."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        x = (b[:, 0] - self.offset_x) / self.scale_x
        y = (b[:, 1] - self.offset_y) / self.scale_y
        return np.stack([x, y, b[:, 2] / self.scale_x, b[:, 3] / self.scale_y], axis=1)


def fit_to_square(img: np.ndarray, size: int, mode: str) -> tuple[np.ndarray, SquareTransform]:
    """2-D uint8 -> (size, size) uint8: letterbox (pad), centre crop (crop) or resize (stretch)."""
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {img.dtype} {img.shape}")
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    h, w = img.shape
    im = Image.fromarray(img)
    if mode == "stretch":
        out = np.asarray(im.resize((size, size), RESAMPLE))
        return out, SquareTransform(size, size / w, size / h, 0.0, 0.0)
    if mode == "crop":
        side = min(w, h)
        x0, y0 = (w - side) / 2, (h - side) / 2
        # resizing straight from the (possibly half-pixel) centre square keeps the mapping exact
        out = np.asarray(im.resize((size, size), RESAMPLE, box=(x0, y0, x0 + side, y0 + side)))
        s = size / side
        return out, SquareTransform(size, s, s, -x0 * s, -y0 * s)
    longest = max(w, h)
    nw, nh = max(1, round(w * size / longest)), max(1, round(h * size / longest))
    ox, oy = (size - nw) // 2, (size - nh) // 2
    out = np.zeros((size, size), np.uint8)
    out[oy : oy + nh, ox : ox + nw] = np.asarray(im.resize((nw, nh), RESAMPLE))
    # scale from the rounded size actually drawn, so boxes follow the pixels to the last 0.5 px
    return out, SquareTransform(size, nw / w, nh / h, float(ox), float(oy))


@dataclass(frozen=True)
class SquareImage:
    """One file as the model sees it, with the transform its boxes need and the reader's notes."""

    image: np.ndarray  # (S, S) uint8
    transform: SquareTransform
    notes: tuple[str, ...] = ()


def check_usable(image: np.ndarray, path: str | Path) -> None:
    """Refuse (``ImageReadError``) an image too small or too flat to be a radiograph."""
    h, w = image.shape
    if min(h, w) < MIN_SIDE:
        raise ImageReadError(
            path, f"{w} x {h} pixels: below the {MIN_SIDE}-pixel minimum side of an X-ray"
        )
    step = max(1, int(math.sqrt(h * w / 1_000_000)))  # about a million pixels are enough
    lo, hi = np.percentile(image[::step, ::step], [1, 99])
    if hi - lo < MIN_SPREAD:
        raise ImageReadError(
            path,
            f"a blank or nearly constant image (98 % of its pixels within {hi - lo:.0f} gray "
            f"levels, fewer than {MIN_SPREAD})",
        )


def load_square(path: str | Path, size: int, mode: str) -> SquareImage:
    """read_image + check_usable + fit_to_square, keeping the transform and the reader's notes."""
    read = read_image_with_notes(path)
    check_usable(read.image, path)
    image, transform = fit_to_square(read.image, size, mode)
    return SquareImage(image, transform, read.notes)


def load_for_model(path: str | Path, size: int, mode: str) -> np.ndarray:
    """The (S, S) uint8 array the cache holds for this file; raises ``ImageReadError``."""
    return load_square(path, size, mode).image


# ----------------------------------------------------------------------------------------------
# Split files


@dataclass(frozen=True)
class SplitRow:
    """One image of a split CSV: the fields that may leave data/raw, plus its path."""

    fields: dict[str, str]  # INDEX_COLUMNS except boxes, verbatim
    image: str  # relative to data/raw
    boxes: list[list[float]]


def read_split_csv(path: Path) -> list[SplitRow]:
    """A split CSV (split stage output) -> rows; errors name the file, row and column."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in SPLIT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise PreprocessError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = []
            for line, rec in enumerate(reader, start=2):
                if not rec["image"] or not rec["patientId"]:
                    raise PreprocessError(f"{path} line {line}: empty patientId or image")
                fields = {c: rec[c] or "" for c in INDEX_COLUMNS if c != "boxes"}
                rows.append(SplitRow(fields, rec["image"], _parse_boxes(rec["boxes"], path, line)))
    except FileNotFoundError:
        raise PreprocessError(f"{path} not found (run the split stage first)") from None
    return rows


def _parse_boxes(text: str | None, path: Path, line: int) -> list[list[float]]:
    try:
        boxes = json.loads(text or "[]")
        if not isinstance(boxes, list) or any(
            not isinstance(b, list) or len(b) != 4 or not all(_is_number(v) for v in b)
            for b in boxes
        ):
            raise ValueError("expected a JSON list of [x, y, w, h]")
    except ValueError as e:
        raise PreprocessError(f"{path} line {line}: boxes {text!r}: {e}") from None
    return [[float(v) for v in b] for b in boxes]


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _safe_relative(image: str) -> bool:
    norm = os.path.normpath(image)
    return not os.path.isabs(norm) and norm != ".." and not norm.startswith(".." + os.sep)


# ----------------------------------------------------------------------------------------------
# Workers


@dataclass(frozen=True)
class _Task:
    split: str
    npy: str
    rows: tuple[int, ...]
    paths: tuple[str, ...]
    size: int
    mode: str
    timeout_s: int
    marker: str = ""  # touched when a worker starts the chunk, to find the culprit of a crash


@dataclass
class _ChunkResult:
    transforms: dict[int, SquareTransform] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    notes: Counter = field(default_factory=Counter)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))


def _convert_chunk(task: _Task) -> _ChunkResult:
    """Worker: read, fit and write each file of the chunk into its row of the split's memmap."""
    result = _ChunkResult()
    if task.marker:
        Path(task.marker).touch()
    # each worker maps the file itself: a memmap passed to a pool arrives as a pickled copy
    out = np.load(task.npy, mmap_mode="r+")
    alarm = task.timeout_s > 0 and hasattr(signal, "SIGALRM")
    try:
        for row, path in zip(task.rows, task.paths, strict=True):
            if alarm:
                # SIGALRM's default action ends the worker even inside a stuck C decoder; the
                # parent then finds the culprit in an isolated process (_run_isolated)
                signal.alarm(task.timeout_s)
            try:
                sq = load_square(path, task.size, task.mode)
            except ImageReadError as e:
                result.rejected[row] = e.reason
                continue
            except Exception as e:  # a bug or an exotic library failure: a row, not a dead stage
                message = " ".join(str(e).split())[:200]
                result.rejected[row] = f"internal error: {type(e).__name__}: {message}"
                continue
            finally:
                if alarm:
                    signal.alarm(0)
            out[row] = sq.image
            result.transforms[row] = sq.transform
            result.notes.update(sq.notes)
            result.histogram += np.bincount(sq.image.ravel(), minlength=256)
        out.flush()
    finally:
        del out
    return result


def _child_main(task: _Task, conn: Any, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    try:
        conn.send(_convert_chunk(task))
    finally:
        conn.close()


def _run_isolated(task: _Task, ctx: Any) -> tuple[_ChunkResult | None, int | None]:
    """Run one chunk in its own process; (None, exit code) if that process died."""
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(task, send, os.getpid()), daemon=True)
    proc.start()
    send.close()
    result = None
    try:
        # the alarm stops a stuck file; this bound only matters where SIGALRM does not exist
        if recv.poll(task.timeout_s * len(task.rows) + 60 if task.timeout_s else None):
            result = recv.recv()
    except (EOFError, OSError):
        result = None
    finally:
        recv.close()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return result, proc.exitcode


def _death_reason(code: int | None, timeout_s: int) -> str:
    if code is not None and code < 0:
        if -code == getattr(signal, "SIGALRM", None):
            return f"reading took longer than {timeout_s} s (worker stopped)"
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the decoder crashed the worker process ({name})"
    return f"the worker process died (exit code {code})"


def _recover_chunk(task: _Task, ctx: Any) -> _ChunkResult:
    """A chunk whose worker died: rerun it alone, then file by file to name the culprit."""
    result, _ = _run_isolated(task, ctx)
    if result is not None:
        return result
    merged = _ChunkResult()
    for row, path in zip(task.rows, task.paths, strict=True):
        one, code = _run_isolated(replace(task, rows=(row,), paths=(path,)), ctx)
        if one is None:
            one = _ChunkResult(rejected={row: _death_reason(code, task.timeout_s)})
        _merge(merged, one)
    return merged


def _merge(into: _ChunkResult, part: _ChunkResult) -> None:
    into.transforms.update(part.transforms)
    into.rejected.update(part.rejected)
    into.notes.update(part.notes)
    into.histogram += part.histogram


class _Bar(tqdm):
    # no monitor thread: the pool forks workers, and forking a multi-threaded process is unsafe
    monitor_interval = 0


def _mp_context() -> Any:
    # fork starts workers in milliseconds and they need nothing but this module; it is safe here
    # because the stage process runs no threads (no torch, no OpenMP, no tqdm monitor) to copy
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def _run_tasks(tasks: list[_Task], workers: int, progress: bool) -> list[_ChunkResult]:
    """Run every chunk in a process pool; survive workers that crash or hang."""
    ctx = _mp_context()
    results: list[_ChunkResult | None] = [None] * len(tasks)
    rejected = 0
    with (
        tempfile.TemporaryDirectory(prefix="preprocess-started-") as markers,
        _Bar(
            total=sum(len(t.rows) for t in tasks),
            unit="img",
            desc="preprocess",
            disable=not progress,
        ) as bar,
    ):
        tasks = [replace(t, marker=os.path.join(markers, str(i))) for i, t in enumerate(tasks)]
        pending = list(range(len(tasks)))
        while pending:
            broken = []
            with process_pool(min(workers, len(pending)), ctx) as pool:
                futures = {pool.submit(_convert_chunk, tasks[i]): i for i in pending}
                for fut in as_completed(futures):
                    i = futures[fut]
                    try:
                        results[i] = fut.result()
                    except BrokenProcessPool:
                        broken.append(i)  # every unfinished chunk, once one worker has died
                        continue
                    rejected += len(results[i].rejected)
                    bar.update(len(tasks[i].rows))
                    bar.set_postfix(rejected=rejected, refresh=False)
            # the chunks that had started hold the culprit: isolate them; rerun the rest in a
            # fresh pool, so one bad file neither stops the stage nor its parallelism
            started = [i for i in broken if os.path.exists(tasks[i].marker)]
            for i in started:
                results[i] = _recover_chunk(tasks[i], ctx)
                rejected += len(results[i].rejected)
                bar.update(len(tasks[i].rows))
            pending = [i for i in broken if i not in started]
    return [r for r in results if r is not None]


# ----------------------------------------------------------------------------------------------
# The stage


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
    workers: int = 0,
    chunk_size: int = 64,
    file_timeout_s: int = 120,
    progress: bool = True,
) -> dict[str, Any]:
    """data/raw + data/split -> data/processed (arrays, index CSVs, stats.json, rejected.csv).

    Everything is built in a hidden sibling directory and swapped in when complete. When more
    than ``max_rejected_fraction`` of a split is rejected, ``out_dir`` holds only rejected.csv
    and ``TooManyRejectedError`` says how many and where to look. Returns a summary dict.
    """
    raw_dir, split_dir, out_dir = Path(raw_dir), Path(split_dir), Path(out_dir)
    _check_args(image_size, resize_mode, max_rejected_fraction, workers, chunk_size, file_timeout_s)
    splits = {name: _SplitResult(read_split_csv(split_dir / f"{name}.csv")) for name in SPLITS}
    if not splits["train"].rows:
        raise PreprocessError(f"{split_dir / 'train.csv'} has no rows")
    workers = n_workers(workers)

    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    remove(tmp)
    tmp.mkdir(parents=True)
    try:
        tasks = []
        for name, split in splits.items():
            _allocate(tmp / f"{name}.npy.part", len(split.rows), image_size)
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
                tasks.append(_Task(name, npy, rows, paths, image_size, resize_mode, file_timeout_s))
        notes: Counter = Counter()
        for task, res in zip(tasks, _run_tasks(tasks, workers, progress), strict=True):
            split = splits[task.split]
            split.transforms.update(res.transforms)
            split.rejected.update(res.rejected)
            split.histogram += res.histogram
            notes.update(res.notes)

        _write_rejected(tmp / "rejected.csv", splits)
        failures = _too_many_rejected(splits, max_rejected_fraction)
        if failures:
            for name in SPLITS:
                (tmp / f"{name}.npy.part").unlink()
            swap_in(tmp, out_dir)
            raise TooManyRejectedError(f"{'; '.join(failures)}; see {out_dir / 'rejected.csv'}")

        for name, split in splits.items():
            keep = sorted(split.transforms)
            _compact(tmp / f"{name}.npy.part", tmp / f"{name}.npy", keep, image_size)
            _write_index(tmp / f"{name}.csv", split, keep)
        train = splits["train"]
        stats = {
            **pixel_stats(train.histogram),
            "image_size": image_size,
            "resize_mode": resize_mode,
            "n_train": len(train.transforms),
        }
        with (tmp / "stats.json").open("w") as f:
            json.dump(stats, f, indent=2)
            f.write("\n")
        swap_in(tmp, out_dir)
    finally:
        remove(tmp)
    return {
        "splits": {
            name: {"images": len(s.rows), "kept": len(s.transforms), "rejected": len(s.rejected)}
            for name, s in splits.items()
        },
        "stats": stats,
        "notes": dict(notes),
        "workers": workers,
    }


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


def _check_args(size: int, mode: str, frac: float, workers: int, chunk: int, timeout: int) -> None:
    if mode not in RESIZE_MODES:
        raise PreprocessError(f"preprocess.resize_mode={mode!r}; choose one of {RESIZE_MODES}")
    if not 8 <= size <= 4096:
        raise PreprocessError(f"preprocess.image_size={size} must be between 8 and 4096")
    if not 0.0 <= frac <= 1.0:
        raise PreprocessError(f"preprocess.max_rejected_fraction={frac} must be in [0, 1]")
    if workers < 0 or chunk < 1 or timeout < 0:
        raise PreprocessError(
            f"preprocess.workers={workers} must be >= 0, chunk_size={chunk} >= 1, "
            f"file_timeout_s={timeout} >= 0"
        )


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
            boxes = split.transforms[i].apply_boxes(row.boxes) if row.boxes else np.zeros((0, 4))
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
