"""The demo page at ``/`` in a real headless Chromium against the real service: a DICOM picked
(or a JPEG dropped) shows what ``/predict`` answers for it, with its heat map, notes, gate and the
synthetic-data warning; a file the intended-use gate refuses shows the reason; and the page loads
nothing from anywhere but the service."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from browser import chromium_or_skip, offline_page
from conftest import running_service
from test_serve import _upload, write_uploads

THRESHOLD = 0.3
HEATMAP_LOADED = "(i) => i.complete && i.naturalWidth > 0"


@pytest.fixture(scope="module")
def service(synthetic_model, tmp_path_factory):
    chromium_or_skip()  # before starting anything
    root = tmp_path_factory.mktemp("demo-server")
    with running_service(synthetic_model, root, "--threshold", str(THRESHOLD)) as s:
        yield s


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> dict[str, Path]:
    return write_uploads(tmp_path_factory.mktemp("demo-uploads"))


def _api(service, path: Path, name: str | None = None, gate: bool = True) -> httpx.Response:
    url = f"{service.url}/predict?gate={str(gate).lower()}"
    return httpx.post(url, files=_upload(path, name), timeout=60)


def _open(seen, service) -> None:
    seen.page.goto(f"{service.url}/")
    # functions, not expressions: the page's CSP refuses the eval() that polling an expression takes
    seen.page.wait_for_function("() => document.getElementById('m-id').textContent !== '…'")


def _wait(page, state: str) -> None:
    page.wait_for_function("(s) => document.body.dataset.state === s", arg=state, timeout=60_000)


def _shown(page) -> dict[str, Any]:
    """What the result section shows."""
    rows = page.eval_on_selector_all(
        "#r-decisions tbody tr",
        "rows => rows.map((r) => [r.dataset.key, r.dataset.positive, r.innerText])",
    )
    return {
        "file": page.text_content("#r-file"),
        "prob_text": page.text_content("#r-prob"),
        "prob": page.get_attribute("#r-prob", "data-prob"),
        "decisions": {key: positive == "true" for key, positive, _ in rows},
        "decision_rows": [text for _, _, text in rows],
        "gate": page.get_attribute("#r-gate", "data-gate"),
        "notes": page.eval_on_selector_all("#r-notes li", "lis => lis.map((li) => li.textContent)"),
        "warning": page.text_content("#r-warning") if page.is_visible("#r-warning") else None,
    }


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot in tmp_path (and in $PNEUMO_SCREENSHOTS when set), checked."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 0 and im.height > 0
        lo, hi = im.convert("L").getextrema()
        assert lo < hi  # not one flat colour
    if folder := os.environ.get("PNEUMO_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / name)
    return path


def _only_expected_errors(seen, statuses: tuple[int, ...] = ()) -> None:
    # Chromium logs every 4xx answer to fetch() as a console error: those asked for are expected
    expected = tuple(f"status of {s} " for s in statuses)
    assert [e for e in seen.errors if not any(x in e for x in expected)] == []
    assert seen.blocked == []


def test_a_picked_dicom_shows_what_predict_answers(service, uploads, tmp_path):
    scan = tmp_path / "chest-scan"  # a PACS export's name: no suffix
    shutil.copy(uploads["dicom"], scan)
    expected = _api(service, scan).json()
    health = httpx.get(f"{service.url}/health", timeout=10).json()

    with offline_page(service.url) as seen:
        page = seen.page
        _open(seen, service)
        assert page.text_content("#m-id") == health["model"]["id"] == expected["model"]["id"]
        assert "synthetic data (4 training images" in page.text_content("#m-source")
        assert health["warning"] in page.text_content("#model-warning")
        with page.expect_response(lambda r: "/predict/explain" in r.url) as answer:
            page.set_input_files("#file", scan)
        explained = answer.value.json()
        _wait(page, "done")
        page.wait_for_function(HEATMAP_LOADED, arg=page.query_selector("#r-heatmap"))
        shown = _shown(page)
        width = page.eval_on_selector("#r-heatmap", "i => i.naturalWidth")
        src = page.get_attribute("#r-heatmap", "src")
        _screenshot(page, tmp_path, "demo-result.png")
    _only_expected_errors(seen)

    # the exact value the endpoint gave, and the digits shown from it
    assert float(shown["prob"]) == explained["prob"]
    assert shown["prob_text"] == f"{explained['prob']:.3f}"
    # /predict's forward pass has no heat map; the two agree to float rounding (test_serve)
    assert explained["prob"] == pytest.approx(expected["prob"], abs=1e-6)
    assert abs(float(shown["prob_text"]) - expected["prob"]) <= 0.0005 + 1e-6
    assert shown["decisions"] == expected["decisions"] == explained["decisions"]
    assert shown["decision_rows"][0].startswith(f"operating point {THRESHOLD} (--threshold)")
    for text, positive in zip(shown["decision_rows"], expected["decisions"].values(), strict=True):
        assert text.endswith("positive" if positive else "negative")
    assert shown["file"] == expected["file"] == "chest-scan"
    assert shown["gate"] == expected["gate"] == "passed"
    assert shown["notes"] == (expected["notes"] or ["none"])
    assert expected["warning"] and expected["warning"] in shown["warning"]
    assert src == explained["heatmap"]
    png = base64.b64decode(src.split(",", 1)[1])
    with Image.open(io.BytesIO(png)) as im:
        assert width == im.width > 0


def test_a_refused_file_shows_the_reason_and_research_use_predicts_it(service, uploads, tmp_path):
    refusal = _api(service, uploads["ct"])
    assert refusal.status_code == 422
    reason = refusal.json()["detail"]
    research = _api(service, uploads["ct"], gate=False).json()

    with offline_page(service.url) as seen:
        page = seen.page
        _open(seen, service)
        page.set_input_files("#file", uploads["ct"])
        _wait(page, "error")
        title, detail = page.text_content("#error-title"), page.text_content("#error-detail")
        visible = page.is_visible("#error"), page.is_visible("#result")
        _screenshot(page, tmp_path, "demo-refused.png")

        page.check("#no-gate")  # predicts the same file again, the gate off
        _wait(page, "done")
        shown = _shown(page)
    _only_expected_errors(seen, (422,))

    assert visible == (True, False)
    assert title == "Refused by the intended-use gate: ct.dcm"
    assert detail == reason and reason.startswith("Modality CT: the model reads chest radiographs")
    assert shown["gate"] == research["gate"] == "off"
    assert shown["notes"] == research["notes"]
    assert any("it would refuse: Modality CT" in n for n in shown["notes"])
    assert shown["prob_text"] == f"{float(shown['prob']):.3f}"
    assert float(shown["prob"]) == pytest.approx(research["prob"], abs=1e-6)


def test_a_dropped_jpeg_is_predicted_with_its_notes(service, uploads):
    jpeg = uploads["jpeg"]
    expected = _api(service, jpeg).json()

    with offline_page(service.url) as seen:
        page = seen.page
        _open(seen, service)
        data = page.evaluate_handle(
            """([name, b64]) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], name, { type: "image/jpeg" }));
                return dt;
            }""",
            [jpeg.name, base64.b64encode(jpeg.read_bytes()).decode("ascii")],
        )
        page.dispatch_event("#drop", "drop", {"dataTransfer": data})
        _wait(page, "done")
        shown = _shown(page)
    _only_expected_errors(seen)

    assert shown["file"] == expected["file"] == "colour.jpg"
    assert shown["gate"] == expected["gate"] == "no header"
    assert shown["notes"] == expected["notes"]
    assert "colour (RGB) converted to grayscale" in shown["notes"]
    assert float(shown["prob"]) == pytest.approx(expected["prob"], abs=1e-6)
