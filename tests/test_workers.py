"""No pool worker outlives its stage: kill -9 the stage and its workers are gone at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, write_params
from pneumo.workers import n_workers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")

POOL = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from pneumo.workers import die_with_parent
ctx = multiprocessing.get_context({method!r})
with ProcessPoolExecutor(2, mp_context=ctx, initializer=die_with_parent,
                         initargs=(os.getpid(),)) as pool:
    futures = [pool.submit(time.sleep, 60) for _ in range(2)]
    print("ready", flush=True)
    futures[0].result()
"""


def _workers_of(proc: subprocess.Popen, want: int, timeout: float = 60) -> list[psutil.Process]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        kids = [
            k
            for k in psutil.Process(proc.pid).children(recursive=True)
            if "resource_tracker" not in " ".join(k.cmdline())
        ]
        if len(kids) >= want:
            return kids
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    pytest.fail(f"no {want} workers appeared")


def _all_gone(kids: list[psutil.Process], timeout: float = 10) -> list[int]:
    _, alive = psutil.wait_procs(kids, timeout=timeout)
    for k in alive:
        k.kill()
    return [k.pid for k in alive]


def _kill_mid_run(root: Path, stage: str, after_s: float) -> None:
    """Start ``src/<stage>.py`` in ``root``, kill -9 it mid-run, check that its pool died."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "src" / f"{stage}.py")],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kids = _workers_of(proc, 2)
    time.sleep(after_s)
    assert proc.poll() is None, f"{stage} finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _all_gone(kids) == [], f"workers outlived the {stage} stage"


@pytest.mark.parametrize("method", ["fork", "spawn"])  # preprocess forks, download spawns
def test_pool_workers_die_with_a_killed_parent(method: str) -> None:
    code = POOL.format(src=str(ROOT / "src"), method=method)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    kids = _workers_of(proc, 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _all_gone(kids) == [], "workers outlived their parent"


def test_killed_download_stage_leaves_no_worker(tmp_path: Path) -> None:
    synthetic = {"n_patients": 4000, "image_size": 128, "workers": 2}
    write_params(tmp_path, {"data": {"source": "synthetic", "synthetic": synthetic}})
    # the workers are drawing patients into the temporary folder when the stage dies
    _kill_mid_run(tmp_path, "download", after_s=1.0)
    # and the next run removes the dead run's temporary folder (atomic_dir's stale clean-up)
    stale = list((tmp_path / "data").glob(".raw.*.tmp"))
    assert stale, "the killed run left no temporary folder: the test did not kill it mid-run"
    write_params(tmp_path, {"data": {"source": "synthetic", "synthetic": {"n_patients": 4}}})
    done = subprocess.run(
        [sys.executable, str(ROOT / "src" / "download.py")], cwd=tmp_path, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    assert not list((tmp_path / "data").glob(".raw.*.tmp"))


def test_n_workers() -> None:
    assert n_workers(3) == 3 and n_workers(0) >= 1


def test_killed_preprocess_stage_leaves_no_worker(tmp_path: Path) -> None:
    # enough small files, one per task, that the forked pool is busy when the stage dies
    synthetic = {"n_patients": 1500, "image_size": 64, "workers": 2}
    write_params(
        tmp_path,
        {
            "data": {"source": "synthetic", "synthetic": synthetic},
            "preprocess": {"image_size": 32, "workers": 2, "chunk_size": 1},
        },
    )
    for stage in ("download", "split"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "src" / f"{stage}.py")], cwd=tmp_path, capture_output=True
        )
        assert done.returncode == 0, done.stderr
    _kill_mid_run(tmp_path, "preprocess", after_s=0.3)
