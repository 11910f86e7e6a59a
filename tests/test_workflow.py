"""The pull-request workflow is valid GitHub Actions YAML (checked against the official schema)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "pr-metrics.yml"


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
        "pip install -r requirements.txt",
    ):
        assert command in text, command


def test_a_broken_workflow_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest"))
    assert check_schema(bad).returncode != 0
