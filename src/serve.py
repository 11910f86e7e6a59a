"""A small web service around the exported model (FastAPI), on onnxruntime without torch.

    python src/serve.py                                   # http://127.0.0.1:8000
    python src/serve.py --runtime torch                   # model.pt on torch instead
    curl -F file=@scan.dcm http://127.0.0.1:8000/predict
    curl -F file=@scan.dcm 'http://127.0.0.1:8000/predict?cam=true' -o heatmap.png
    curl http://127.0.0.1:8000/health

``GET /`` is a demo page (``pneumo/web``: plain HTML, JavaScript and CSS, nothing loaded from
elsewhere). ``POST /predict`` answers the JSON object of ``src/predict.py --json``; with
``?cam=true`` (or ``POST /predict/cam``) the X-ray and its heat map as a PNG, the probability in
``X-Probability``; ``POST /predict/explain`` both from one forward pass, the PNG as a data URL in
``heatmap``. Refused requests get a 4xx and ``{"detail": reason}``: 413 too large, 400 empty or
malformed, 415 not multipart, 422 not a readable image, or a DICOM file that the intended-use gate
refuses (not a frontal chest radiograph: ``pneumo.intended_use``; the body then also has
``refused``). ``?gate=false`` predicts it anyway, for research, and the answer says
``"gate": "off"``. Every answer carries an out-of-distribution score and flag (``pneumo.ood``).
``/openapi.json`` and ``/docs`` describe every answer
(``pneumo.service_schema``). Uploads are streamed to a private temporary directory under a name
the service makes up, and deleted after the answer.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

# Before torch is imported (--runtime torch): OpenMP threads that spin while waiting steal the
# cores from each other and from the image decoders whenever anything else runs; sleeping threads
# made one image's forward pass 30x and a batch 2x faster on a busy 2-core machine
# (bench/predict.py). onnxruntime's threads are told the same by pneumo.runtime.onnx_model.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fastapi import FastAPI, Query, Request  # noqa: E402
from fastapi.responses import FileResponse, JSONResponse, Response  # noqa: E402
from fastapi.staticfiles import StaticFiles  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.requests import ClientDisconnect  # noqa: E402

import pneumo  # noqa: E402
from pneumo.cam.head import METHODS as CAM_METHODS  # noqa: E402
from pneumo.deployment import (  # noqa: E402
    DEFAULT_MODELS,
    UsageError,
    default_operating_point,
    load_model,
    resolve_operating_point,
    runtime_for,
)
from pneumo.file_inference import Predictor, Refused  # noqa: E402
from pneumo.image_io.errors import ImageReadError  # noqa: E402
from pneumo.runtime import RUNTIMES  # noqa: E402
from pneumo.service_schema import (  # noqa: E402
    CAM_RESPONSES,
    ERROR_RESPONSES,
    PREDICT_RESPONSES,
    UPLOAD_BODY,
    Explained,
    Health,
    Record,
)
from pneumo.upload import FORM_OVERHEAD, UploadError, receive_upload  # noqa: E402

DEFAULT_MAX_BYTES = 50 * 1024 * 1024  # an uncompressed 16-bit 3000 x 3000 CR is ~18 MB
WEB = Path(pneumo.__file__).resolve().parent / "web"  # the demo page, shipped in the package
# the page loads nothing from elsewhere, and the browser holds it to that; the heat map is a data:
# URL, and inline scripts and styles are refused (the page has none)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
}
log = logging.getLogger("pneumo.serve")

Cam = Annotated[bool, Query(description="true: answer the heat-map PNG instead of the JSON")]
Gate = Annotated[
    bool,
    Query(
        description="false: predict a file the intended-use gate refuses, for research "
        '(the answer says "gate": "off")'
    ),
]


class ServiceError(Exception):
    """A refused request: its status, the one-line reason and fields to send beside it."""

    def __init__(self, status: int, reason: str, **extra: Any) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.extra = extra


async def _error_response(request: Request, e: ServiceError) -> JSONResponse:
    # the body may be unread (413): closing the connection keeps the next request in sync
    headers = {"Connection": "close"} if e.status == 413 else None
    return JSONResponse({"detail": e.reason, **e.extra}, status_code=e.status, headers=headers)


def create_app(
    model_path: Path | None = None,
    *,
    runtime: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    threshold: float | None = None,
    operating_point: Path | None = None,
    cam_method: str = "gradcam++",
) -> FastAPI:
    """The app; the model is loaded once when it starts (raises ``UsageError`` early if absent)."""
    if max_bytes < 1:
        raise UsageError(f"max_bytes must be >= 1, got {max_bytes}")
    if cam_method not in CAM_METHODS:
        raise UsageError(f"unknown CAM method {cam_method!r}; choose {', '.join(CAM_METHODS)}")
    op, note = resolve_operating_point(
        threshold, operating_point, default_operating_point(model_path)
    )
    if note:
        log.warning(note)
    model_path, runtime = runtime_for(model_path, runtime)  # None: the ONNX export
    if not Path(model_path).is_file():
        load_model(model_path, runtime)  # raises the UsageError that says how to get the model

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.predictor = Predictor(load_model(model_path, runtime, op), op, cam_method)
        app.state.max_bytes = max_bytes
        app.state.tmp_dir = Path(tempfile.mkdtemp(prefix="pneumo-serve-"))
        try:
            yield
        finally:
            shutil.rmtree(app.state.tmp_dir, ignore_errors=True)

    app = FastAPI(title="Pneumonia detection", lifespan=lifespan)
    app.add_exception_handler(ServiceError, _error_response)
    app.get("/", include_in_schema=False)(page)
    app.mount("/static", StaticFiles(directory=WEB), name="static")
    # what was not set is left out, so the JSON keeps the command's keys (pneumo.service_schema)
    answers = {"response_model_exclude_unset": True, "openapi_extra": {"requestBody": UPLOAD_BODY}}
    app.get("/health", response_model=Health, response_model_exclude_unset=True)(health)
    app.post("/predict", response_model=Record, responses=PREDICT_RESPONSES, **answers)(predict)
    app.post("/predict/cam", response_class=Response, responses=CAM_RESPONSES, **answers)(
        predict_cam
    )
    app.post("/predict/explain", response_model=Explained, responses=ERROR_RESPONSES, **answers)(
        predict_explain
    )
    return app


def page() -> FileResponse:
    """The demo page: drop an X-ray on it, see its record and its heat map."""
    return FileResponse(WEB / "index.html", headers=PAGE_HEADERS)


def health(request: Request) -> dict[str, Any]:
    """Status and the identity of the loaded model."""
    predictor: Predictor = request.app.state.predictor
    return {
        "status": "ok",
        "model": {**predictor.identity, "sha256": predictor.model.sha256},
        "threshold": predictor.op.threshold,
        "threshold_source": predictor.op.source,
        "cam_method": predictor.cam_method,
        "max_bytes": request.app.state.max_bytes,
        "provenance": predictor.model.provenance,
        "ood_threshold": predictor.model.ood.threshold if predictor.model.ood else None,
        "warning": predictor.warning,
    }


async def predict(
    request: Request, cam: Cam = False, gate: Gate = True
) -> dict[str, Any] | Response:
    """One uploaded file (multipart field ``file``) -> its JSON record, or the heat-map PNG."""
    rec, png = await _predict_upload(request, cam, gate)
    return rec if png is None else _heatmap_answer(rec, png)


async def predict_cam(request: Request, gate: Gate = True) -> Response:
    """One uploaded file -> the X-ray and its heat map as a PNG."""
    return _heatmap_answer(*await _predict_upload(request, True, gate))


async def predict_explain(request: Request, gate: Gate = True) -> dict[str, Any]:
    """One uploaded file -> its JSON record and, from the same forward pass, its heat map."""
    rec, png = await _predict_upload(request, True, gate)
    return {**rec, "heatmap": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}


async def _predict_upload(
    request: Request, cam: bool, gate: bool
) -> tuple[dict[str, Any], bytes | None]:
    state = request.app.state
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > state.max_bytes + FORM_OVERHEAD:
        raise ServiceError(
            413, f"request of {length} bytes exceeds the upload limit of {state.max_bytes} bytes"
        )
    try:
        upload = await receive_upload(
            request.stream(),
            request.headers.get("content-type"),
            max_bytes=state.max_bytes,
            tmp_dir=state.tmp_dir,
        )
    except UploadError as e:
        raise ServiceError(e.status, e.reason) from None
    except ClientDisconnect:
        # nobody is left to answer: one line, not Starlette's traceback; nothing is kept
        client = request.client.host if request.client else "?"
        log.warning("client %s disconnected during the upload (%s bytes announced)", client, length)
        raise ServiceError(499, "client disconnected during the upload") from None
    predictor: Predictor = state.predictor
    try:
        return await run_in_threadpool(
            predictor.predict_file, upload.path, upload.filename, cam, gate
        )
    except Refused as e:
        raise ServiceError(422, e.reason, refused=e.reason, file=upload.filename) from None
    except ImageReadError as e:
        # e.reason, not str(e): the temporary path means nothing to the client
        raise ServiceError(422, e.reason, file=upload.filename) from None
    except Exception:
        log.exception("prediction failed for an upload of %d bytes", upload.size)
        raise ServiceError(500, "internal error while predicting", file=upload.filename) from None
    finally:
        upload.path.unlink(missing_ok=True)


def _heatmap_answer(rec: dict[str, Any], png: bytes | None) -> Response:
    headers = {
        "X-Probability": repr(rec["prob"]),
        "X-Positive": str(rec["positive"]).lower(),
        "X-Threshold": repr(rec["threshold"]),
        "X-Model-Id": rec["model"]["id"],
        "X-Gate": rec["gate"],
    }
    if rec["warning"]:
        headers["X-Warning"] = rec["warning"]
    return Response(png, media_type="image/png", headers=headers)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    defaults = ", ".join(f"{r}: {m}" for r, m in DEFAULT_MODELS.items())
    p.add_argument("--model", type=Path, help=f"model file (default {defaults})")
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="onnxruntime (no torch) or torch; default: by the --model suffix, else onnxruntime",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="upload size limit")
    p.add_argument("--threshold", type=float, help="decision threshold (overrides the file)")
    p.add_argument("--operating-point", type=Path, help="default data/operating_point.json")
    p.add_argument("--cam-method", choices=CAM_METHODS, default="gradcam++")  # the cam stage's
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        app = create_app(
            args.model,
            runtime=args.runtime,
            max_bytes=args.max_bytes,
            threshold=args.threshold,
            operating_point=args.operating_point,
            cam_method=args.cam_method,
        )
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2  # a usage error, as argparse's and the predict command's
    import uvicorn  # only when serving: the tests build the app without it

    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
