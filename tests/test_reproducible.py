"""The data stages write the same bytes on every CPU: run download, split and preprocess of a
small profile normally, then again as an older CPU would (numpy's SIMD kernels, libjpeg-turbo's
SIMD and glibc's FMA variants of libm all switched off, another worker count), and compare every
byte. The emulation is checked to be real: under it, numpy's and libm's own exp give other bits.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# 80 patients drawn at 512 px: above the generator's 384-px working size, so its resize and
# fine-grain path runs too; preprocess to 64 px
PROFILE = {
    "data": {"synthetic": {"n_patients": 80, "image_size": 512}},
    "preprocess": {"image_size": 64},
}
CANARY = (
    "import hashlib, math, random; import numpy as np; random.seed(1);"
    "xs = [random.uniform(-50, 50) for _ in range(100000)];"
    "a = np.array(xs, dtype=np.float32);"
    "print(hashlib.sha256(np.exp(a).tobytes() + np.cos(a).tobytes()).hexdigest(),"
    " hashlib.sha256(repr([math.exp(x) for x in xs]).encode()).hexdigest())"
)


SWITCHES = ("NPY_DISABLE_CPU_FEATURES", "JSIMD_FORCENONE", "GLIBC_TUNABLES")
FEATURES = (
    "from numpy._core._multiarray_umath import __cpu_dispatch__ as d, __cpu_features__ as f;"
    "print(' '.join(n for n in d if f.get(n)))"
)


def native_env() -> dict[str, str]:
    """This environment without any of the switches (the suite itself may run emulated)."""
    return {k: v for k, v in os.environ.items() if k not in SWITCHES}


def older_cpu_env() -> dict[str, str]:
    """Environment switches that make a process compute as a CPU without AVX2/FMA would."""
    found = subprocess.run(
        [sys.executable, "-c", FEATURES], env=native_env(), capture_output=True, text=True
    )
    available = found.stdout.split()  # numpy's dispatch targets this CPU runs natively
    env = {
        "JSIMD_FORCENONE": "1",  # libjpeg-turbo (Pillow's JPEG codec): plain C DCT and IDCT
        "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX",  # libm's non-FMA variants
    }
    if available:
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(available)
    return env


def run_data_stages(work: Path, extra_env: dict[str, str], workers: int) -> dict[str, str]:
    """download, split, preprocess in ``work``; the sha256 of every file they wrote."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["synthetic"].update(PROFILE["data"]["synthetic"], workers=workers)
    params["preprocess"].update(PROFILE["preprocess"], workers=workers)
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**native_env(), **extra_env}
    for stage in ("download", "split", "preprocess"):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "src" / f"{stage}.py")],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"{stage} failed:\n{proc.stderr[-3000:]}"
    out = {}
    for folder in ("data", "metrics"):
        for path in sorted((work / folder).rglob("*")):
            if path.is_file():
                out[path.relative_to(work).as_posix()] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
    return out


def canary(extra_env: dict[str, str]) -> list[str]:
    env = {**native_env(), **extra_env}
    proc = subprocess.run(
        [sys.executable, "-c", CANARY], env=env, capture_output=True, text=True, check=True
    )
    return proc.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux-only")
def test_emulating_an_older_cpu_changes_numpy_and_libm() -> None:
    """Without this the comparison below would prove nothing: the switches take effect here."""
    emulated = older_cpu_env()
    if "NPY_DISABLE_CPU_FEATURES" not in emulated:
        pytest.skip("this CPU runs none of numpy's dispatched SIMD kernels")
    normal, older = canary({}), canary(emulated)
    assert normal[0] != older[0], "numpy's float32 exp/cos gave the same bits without SIMD"
    assert normal[1] != older[1], "libm's exp gave the same bits without FMA"


def test_data_stages_are_byte_identical_on_an_older_cpu(tmp_path: Path) -> None:
    normal = run_data_stages(tmp_path / "normal", {}, workers=2)
    older = run_data_stages(tmp_path / "older", older_cpu_env(), workers=1)
    assert len(normal) > 80  # every DICOM, the label files, the splits and the cache
    differ = sorted(k for k in normal.keys() | older.keys() if normal.get(k) != older.get(k))
    assert not differ, f"{len(differ)} files differ, e.g. {differ[:5]}"
    shutil.rmtree(tmp_path)
