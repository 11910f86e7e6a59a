"""Benchmark: the predict command and the web service, on both runtimes.

Uses ``data/model/model.pt`` and ``data/export/model.onnx`` when they exist, else a random-init
ResNet18 exported (and converted to ONNX) at the ``preprocess`` image size of params.yaml (speed
does not depend on the weights), and RSNA-format 1024 x 1024 JPEG DICOMs from the synthetic
generator. Prints, for onnxruntime (the default) and torch side by side:

1. cold start: ``python src/predict.py one.dcm --cam DIR`` in a new process (start, import, load,
   decode, forward, CAM, PNG), wall clock per run and a per-step breakdown; target <= 1.5 s on
   onnxruntime;
2. a folder of ``--n`` images: ``pneumo.file_inference.predict_files`` (decoding in background
   threads) against the bare model on in-memory uint8 arrays at the same batch size, and the
   ratio; target >= 0.9. Also the command itself over the folder, end to end;
3. the service (on ``--runtime``): a real uvicorn process on 127.0.0.1 under ``--concurrency``
   concurrent requests (httpx async client), requests/s and latency percentiles; no errors.

    python bench/predict.py                        # 500 images, batch 32
    python bench/predict.py --n 200 --work /tmp/pb # keep (and reuse) the generated files
    python bench/predict.py --image-size 224       # a random-init model at another input size
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the same OpenMP setting as src/predict.py and src/serve.py, so both rates see the same runtime
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from pneumo.deployment import load_model  # noqa: E402
from pneumo.file_inference import predict_files  # noqa: E402
from pneumo.imaging import load_for_model  # noqa: E402
from pneumo.layout import MODEL, ONNX_MODEL  # noqa: E402
from pneumo.model import build_network, export_model, load_exported  # noqa: E402
from pneumo.onnx_export import export_onnx  # noqa: E402
from pneumo.params import load_section  # noqa: E402
from pneumo.runtime import RUNTIMES  # noqa: E402
from pneumo.synthetic import generate  # noqa: E402

TARGET_COLD_S = 1.5  # onnxruntime
TARGET_RATIO = 0.9
IMAGES = "raw/stage_2_train_images"

# Runs in a fresh interpreter: the same steps as the command, timed one by one.
BREAKDOWN = """
import sys, time; t0 = time.perf_counter()
from pathlib import Path
from pneumo.imaging import load_square
from pneumo.deployment import load_model
from pneumo.results import cam_image, png_bytes
if sys.argv[1].endswith(".pt"):
    import pneumo.runtime.torch_model  # the runtime's imports belong to "imports"
else:
    import onnxruntime, pneumo.runtime.onnx_model
t1 = time.perf_counter(); model = load_model(Path(sys.argv[1])); t2 = time.perf_counter()
sq = load_square(Path(sys.argv[2]), model.image_size, model.resize_mode)
t3 = time.perf_counter(); probs, maps = model.predict(sq.image[None], "cam")
t4 = time.perf_counter(); png = png_bytes(cam_image(sq.image, maps[0], "caption", 0.4))
t5 = time.perf_counter()
print(f"imports {t1 - t0:.2f} s, load model {t2 - t1:.2f} s, decode {1000 * (t3 - t2):.0f} ms, "
      f"forward + CAM {1000 * (t4 - t3):.0f} ms, PNG {1000 * (t5 - t4):.0f} ms")
