"""Shared test fixtures: paths to the optional real-data folder beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DICOM_ZOO = SHARED_DATA / "dicom-zoo"
REAL_CXR = SHARED_DATA / "real-cxr"


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
