"""The web service: its logic through FastAPI's TestClient, then a real uvicorn process on
127.0.0.1 answering real HTTP requests."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import TINY_MODEL_SIZE, running_service
from pneumo.deployment import load_model
from pneumo.imaging import load_for_model
from pneumo.results import CAM_PANEL
from pneumo.synthetic import generate
from serve import create_app
from serve import main as serve_main
from test_predict import write_dicom16

SIZE = TINY_MODEL_SIZE  # conftest's model_path
MAX_BYTES = 200_000


def write_uploads(root: Path) -> dict[str, Path]:
    """An RSNA-format DICOM, a 16-bit CR and a CT written with pydicom, a gray PNG, an RGB JPEG."""
    generate(root / "raw", n_patients=1, image_size=256, seed=5, workers=1)
    rsna = next((root / "raw" / "stage_2_train_images").glob("*.dcm"))
    gray = (np.add.outer(np.arange(90), np.arange(110)) % 256).astype(np.uint8)
    Image.fromarray(gray).save(root / "scan.png")
    rgb = np.stack([gray, np.roll(gray, 7, axis=1), 255 - gray], axis=-1)
    Image.fromarray(rgb).save(root / "colour.jpg", quality=90)
    ct = write_dicom16(root / "ct.dcm", seed=3)
    ds = pydicom.dcmread(ct)
    ds.Modality = "CT"  # what the intended-use gate refuses first
    ds.save_as(ct)
    return {
        "dicom": rsna,
        "dicom16": write_dicom16(root / "cr16.dcm", seed=2),
        "ct": ct,
        "png": root / "scan.png",
        "jpeg": root / "colour.jpg",
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_uploads(tmp_path_factory.mktemp("uploads"))


@pytest.fixture(scope="module")
def client(model_path):
    app = create_app(model_path, max_bytes=MAX_BYTES, threshold=0.3)
    with TestClient(app) as c:  # runs the lifespan: the model is loaded once here
        yield c


def _upload(path: Path, name: str | None = None) -> dict:
    return {"file": (name or path.name, path.read_bytes(), "application/octet-stream")}


def _expected_prob(model_path: Path, path: Path) -> float:
    model = load_model(model_path)
    img = load_for_model(path, model.image_size, model.resize_mode)[None]
    return float(model.predict(img, None)[0][0])


# ----------------------------------------------------------------------------------------------
# Logic (TestClient)


def test_health_names_the_model(client, model_path):
    body = client.get("/health").json()
    model = load_model(model_path)
    assert body["status"] == "ok"
    assert body["model"]["sha256"] == model.sha256 and body["model"]["id"] == model.sha256[:12]
    assert body["model"]["arch"] == "resnet18" and body["model"]["image_size"] == SIZE
    assert body["threshold"] == 0.3 and body["max_bytes"] == MAX_BYTES


def test_predict_answers_the_command_line_record(client, files, model_path, capsys):
    import predict as predict_script

    r = client.post("/predict", files=_upload(files["dicom"]))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["prob"] == pytest.approx(_expected_prob(model_path, files["dicom"]), abs=1e-6)
    assert body["file"] == files["dicom"].name
    assert body["threshold"] == 0.3 and body["positive"] == (body["prob"] >= 0.3)

    code = predict_script.main(
        [str(files["dicom"]), "--model", str(model_path), "--json", "--threshold", "0.3"]
    )
    cli = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(body) == set(cli)
    for key in ("prob", "positive", "threshold", "threshold_source", "decisions", "model"):
        assert body[key] == pytest.approx(cli[key]) if key == "prob" else body[key] == cli[key]


def test_cam_returns_a_png_by_query_and_by_route(client, files, model_path):
    expected = _expected_prob(model_path, files["png"])
    for url in ("/predict?cam=true", "/predict/cam"):
        r = client.post(url, files=_upload(files["png"]))
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert float(r.headers["x-probability"]) == pytest.approx(expected, abs=1e-6)
        with Image.open(io.BytesIO(r.content)) as im:
            assert im.format == "PNG" and im.size[0] == 2 * CAM_PANEL + 4


def test_explain_answers_the_record_and_its_heat_map_together(client, files):
    rec = client.post("/predict", files=_upload(files["dicom"])).json()
    png = client.post("/predict/cam", files=_upload(files["dicom"])).content
    r = client.post("/predict/explain", files=_upload(files["dicom"]))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    heatmap = body.pop("heatmap")
    assert set(body) == set(rec)
    # the heat map's forward pass gives the probability too, equal to the plain one to rounding
    assert body.pop("prob") == pytest.approx(rec.pop("prob"), abs=1e-6)
    assert body == rec
    prefix = "data:image/png;base64,"
    assert heatmap.startswith(prefix) and base64.b64decode(heatmap[len(prefix) :]) == png

    r = client.post("/predict/explain", files=_upload(files["ct"]))
    reason = r.json()["detail"]
    assert r.status_code == 422 and reason.startswith("Modality CT: the model reads chest radio")
    assert r.json() == {"detail": reason, "refused": reason, "file": "ct.dcm"}
    r = client.post("/predict/explain?gate=false", files=_upload(files["ct"]))
    assert r.status_code == 200 and r.json()["gate"] == "off"
    assert any("it would refuse: Modality CT" in note for note in r.json()["notes"])


def _schema(spec: dict, node: dict) -> dict:
    """``node`` with its ``$ref`` followed into the spec's components."""
    ref = node.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else node


