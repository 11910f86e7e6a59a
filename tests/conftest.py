"""Shared test fixtures: paths to the optional real-data folder beside the repository, and a
tiny exported model for the prediction command and the web service."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture(scope="session")
def torch_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init ResNet18 ``model.pt`` at ``TINY_MODEL_SIZE`` (pad, mean 0.45, std 0.25)."""
    import torch

    from pneumo.model import build_network, export_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    export_model(
        path,
        build_network("resnet18", pretrained=False, weights_path=None, last_stride=2),
        "resnet18",
        TINY_MODEL_SIZE,
        "pad",
        0.45,
        0.25,
    )
    return path


@pytest.fixture(scope="session")
def model_path(torch_model_path: Path) -> Path:
    """``torch_model_path`` exported to ONNX, as the export stage does: the file prediction loads
    by default (on onnxruntime)."""
    from pneumo.model import load_exported
    from pneumo.onnx_export import export_onnx

    path = torch_model_path.with_suffix(".onnx")
    export_onnx(load_exported(torch_model_path), path)
    return path