"""


def prepare(work: Path, n: int, image_size: int | None) -> tuple[dict[str, Path], list[Path]]:
    """The model file of each runtime and ``n`` RSNA-format DICOMs (generated once per work dir).

    The trained model (and its export) when there is one and no ``image_size`` is asked for;
    else a random-init ResNet18 at ``image_size`` (default: params.yaml's preprocess.image_size).
    """
    pt, onnx_file = ROOT / MODEL, ROOT / ONNX_MODEL
    if image_size is not None or not pt.is_file():
        params = load_section("preprocess", ROOT / "params.yaml")
        size = image_size or params.image_size
        pt = work / f"model-resnet18-{size}.pt"
        if not pt.is_file():
            torch.manual_seed(0)
            net = build_network("resnet18", pretrained=False, weights_path=None, last_stride=2)
            export_model(pt, net, "resnet18", size, params.resize_mode, 0.49, 0.25)
        onnx_file = pt.with_suffix(".onnx")
    if not onnx_file.is_file():
        onnx_file = work / "model.onnx"
        export_onnx(load_exported(pt), onnx_file)
    files = sorted((work / IMAGES).glob("*.dcm"))
    if len(files) < n:
        print(f"generating {n} RSNA-format 1024 x 1024 DICOMs in {work / 'raw'} ...", flush=True)
        generate(work / "raw", n_patients=n, image_size=1024, seed=0, workers=0)
        files = sorted((work / IMAGES).glob("*.dcm"))
    return {"onnxruntime": onnx_file, "torch": pt}, files[:n]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench_cold(model: Path, dicom: Path, work: Path, repeats: int) -> None:
    runtime = load_model(model).runtime
    cmd = [sys.executable, "src/predict.py", str(dicom), "--model", str(model)]
    cmd += ["--cam", str(work / "cam")]
    times, cpu = [], []
    for _ in range(repeats):
        c = _children_cpu()
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
        cpu.append(_children_cpu() - c)
    med = statistics.median(times)
    runs = ", ".join(f"{t:.2f}" for t in times)
    target = f" (target <= {TARGET_COLD_S})" if runtime == "onnxruntime" else ""
    print(f"cold start on {runtime}, one DICOM + CAM: {runs} s; median {med:.2f} s{target}")
    # CPU time is what the run costs when it has the machine to itself (it is mostly serial)
    print(f"  CPU time (user + sys) per run: {', '.join(f'{c:.2f}' for c in cpu)} s")
    done = subprocess.run(
        [sys.executable, "-c", BREAKDOWN, str(model), str(dicom)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    print(f"  breakdown in a fresh process: {done.stdout.strip()}")


def _bare(model, imgs: np.ndarray, batch: int) -> None:
    for start in range(0, len(imgs), batch):
        model.predict(imgs[start : start + batch], None)


def bench_folder(
    paths: dict[str, Path], files: list[Path], batch: int, workers: int, rounds: int
) -> None:
    models = {runtime: load_model(path) for runtime, path in paths.items()}
    first = next(iter(models.values()))
    imgs = np.stack([load_for_model(f, first.image_size, first.resize_mode) for f in files])
    bare: dict[str, list[float]] = {r: [] for r in models}
    pipe: dict[str, list[float]] = {r: [] for r in models}
    for model in models.values():
        _bare(model, imgs[:batch], batch)  # warm-up
    for _ in range(rounds):  # interleaved, so a noisy neighbour hits every rate alike
        for runtime, model in models.items():
            t = time.perf_counter()
            _bare(model, imgs, batch)
            bare[runtime].append(len(files) / (time.perf_counter() - t))
            t = time.perf_counter()
            results = list(predict_files(model, files, batch_size=batch, workers=workers))
            pipe[runtime].append(len(files) / (time.perf_counter() - t))
            assert len(results) == len(files)
    print(
        f"folder of {len(files)} DICOMs at {first.image_size} px, batch {batch}, {workers} loader "
        f"threads, {torch.get_num_threads()} torch threads (median of {rounds}):"
    )
    for runtime in models:
        b, p = statistics.median(bare[runtime]), statistics.median(pipe[runtime])
        print(
            f"  {runtime}: bare model on in-memory arrays {b:.1f} img/s; files -> predictions "
            f"{p:.1f} img/s; ratio {p / b:.2f} (target >= {TARGET_RATIO})\n"
            f"    per round: bare {', '.join(f'{x:.1f}' for x in bare[runtime])}; "
            f"pipeline {', '.join(f'{x:.1f}' for x in pipe[runtime])}"
        )


def bench_cli_folder(model: Path, folder: Path, batch: int) -> None:
    cmd = [sys.executable, "src/predict.py", str(folder), "--model", str(model), "--json"]
    t = time.perf_counter()
    done = subprocess.run(
        [*cmd, "--batch-size", str(batch)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    dt = time.perf_counter() - t
    lines = done.stdout.count("\n")
    print(
        f"  the command over the folder, end to end (new process): {dt:.1f} s for {lines} lines, "
        f"{lines / dt:.1f} img/s incl. start-up; exit status {done.returncode}"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load_test(url: str, payloads: list[bytes], total: int, concurrency: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(i: int) -> None:
            async with sem:
                t = time.perf_counter()
                files = {"file": (f"{i}.dcm", payloads[i % len(payloads)])}
                try:
                    r = await client.post("/predict", files=files)
                    if r.status_code != 200 or "prob" not in r.json():
                        errors.append(f"{r.status_code} {r.text[:100]}")
                except httpx.HTTPError as e:
                    errors.append(repr(e))
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(total)))
        wall = time.perf_counter() - t0
    return {"wall": wall, "latencies": latencies, "errors": errors}


def bench_service(model: Path, files: list[Path], total: int, concurrency: int) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "src/serve.py", "--model", str(model), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("serve.py did not start") from None
                time.sleep(0.2)
        payloads = [f.read_bytes() for f in files[:50]]
        asyncio.run(_load_test(url, payloads, concurrency, concurrency))  # warm-up
        res = asyncio.run(_load_test(url, payloads, total, concurrency))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = np.array(res["latencies"]) * 1000
    p50, p95 = np.percentile(lat, [50, 95])
    print(
        f"service: {total} requests, {concurrency} concurrent, 1024 px DICOM uploads: "
        f"{total / res['wall']:.1f} requests/s, latency p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
        f"max {lat.max():.0f} ms; errors {len(res['errors'])}"
    )
    for e in res["errors"][:5]:
        print(f"  error: {e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="images in the folder")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="loader threads of the pipeline")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cold-runs", type=int, default=3)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--image-size", type=int, help="time a random-init model at this size")
    p.add_argument("--work", type=Path, help="working folder to keep and reuse (default: temp)")
    p.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime", help="of the service")
    p.add_argument("--skip", nargs="*", default=[], choices=["cold", "folder", "service"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        models, files = prepare(work, args.n, args.image_size)
        info = load_model(models["torch"])
        print(
            f"models {', '.join(map(str, models.values()))} ({info.arch}, {info.image_size} px); "
            f"{os.cpu_count()} CPUs, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
            f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
        if "cold" not in args.skip:
            for model in models.values():
                bench_cold(model, files[0], work, args.cold_runs)
        if "folder" not in args.skip:
            bench_folder(models, files, args.batch_size, args.workers, args.rounds)
            bench_cli_folder(models["onnxruntime"], work / IMAGES, args.batch_size)
        if "service" not in args.skip:
            bench_service(models[args.runtime], files, args.requests, args.concurrency)
        print(json.dumps({"load_average_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