def test_openapi_documents_every_answer(client, files):
    spec = client.get("/openapi.json").json()
    rec = client.post("/predict", files=_upload(files["dicom"])).json()
    health = client.get("/health").json()
    paths = spec["paths"]

    def answer(path: str, method: str = "post", status: str = "200") -> dict:
        content = paths[path][method]["responses"][status]["content"]
        return _schema(spec, content["application/json"]["schema"])

    record = answer("/predict")
    assert set(record["properties"]) == set(rec) and set(record["required"]) == set(rec)
    decisions = _schema(spec, record["properties"]["decisions"])
    assert (
        set(decisions["properties"]) == set(rec["decisions"]) == {"operating_point", "0.5", "0.25"}
    )
    model = _schema(spec, record["properties"]["model"])
    assert set(model["required"]) == set(model["properties"]) == set(rec["model"])
    assert rec["model"]["runtime"] == "onnxruntime"
    assert set(answer("/predict/explain")["properties"]) == set(rec) | {"heatmap"}
    assert set(answer("/health", "get")["properties"]) == set(health)
    for path in ("/predict", "/predict/cam"):
        png = paths[path]["post"]["responses"]["200"]["content"]["image/png"]
        assert png["schema"]["format"] == "binary"
    for path in ("/predict", "/predict/cam", "/predict/explain"):
        responses = paths[path]["post"]["responses"]
        for status in ("400", "413", "415"):
            assert set(answer(path, status=status)["properties"]) == {"detail", "refused", "file"}
        refused = responses["422"]["content"]["application/json"]["schema"]["anyOf"]
        assert {"detail", "refused", "file"} in [
            set(_schema(spec, s)["properties"]) for s in refused
        ]


def test_the_demo_page_and_its_files_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', r.text)
    assert sorted(assets) == ["static/app.js", "static/style.css"]
    answers = [client.get(f"/{a}") for a in assets]
    assert [a.status_code for a in answers] == [200, 200]
    texts = [r.text] + [a.text for a in answers]
    # nothing from elsewhere: no absolute URL, not even a protocol-relative one
    assert not [t for t in texts if re.search(r"https?:|[\"'(]//", t)]
    assert client.get("/static/nothing.js").status_code == 404


