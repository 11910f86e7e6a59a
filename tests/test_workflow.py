"""The pull-request workflow is valid GitHub Actions YAML (checked against the official schema)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "pr-metrics.yml"
CONNECT = ROOT / ".ci" / "connect-remote"


def check_schema(path: Path) -> subprocess.CompletedProcess:
    """check-jsonschema with its vendored copy of GitHub's workflow schema (no network)."""
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]
        + [str(path)],
        capture_output=True,
        text=True,
    )


def test_workflow_matches_the_github_schema() -> None:
    proc = check_schema(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflow_posts_the_diffs_the_readme_promises() -> None:
    text = WORKFLOW.read_text()
    for command in (
        "dvc metrics diff main --md",
        "dvc params diff main --md",
        "dvc plots diff main",
        "git diff --no-color main -- reports/model_card.md",
        "cat reports/model_card.md",
        "pip install -r requirements.txt",
        ".ci/connect-remote",
    ):
        assert command in text, command


def test_a_broken_workflow_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest"))
    assert check_schema(bad).returncode != 0


def _connect(repo: Path, url: str) -> subprocess.CompletedProcess:
    """.ci/connect-remote in ``repo``, with pip replaced by an echo (no package is installed)."""
    env = {**os.environ, "DVC_REMOTE_URL": url, "PIP_INSTALL": "echo would-install"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        ["bash", str(CONNECT)], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )


def _dvc(repo: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True)


@pytest.mark.skipif(not shutil.which("git"), reason="needs git")
def test_the_workflow_pull_fails_loudly_and_restores_what_was_pushed(tmp_path: Path) -> None:
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    (repo / "data.txt").write_text("pushed\n")
    _dvc(repo, "add", "-q", "data.txt")
    shutil.rmtree(repo / ".dvc" / "cache")
    (repo / "data.txt").unlink()

    failed = _connect(repo, str(remote))  # nothing was pushed there
    assert failed.returncode != 0
    assert f"dvc pull from {remote} failed" in failed.stderr

    remote.mkdir()
    (repo / "data.txt").write_text("pushed\n")
    _dvc(repo, "add", "-q", "data.txt")
    _dvc(repo, "push", "-q", "-r", "ci")
    shutil.rmtree(repo / ".dvc" / "cache")
    (repo / "data.txt").unlink()
    ok = _connect(repo, str(remote))
    assert ok.returncode == 0, ok.stderr
    assert (repo / "data.txt").read_text() == "pushed\n"
    assert "would-install" not in ok.stdout  # a local path needs no extra


def test_the_workflow_installs_the_extra_of_the_remotes_scheme(tmp_path: Path) -> None:
    import dvc.version

    # the pull then fails (no such bucket, no network): the install line comes first
    proc = _connect(tmp_path, "s3://no-such-bucket/pneumo")
    assert f"would-install dvc[s3]=={dvc.version.__version__}" in proc.stdout
