"""Benchmark: the preprocess stage against the reference pipelines' loop and its own ceiling.

Generates RSNA-format 1024 x 1024 JPEG DICOMs with the synthetic generator (``--dir`` keeps them
for the next run), then times, in the same run and on the same page-cached files:

- the reference loop, one process: ``pydicom.dcmread(f).pixel_array / 255``, ``cv2.resize`` to
  224, ``np.save`` of one float16 ``.npy`` per image;
- this project's stage, ``pneumo.preprocessing.build_cache`` over all cores (224 px, pad), the same
  library call ``src/preprocess.py`` makes;
- the decode ceiling: the same cores doing nothing but getting the pixels out: ``dcmread``, the
  JPEG frame, libjpeg's decode at the stage's DCT scale; no checks, resize or writes.

Prints the three rates, the stage's ratio to the reference (target >= 3) and to the ceiling
(target >= 0.8), the peak memory (sum of the RSS of the process and all its children, sampled
every 20 ms) of each, and the quality cost of the DCT-scaled decode: the mean absolute difference
per pixel from a full decode plus area resize (Pillow's, the stage's before; and cv2's
INTER_AREA), over the first 200 files.

``--files N`` (RSNA scale: 26684) makes the stage run over N files, copies of the generated ones
under new names, and skips the reference loop unless ``--reference`` is given.

    python bench/preprocess.py                                 # 2,000 images
    python bench/preprocess.py --n 500 --workers 2 --dir /tmp/pb
    python bench/preprocess.py --n 2000 --files 26684 --dir /tmp/pb
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import multiprocessing
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import psutil
import pydicom
from PIL import Image
from pydicom.encaps import generate_frames

from pneumo.image_io.read import read_image
from pneumo.imaging import dct_scale, fit_to_square, load_for_model
from pneumo.preprocessing import build_cache
from pneumo.split_schema import PREPROCESS_COLUMNS
from pneumo.synthetic import generate
from pneumo.workers import available_cores

TARGET_RATIO = 3.0
TARGET_CEILING = 0.8
TARGET_PEAK_MB = 1024
QUALITY_FILES = 200


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


def _decode_only(chunk: list[str], scale: int) -> int:
    """Ceiling worker: the pixels of each file at the stage's DCT scale, and nothing else."""
    for f in chunk:
        frame = next(generate_frames(pydicom.dcmread(f).PixelData, number_of_frames=1))
        with Image.open(io.BytesIO(frame)) as im:
            w, h = im.size
            im.draft("L", (w // scale, h // scale))
            im.load()
    return len(chunk)


def decode_ceiling(files: list[Path], workers: int, scale: int, chunk_size: int) -> None:
    """Every file decoded by ``workers`` forked processes, chunk by chunk."""
    chunks = [[str(f) for f in files[i : i + chunk_size]] for i in range(0, len(files), chunk_size)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        done = sum(pool.starmap(_decode_only, [(c, scale) for c in chunks]))
    assert done == len(files)


def quality(files: list[Path], size: int) -> dict[str, float]:
    """Mean |difference| per pixel of the stage's pixels from full decodes resized by area."""
    diffs: dict[str, list[float]] = {"pillow": [], "cv2": []}
    for f in files:
        stage = load_for_model(f, size, "pad").astype(np.int16)
        full = read_image(f)  # no scale request: the whole image, as the stage decoded before
        pil = fit_to_square(full, size, "pad")[0].astype(np.int16)
        area = cv2.resize(full, (size, size), interpolation=cv2.INTER_AREA).astype(np.int16)
        diffs["pillow"].append(float(np.abs(stage - pil).mean()))
        diffs["cv2"].append(float(np.abs(stage - area).mean()))
    return {k: float(np.mean(v)) for k, v in diffs.items()} | {
        f"{k}_max": float(np.max(v)) for k, v in diffs.items()
    }


def write_split(raw: Path, split_dir: Path, images: list[Path]) -> None:
    """Every image in train (val and test empty): the stage converts them all the same way."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val", "test"):
        with (split_dir / f"{name}.csv").open("w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(PREPROCESS_COLUMNS)
            for p in images if name == "train" else []:
                rel = p.relative_to(raw).as_posix()
                w.writerow([p.stem, p.stem, rel, 0, "Normal", "PA", "M", 50, json.dumps([])])


def generated(work: Path, n: int, size: int) -> Path:
    """n RSNA-format DICOMs of ``size`` px, generated once per work dir."""
    raw = work / f"raw-{n}-{size}"
    if not raw.exists():
        t0 = time.perf_counter()
        generate(raw, n, image_size=size, seed=0, workers=0)
        print(
            f"generated {n} RSNA-format {size}x{size} JPEG DICOMs in "
            f"{time.perf_counter() - t0:.1f} s"
        )
    return raw


def copies(raw: Path, files: list[Path], total: int) -> list[Path]:
    """``total`` files: the generated ones, then copies of them under new names (once)."""
    out = list(files)
    extra = raw / "copies"
    extra.mkdir(exist_ok=True)
    for i in range(total - len(files)):
        dst = extra / f"copy{i:06d}.dcm"
        if not dst.exists():
            shutil.copyfile(files[i % len(files)], dst)
        out.append(dst)
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, tuple[float, int]]:
    raw = generated(args.dir or work, args.n, 1024)
    files = sorted((raw / "stage_2_train_images").glob("*.dcm"))
    if args.files > len(files):
        files = copies(raw, files, args.files)
    write_split(raw, work / "split", files)
    for f in files:  # every contender reads from the page cache
        f.read_bytes()
    workers = args.workers or available_cores()
    scale = dct_scale(1024, 1024, args.size, "pad")
    print(f"{len(files)} files, {args.size} px: DCT scale 1/{scale}, {workers} workers")
    times = {}
    if args.reference or args.files <= args.n:
        times["reference"] = timed(lambda: reference_loop(files, work / "reference", args.size))
    times["ceiling"] = timed(lambda: decode_ceiling(files, workers, scale, args.chunk_size))
    times["stage"] = timed(
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
    del out
    if not args.no_quality:
        q = quality(files[:QUALITY_FILES], args.size)
        print(
            f"quality, stage vs full decode + area resize, mean |diff| per pixel over "
            f"{min(QUALITY_FILES, len(files))} files (0-255): Pillow's {q['pillow']:.3f} "
            f"(worst file {q['pillow_max']:.3f}), cv2 INTER_AREA {q['cv2']:.3f} "
            f"(worst {q['cv2_max']:.3f})"
        )
    return {k: (len(files) / s, peak) for k, (s, peak) in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="images to generate (default 2000)")
    ap.add_argument("--files", type=int, default=0, help="files for the stage (copies; 0 = n)")
    ap.add_argument("--size", type=int, default=224, help="output size (default 224)")
    ap.add_argument("--workers", type=int, default=0, help="stage workers (0 = all cores)")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=None, help="keep generated files here")
    ap.add_argument("--reference", action="store_true", help="time the reference with --files")
    ap.add_argument("--no-quality", action="store_true", help="skip the quality comparison")
    args = ap.parse_args()
    load0 = psutil.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-preprocess-") as td:
        rates = run(args, Path(td))
    mb = 1024 * 1024
    names = {
        "reference": "reference loop (1 process, float16 .npy per image)",
        "ceiling": "decode ceiling (pool, dcmread + DCT-scaled decode only)",
        "stage": "preprocess stage (uint8 memmap, checks, resize)",
    }
    for key, (rate, peak) in rates.items():
        print(f"{names[key]:58s} {rate:7.1f} img/s, peak RSS {peak / mb:5.0f} MB")
    stage, peak = rates["stage"]
    verdicts = []
    if "reference" in rates:
        ratio = stage / rates["reference"][0]
        ok = "met" if ratio >= TARGET_RATIO else "MISSED"
        verdicts.append(f"stage / reference {ratio:.2f}x (target >= {TARGET_RATIO}: {ok})")
    frac = stage / rates["ceiling"][0]
    verdicts.append(
        f"stage / ceiling {frac:.2f} (target >= {TARGET_CEILING}: "
        f"{'met' if frac >= TARGET_CEILING else 'MISSED'})"
    )
    verdicts.append(
        f"stage peak {peak / mb:.0f} MB (target < {TARGET_PEAK_MB}: "
        f"{'met' if peak < TARGET_PEAK_MB * mb else 'MISSED'})"
    )
    print("\n".join(verdicts))
    print(
        f"machine: {psutil.cpu_count()} cores, load average {load0:.2f} before, "
        f"{psutil.getloadavg()[0]:.2f} after"
    )


if __name__ == "__main__":
    main()
