"""pneumo.atomic: files and folders replaced whole, and left as they were on an error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pneumo.atomic import atomic_dir, atomic_path, swap_in, write_bytes, write_json


def test_atomic_dir_keeps_previous_on_error(tmp_path: Path) -> None:
    target = tmp_path / "raw"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    assert target.stat().st_mode & 0o777 != 0o700  # an ordinary folder, not mkdtemp's private one


def test_atomic_dir_creates_a_missing_target_and_its_parents(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "a" / "b") as tmp:
        (tmp / "x").write_text("1")
    assert (tmp_path / "a" / "b" / "x").read_text() == "1"


def test_swap_in_replaces_a_file_or_a_folder(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("file")
    new = tmp_path / "new"
    new.mkdir()
    (new / "f").write_text("dir")
    swap_in(new, target)
    assert (target / "f").read_text() == "dir" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_path_keeps_previous_on_error(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text("old")
    with pytest.raises(OSError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    write_bytes(path, b"new")
    assert path.read_bytes() == b"new"


def test_write_json_refuses_nan_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics" / "m.json"
    write_json(path, {"auroc": 0.9})
    assert json.loads(path.read_text()) == {"auroc": 0.9} and path.read_text().endswith("\n")
    with pytest.raises(ValueError, match="JSON"):
        write_json(path, {"auroc": float("nan")})
    assert json.loads(path.read_text()) == {"auroc": 0.9}


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no live process now
    stale = tmp_path / f".out.{dead.pid}.x1y2.tmp"
    (stale / "sub").mkdir(parents=True)
    (tmp_path / f".out.{dead.pid}.old").write_text("old")
    live = tmp_path / f".out.{os.getppid()}.a.tmp"  # a live writer's (our parent): kept
    live.mkdir()
    other = tmp_path / ".outer.1.tmp"  # another target's: kept
    other.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("new")
    assert (tmp_path / "out" / "f").read_text() == "new"
    assert not stale.exists() and not (tmp_path / f".out.{dead.pid}.old").exists()
    assert live.exists() and other.exists()