def test_refusals_carry_a_reason(client):
    cases = [
        ({"file": ("empty.dcm", b"")}, 400, "empty file"),
        ({"file": ("notes.txt", b"just some text")}, 422, "not a DICOM, PNG or JPEG"),
        ({"file": ("fake.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 50)}, 422, "cannot decode"),
        ({"image": ("a.dcm", b"abc")}, 400, "no file in the form field 'file'"),
    ]
    for files, status, reason in cases:
        r = client.post("/predict", files=files)
        assert r.status_code == status, r.text
        assert reason in r.json()["detail"]
    r = client.post("/predict", json={"file": "x"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    assert list(client.app.state.tmp_dir.iterdir()) == []


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def test_degenerate_images_are_refused_with_a_reason(client):
    cases = [
        ("dot.png", np.full((1, 1), 128, np.uint8), "1 x 1 pixels: below the 32-pixel minimum"),
        ("blank.png", np.zeros((2000, 1500), np.uint8), "blank or nearly constant image"),
    ]
    for name, array, reason in cases:
        r = client.post("/predict", files={"file": (name, _png_bytes(array))})
        assert r.status_code == 422, r.text
        assert reason in r.json()["detail"]


def test_oversized_uploads_are_cut_off(client):
    big = os.urandom(MAX_BYTES + 1)
    r = client.post("/predict", files={"file": ("big.dcm", big)})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    # no Content-Length (chunked): the stream is read only up to the limit
    def body():
        yield b"--b\r\nContent-Disposition: form-data; name=file; filename=x\r\n\r\n"
        for _ in range(100):  # 6.4 MB offered, at most ~200 kB read
            yield b"\0" * 65536

    r = client.post(
        "/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert r.status_code == 413 and str(MAX_BYTES) in r.json()["detail"]
    assert list(client.app.state.tmp_dir.iterdir()) == []


def test_client_file_names_never_become_paths(client, files):
    for name in ("../../etc/passwd", "../../../tmp/pwned.png", "/etc/shadow", "a\0b.dcm", ".."):
        r = client.post("/predict", files=_upload(files["png"], name))
        assert r.status_code == 200, r.text
        assert "/" not in r.json()["file"] and "\\" not in r.json()["file"]
    assert not Path("/tmp/pwned.png").exists()
    assert list(client.app.state.tmp_dir.iterdir()) == []


def test_concurrent_requests_are_all_answered(client, files, model_path):
    expected = _expected_prob(model_path, files["dicom"])
    with ThreadPoolExecutor(8) as pool:
        res = list(
            pool.map(lambda _: client.post("/predict", files=_upload(files["dicom"])), range(8))
        )
    assert [r.status_code for r in res] == [200] * 8
    assert all(r.json()["prob"] == pytest.approx(expected, abs=1e-6) for r in res)


def test_missing_model_is_a_usage_error(tmp_path, capsys):
    assert serve_main(["--model", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err
    assert "none.pt not found" in err and "dvc repro" in err and "dvc pull" in err


# ----------------------------------------------------------------------------------------------
# Real HTTP against a uvicorn process


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    """``python src/serve.py`` on a free port; yields (base URL, its private TMPDIR, its log)."""
    args = ("--max-bytes", str(MAX_BYTES), "--threshold", "0.3")
    with running_service(model_path, tmp_path_factory.mktemp("server"), *args) as s:
        yield s.url, s.tmp, s.log


def test_real_http_requests(server, files, model_path):
    url, tmp, _ = server
    with httpx.Client(base_url=url, timeout=60) as http:
        health = http.get("/health").json()
        assert health["status"] == "ok" and health["max_bytes"] == MAX_BYTES

        for key in ("dicom", "dicom16", "png"):
            r = http.post("/predict", files=_upload(files[key]))
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["prob"] == pytest.approx(_expected_prob(model_path, files[key]), abs=1e-6)
            assert body["model"]["id"] == health["model"]["id"]

        r = http.post("/predict?cam=true", files=_upload(files["dicom"]))
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content.startswith(b"\x89PNG")

        r = http.post("/predict", files={"file": ("empty.png", b"")})
        assert r.status_code == 400 and "empty" in r.json()["detail"]
        r = http.post("/predict", files={"file": ("readme.txt", b"hello, not an X-ray")})
        assert r.status_code == 422 and "not a DICOM, PNG or JPEG" in r.json()["detail"]
        assert r.json()["file"] == "readme.txt"

        r = http.post("/predict", files=_upload(files["png"], "../../etc/passwd"))
        assert r.status_code == 200 and r.json()["file"] == "passwd"

    # oversized, on fresh connections (the server closes after a 413)
    r = httpx.post(f"{url}/predict", files={"file": ("big.dcm", os.urandom(3 * MAX_BYTES))})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunked():
        yield b"--b\r\nContent-Disposition: form-data; name=file; filename=x.dcm\r\n\r\n"
        for _ in range(8):
            yield os.urandom(50_000)

    r = httpx.post(
        f"{url}/predict",
        content=chunked(),
        headers={"content-type": "multipart/form-data; boundary=b"},
        timeout=60,
    )
    assert r.status_code == 413

    # every upload was spooled inside the server's own temporary directory and deleted
    (upload_dir,) = tmp.iterdir()
    assert upload_dir.name.startswith("pneumo-serve-") and list(upload_dir.iterdir()) == []


def test_a_client_gone_mid_upload_is_one_log_line(server, files):
    url, tmp, log = server
    port = int(url.rsplit(":", 1)[1])
    before = log.read_text()
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.dcm"\r\n\r\n'
    with socket.create_connection(("127.0.0.1", port)) as s:
        head = (
            "POST /predict HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {MAX_BYTES // 2}\r\n\r\n"
        )
        s.sendall(head.encode() + body + files["dicom"].read_bytes()[:4096])
        time.sleep(0.5)  # the server is streaming the body when the client goes away
    deadline = time.monotonic() + 10
    while "disconnected" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    new = log.read_text()[len(before) :]
    lines = [ln for ln in new.splitlines() if "disconnected" in ln]
    assert len(lines) == 1, new
    assert "Traceback" not in new and "ClientDisconnect" not in new, new
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    assert lines[0].endswith(
        f"client 127.0.0.1 disconnected during the upload ({MAX_BYTES // 2} bytes announced)"
    )
    assert [p for p in tmp.rglob("*") if p.is_file()] == []  # the partial upload is gone
