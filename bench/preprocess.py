"""Benchmark: the preprocess stage against the reference pipelines' conversion loop.

Generates RSNA-format 1024 x 1024 JPEG DICOMs with the synthetic generator, then times, in the
same run and on the same (page-cached) files:

- the reference loop, one process: ``pydicom.dcmread(f).pixel_array / 255``, ``cv2.resize`` to
  224, ``np.save`` of one float16 ``.npy`` per image;
- this project's stage, ``pneumo.preprocessing.build_cache`` over all cores (224 px, pad), the same
  library call ``src/preprocess.py`` makes.

Prints both rates, their ratio and the peak memory (sum of the RSS of the process and all its
children, sampled every 20 ms) of each. Targets: ratio >= 1.8 on 2 cores, stage peak < 1 GB.

    python bench/preprocess.py            # 2,000 images
    python bench/preprocess.py --n 500 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import psutil
import pydicom

from pneumo.preprocessing import build_cache
from pneumo.split_schema import PREPROCESS_COLUMNS
from pneumo.synthetic import generate
from pneumo.workers import available_cores

TARGET_RATIO = 1.8
TARGET_PEAK_MB = 1024


class PeakRss:
    """Samples the summed RSS of this process and its descendants in a background thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a worker that just exited
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def timed(fn: Callable[[], object]) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of one call."""
    with PeakRss() as mem:
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
    return seconds, mem.peak


def reference_loop(files: list[Path], out_dir: Path, size: int) -> None:
    """The reference pipelines' conversion: one float16 .npy per image, one process."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in files:
        img = pydicom.dcmread(f).pixel_array / 255
        img = cv2.resize(img, (size, size))
        np.save(out_dir / f"{f.stem}.npy", img.astype(np.float16))


def write_split(raw: Path, split_dir: Path) -> None:
    """Every image in train (val and test empty): the stage converts them all the same way."""
    split_dir.mkdir(parents=True, exist_ok=True)
    images = sorted((raw / "stage_2_train_images").glob("*.dcm"))
    for name in ("train", "val", "test"):
        with (split_dir / f"{name}.csv").open("w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(PREPROCESS_COLUMNS)
            for p in images if name == "train" else []:
                rel = p.relative_to(raw).as_posix()
                w.writerow([p.stem, p.stem, rel, 0, "Normal", "PA", "M", 50, json.dumps([])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="images to generate (default 2000)")
    ap.add_argument("--size", type=int, default=224, help="output size (default 224)")
    ap.add_argument("--workers", type=int, default=0, help="stage workers (0 = all cores)")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-preprocess-") as td:
        work = Path(td)
        raw = work / "raw"
        t0 = time.perf_counter()
        generate(raw, args.n, image_size=1024, seed=0, workers=0)
        print(
            f"generated {args.n} RSNA-format 1024x1024 JPEG DICOMs in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        files = sorted((raw / "stage_2_train_images").glob("*.dcm"))
        write_split(raw, work / "split")
        for f in files:  # both contenders read from the page cache
            f.read_bytes()

        ref_s, ref_peak = timed(lambda: reference_loop(files, work / "reference", args.size))
        workers = args.workers or available_cores()
        stage_s, stage_peak = timed(
            lambda: build_cache(
                raw,
                work / "split",
                work / "processed",
                image_size=args.size,
                resize_mode="pad",
                max_rejected_fraction=0.0,
                workers=workers,
                chunk_size=args.chunk_size,
                file_timeout_s=120,
                progress=False,
            )
        )
        out = np.load(work / "processed" / "train.npy", mmap_mode="r")
        assert out.shape == (len(files), args.size, args.size), out.shape

    ref_rate, stage_rate = len(files) / ref_s, len(files) / stage_s
    ratio = stage_rate / ref_rate
    mb = 1024 * 1024
    print(
        f"reference loop (1 process, float16 .npy per image): {ref_rate:7.1f} img/s "
        f"({ref_s:.1f} s, peak RSS {ref_peak / mb:.0f} MB)"
    )
    print(
        f"preprocess stage ({workers} workers, uint8 memmap): {stage_rate:7.1f} img/s "
        f"({stage_s:.1f} s, peak RSS {stage_peak / mb:.0f} MB)"
    )
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    print(f"ratio: {ratio:.2f}x (target >= {TARGET_RATIO}x: {verdict})")
    print(
        f"stage peak memory: {stage_peak / mb:.0f} MB (target < {TARGET_PEAK_MB} MB: "
        f"{'met' if stage_peak < TARGET_PEAK_MB * mb else 'MISSED'})"
    )
    print(f"machine: {psutil.cpu_count()} cores, load average {psutil.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
