"""The preprocess stage's crash-surviving process pool: chunks of files converted in workers.

Each worker reads, checks and fits the files of its chunk (``pneumo.imaging.load_square``) and
writes them straight into their rows of the split's memory-mapped ``.npy``, so memory does not
grow with the number of images. A file that crashes or hangs its decoder kills one worker: the
chunks that had started are rerun alone, then file by file, to reject only the culprit.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
from collections import Counter
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.image_io.errors import ImageReadError
from pneumo.imaging import SquareTransform, histogram_u8, load_square
from pneumo.progress import Progress
from pneumo.workers import die_with_parent, process_pool


@dataclass(frozen=True)
class Chunk:
    """One worker task: rows of one split, their files, and how to fit them."""

    split: str
    npy: str
    rows: tuple[int, ...]
    paths: tuple[str, ...]
    size: int
    mode: str
    timeout_s: int
    marker: str = ""  # touched when a worker starts the chunk, to find the culprit of a crash


@dataclass
class ChunkResult:
    """Per row its box transform or why it was rejected; the reader's notes; a pixel histogram."""

    transforms: dict[int, SquareTransform] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    notes: Counter = field(default_factory=Counter)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))


def _convert_chunk(task: Chunk) -> ChunkResult:
    """Worker: read, fit and write each file of the chunk into its row of the split's memmap."""
    result = ChunkResult()
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
            result.histogram += histogram_u8(sq.image)
    finally:
        # no flush: the rows are in the shared page cache, which the stage reads them back
        # from; msync would only make each worker wait for the disk (0.15 ms an image)
        del out
    return result


def _child_main(task: Chunk, conn: Any, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    try:
        conn.send(_convert_chunk(task))
    finally:
        conn.close()


def _run_isolated(task: Chunk, ctx: Any) -> tuple[ChunkResult | None, int | None]:
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


def _recover_chunk(task: Chunk, ctx: Any) -> ChunkResult:
    """A chunk whose worker died: rerun it alone, then file by file to name the culprit."""
    result, _ = _run_isolated(task, ctx)
    if result is not None:
        return result
    merged = ChunkResult()
    for row, path in zip(task.rows, task.paths, strict=True):
        one, code = _run_isolated(replace(task, rows=(row,), paths=(path,)), ctx)
        if one is None:
            one = ChunkResult(rejected={row: _death_reason(code, task.timeout_s)})
        _merge(merged, one)
    return merged


def _merge(into: ChunkResult, part: ChunkResult) -> None:
    into.transforms.update(part.transforms)
    into.rejected.update(part.rejected)
    into.notes.update(part.notes)
    into.histogram += part.histogram


def _mp_context() -> Any:
    # fork starts workers in milliseconds and they need only this module's imports; it is safe
    # because the stage process runs no threads (no torch, no OpenMP, no tqdm monitor) to copy
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def convert_chunks(tasks: list[Chunk], workers: int, progress: bool) -> list[ChunkResult]:
    """Run every chunk in a process pool; survive workers that crash or hang."""
    ctx = _mp_context()
    results: list[ChunkResult | None] = [None] * len(tasks)
    rejected = 0
    with (
        tempfile.TemporaryDirectory(prefix="preprocess-started-") as markers,
        Progress(
            sum(len(t.rows) for t in tasks), "preprocess: convert", "images", enabled=progress
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
                    bar.update(len(tasks[i].rows), rejected=rejected)
            # the chunks that had started hold the culprit: isolate them; rerun the rest in a
            # fresh pool, so one bad file neither stops the stage nor its parallelism
            started = [i for i in broken if os.path.exists(tasks[i].marker)]
            for i in started:
                results[i] = _recover_chunk(tasks[i], ctx)
                rejected += len(results[i].rejected)
                bar.update(len(tasks[i].rows))
            pending = [i for i in broken if i not in started]
    return [r for r in results if r is not None]
