"""Shared test fixtures: paths to the optional real-data folder beside the repository, a tiny
exported model (and one that says it was trained on synthetic data) for the prediction command
and the web service, and the web service itself running as a process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# beside the repository, or where PNEUMO_SHARED_DATA says (a worktree sits elsewhere)
SHARED_DATA = Path(os.environ.get("PNEUMO_SHARED_DATA", ROOT.parent / "shared" / "data"))
DICOM_ZOO = SHARED_DATA / "dicom-zoo"
REAL_CXR = SHARED_DATA / "real-cxr"
# the tiny model's input: resnet18 gives 2 x 2 feature maps, enough for a heat map
TINY_MODEL_SIZE = 64


def merged(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s keys replaced, recursively (a params profile)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) else value
    return out


def write_params(root: Path, override: dict) -> Path:
    """``root/params.yaml``: the repository's params with ``override`` merged in (params.yaml
    carries every key and the code no defaults, so a test profile starts from the real one)."""
    import yaml

    params = merged(yaml.safe_load((ROOT / "params.yaml").read_text()), override)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_stage(script: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python src/<script>`` as dvc runs a stage, from ``cwd`` as the repository root; output
    captured as text, the return code left to the caller."""
    cmd = [sys.executable, str(ROOT / "src" / script)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def dicom_zoo() -> Path:
    """The real-world DICOM corpus; tests using it skip on a user's clone, which has none."""
    if not (DICOM_ZOO / "zoo.csv").is_file():
        pytest.skip(f"{DICOM_ZOO} not present")
    return DICOM_ZOO


@pytest.fixture(scope="session")
def real_cxr() -> Path:
    """A few real chest X-ray PNG/JPEGs; skipped when absent."""
    if not REAL_CXR.is_dir():
        pytest.skip(f"{REAL_CXR} not present")
    return REAL_CXR


@pytest.fixture
def one_thread():
    """torch on one thread for the test: OpenMP threads spinning against other processes on
    2 shared cores make every op 5-10x slower."""
    import torch  # here, not at the top: most tests never need torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _export_tiny_model(path: Path, provenance: dict | None = None) -> Path:
    """A random-init ResNet18 ``model.pt`` at ``TINY_MODEL_SIZE`` (pad, mean 0.45, std 0.25)."""
    import torch

    from pneumo.model import build_network, export_model

    torch.manual_seed(0)
    export_model(
        path,
        build_network("resnet18", pretrained=False, weights_path=None, last_stride=2),
        "resnet18",
        TINY_MODEL_SIZE,
        "pad",
        0.45,
        0.25,
        provenance=provenance,
    )
    return path


@pytest.fixture(scope="session")
def torch_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as the train stage writes it (``model.pt``, for the torch runtime)."""
    return _export_tiny_model(tmp_path_factory.mktemp("model") / "model.pt")


def _to_onnx(model_pt: Path) -> Path:
    from pneumo.model import load_exported
    from pneumo.onnx_export import export_onnx

    path = model_pt.with_suffix(".onnx")
    export_onnx(load_exported(model_pt), path)
    return path


@pytest.fixture(scope="session")
def model_path(torch_model_path: Path) -> Path:
    """``torch_model_path`` exported to ONNX, as the export stage does: the file prediction loads
    by default (on onnxruntime)."""
    return _to_onnx(torch_model_path)


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model_path``'s network with the provenance of a model trained on synthetic data, as
    ONNX (the file the service loads by default)."""
    import numpy as np

    from pneumo.provenance import training_provenance

    prov = training_provenance("synthetic", np.array([0, 1, 0, 0]), np.array([1, 0]), None, {})
    pt = _export_tiny_model(tmp_path_factory.mktemp("synthetic-model") / "model.pt", prov)
    return _to_onnx(pt)


def _free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Service:
    """A running ``src/serve.py``: its base URL, its private TMPDIR and its log file."""

    url: str
    tmp: Path
    log: Path


@contextmanager
def running_service(model: Path, root: Path, *args: str) -> Iterator[Service]:
    """``python src/serve.py --model model *args`` on a free port of 127.0.0.1, with its TMPDIR
    and log under ``root``; yields once /health answers, and after stopping it checks that the
    service removed its upload directory."""
    import httpx

    port = _free_port()
    tmp = root / "tmp"
    tmp.mkdir()
    log = root / "serve.log"
    cmd = [sys.executable, "src/serve.py", "--model", str(model), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), *args]
    env = {**os.environ, "TMPDIR": str(tmp)}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve.py exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve.py did not answer /health:\n{log.read_text()}")
            time.sleep(0.25)
        yield Service(url, tmp, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # the lifespan removed its upload directory on shutdown
    assert [p.name for p in tmp.iterdir()] == []
