"""`dvc plots show` draws every chart with the network off: the committed HTML template inlines
vega, vega-lite and vega-embed (src/plots_template.py) instead of loading them from a CDN."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import plots_template  # src/ is on pytest's path
from browser import chromium_or_skip, offline_page
from conftest import ROOT


def _plots_page(out: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return out / "index.html"


def test_the_template_inlines_the_pinned_scripts_and_no_cdn() -> None:
    html = (ROOT / ".dvc" / "plots" / "offline.html").read_text(encoding="utf-8")
    assert html.count("{plot_divs}") == 1
    assert "{scripts}" not in html  # dvc-render would put its CDN tags there
    assert not re.search(r"<script[^>]+src=", html)
    for name, version, _, _ in plots_template.PACKAGES:
        assert f"<!-- {name} {version}\n" in html
    assert html.count("<script>") == len(plots_template.PACKAGES)


@pytest.mark.skipif(not shutil.which("git"), reason="dvc plots show needs git")
def test_dvc_plots_show_draws_every_chart_offline(tmp_path: Path) -> None:
    chromium_or_skip()
    index = _plots_page(tmp_path / "plots")
    html = index.read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in html
    charts = re.findall(r"vegaEmbed\('#([^']+)'", html)
    assert len(charts) >= 10  # ROC, PR, calibration, thresholds, confusions, training curves

    with offline_page() as seen:
        seen.page.goto(index.as_uri())
        drawn = (
            "(ids) => ids.every((id) => document.getElementById(id).querySelector('svg, canvas'))"
        )
        seen.page.wait_for_function(drawn, arg=charts, timeout=60_000)
        # vega-embed draws into a child of the div; an empty chart would still be an svg, so
        # ask for marks: every chart draws at least one path, line, rect or symbol
        marks = seen.page.evaluate(
            "(ids) => ids.map((id) => document.getElementById(id)"
            ".querySelectorAll('svg path, svg line, svg rect, canvas').length)",
            charts,
        )
    assert seen.errors == []
    assert seen.blocked == []
    assert all(n > 0 for n in marks), dict(zip(charts, marks, strict=True))
