"""Prediction for files and folders: the library behind ``src/predict.py`` and ``src/serve.py``.

Every image goes through ``pneumo.cache.load_square`` (the preprocess stage's reader and resize)
and ``pneumo.model.predict_proba`` (the infer stage's forward pass) with the exported model's
stored normalisation, so a file gets here the probability the evaluate stage computed for it.
Folders are predicted in batches while a small thread pool decodes the next images: Pillow's
JPEG decoder and resize release the GIL, so decoding overlaps the forward pass.

The decision at the operating point uses ``p >= threshold`` as the evaluate stage does.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import tempfile
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TextIO

import numpy as np
from PIL import Image, ImageDraw

from pneumo.atomic import write_bytes
from pneumo.cache import SquareImage, load_square
from pneumo.dicom import DICOM_SUFFIXES, IMAGE_SUFFIXES, ImageReadError
from pneumo.model import Exported, load_exported, normalize, predict_proba
from pneumo.operating_point import (
    OperatingPoint,
    OperatingPointError,
    check_threshold,
    operating_point_or_fallback,
)

DEFAULT_MODEL = Path("data/model/model.pt")
DEFAULT_OPERATING_POINT = Path("data/operating_point.json")
# the reference pipelines' thresholds, reported beside the operating point
REPORT_THRESHOLDS = (0.5, 0.25)
CAM_METHODS = ("cam", "gradcam", "gradcam++")
CAM_ALPHA = 0.4
CAM_PANEL = 256  # minimum displayed side of each half of a heat-map PNG
ID_CHARS = 12  # hex digits of the model file's sha256 that identify it
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The command cannot start (missing or invalid model, operating point or arguments)."""


# ----------------------------------------------------------------------------------------------
# Model identity and the operating point


def model_identity(model: Exported) -> dict[str, Any]:
    """What names a model in every answer: short file hash, architecture, input size, resize."""
    return {
        "id": model.sha256[:ID_CHARS],
        "arch": model.arch,
        "image_size": model.image_size,
        "resize_mode": model.resize_mode,
    }


def load_model(path: Path) -> Exported:
    """``load_exported`` with the errors a person can act on turned into ``UsageError``."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"model file {path} not found: run `dvc repro` to train it or `dvc pull` to fetch it "
            "from the remote (or pass --model PATH)"
        )
    try:
        return load_exported(path)
    except Exception as e:  # a torn, foreign or older file: torch, pickle or our version check
        raise UsageError(f"cannot load the model {path}: {type(e).__name__}: {e}") from None


def resolve_operating_point(
    threshold: float | None,
    path: Path | None,
    default_path: Path = DEFAULT_OPERATING_POINT,
) -> tuple[OperatingPoint, str | None]:
    """(operating point, a note for the user or None).

    An explicit ``threshold`` wins; else ``path`` (which must exist when given); else
    ``default_path`` when it exists; else 0.5, with a note saying so.
    """
    try:
        if threshold is not None:
            return OperatingPoint(check_threshold(threshold, "--threshold"), "--threshold"), None
        if path is not None and not Path(path).is_file():
            raise UsageError(f"operating point file {path} not found")
        return operating_point_or_fallback(Path(path if path is not None else default_path))
    except OperatingPointError as e:
        raise UsageError(str(e)) from None


# ----------------------------------------------------------------------------------------------
# Finding the inputs


@dataclass
class Inputs:
    """Image files to predict, in order, plus the paths that could not be used and why."""

    files: list[Path] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    skipped: int = 0  # non-image files inside the folders


def _has_dicom_marker(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def looks_like_image(path: Path) -> bool:
    """Whether a file found in a folder is one to predict: a known suffix or a DICM marker."""
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES or suffix in IMAGE_SUFFIXES:
        return True
    # DICOM files from archives and PACS exports often carry no suffix at all
    return suffix == "" and _has_dicom_marker(path)


def find_images(paths: Sequence[str | Path]) -> Inputs:
    """Expand files and folders (recursively, sorted, hidden entries and symlinked dirs skipped).

    A file named explicitly is always attempted (the reader says why it is not an image); a folder
    contributes its image files and counts the rest as skipped; a folder with no image at all is
    an error, so a mistyped folder does not pass silently.
    """
    out = Inputs()
    for p in map(Path, paths):
        if p.is_dir():
            found, skipped = _walk(p)
            out.files.extend(found)
            out.skipped += skipped
            if not found:
                out.errors.append((str(p), f"no DICOM, PNG or JPEG files ({skipped} other files)"))
        elif p.exists():
            out.files.append(p)
        else:
            out.errors.append((str(p), "no such file or directory"))
    return out


def _walk(root: Path) -> tuple[list[Path], int]:
    found, skipped = [], 0
    for dirpath, dirnames, filenames in os.walk(root):  # followlinks=False: no symlink loops
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not name.startswith(".") and path.is_file() and looks_like_image(path):
                found.append(path)
            else:
                skipped += 1
    return sorted(found), skipped  # path order: a/x.dcm before b.png, at any depth


# ----------------------------------------------------------------------------------------------
# Loading in the background and predicting in batches


@dataclass(frozen=True)
class Prediction:
    """One predicted image; ``image`` and ``cam_map`` are kept only for a heat map."""

    file: str
    prob: float
    notes: tuple[str, ...] = ()
    image: np.ndarray | None = None  # (S, S) uint8 as the model saw it
    cam_map: np.ndarray | None = None  # (S, S) float32 in [0, 1]


@dataclass(frozen=True)
class Failure:
    """A file that could not be predicted, with the reader's one-line reason."""

    file: str
    reason: str


def _load(path: Path, size: int, mode: str) -> SquareImage | Failure:
    try:
        return load_square(path, size, mode)
    except ImageReadError as e:
        return Failure(str(path), e.reason)
    except Exception as e:  # a decoder bug must cost one file, not the run
        return Failure(str(path), f"internal error while reading: {type(e).__name__}: {e}")


def load_images(
    files: Sequence[Path], size: int, mode: str, workers: int = 2, prefetch: int = 64
) -> Iterator[tuple[Path, SquareImage | Failure]]:
    """(file, square image or failure) in input order; ``workers`` threads decode ahead.

    At most ``prefetch`` decoded images wait for the consumer, so memory does not grow with the
    number of files. ``workers = 0`` decodes in the calling thread.
    """
    if workers <= 0 or len(files) <= 1:
        for f in files:
            yield f, _load(f, size, mode)
        return
    pending: deque[tuple[Path, Future]] = deque()
    it = iter(files)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict-load") as pool:
        try:
            for f in it:
                pending.append((f, pool.submit(_load, f, size, mode)))
                if len(pending) >= max(prefetch, workers):
                    break
            while pending:
                f, fut = pending.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(_load, nxt, size, mode)))
                yield f, fut.result()
        finally:
            for _, fut in pending:  # the consumer stopped early: do not decode the rest
                fut.cancel()


def predict_batch(
    model: Exported, images: np.ndarray, cam_method: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (B,) for uint8 images (B, S, S), and heat maps (B, S, S) when asked for.

    Without a heat map this is exactly the infer stage's ``predict_proba``. With one, the
    probabilities come from the same forward pass as the maps (features, pooling, head), which
    agrees with ``predict_proba`` to float rounding.
    """
    if cam_method is None:
        return predict_proba(model.net, images, model.mean, model.std, len(images)), None
    from pneumo.cam import compute_maps  # matplotlib and pandas: only when heat maps are asked for

    probs, maps = compute_maps(
        model.net, model.arch, normalize(images, model.mean, model.std), cam_method
    )
    return probs, maps


def predict_files(
    model: Exported,
    files: Sequence[Path],
    *,
    batch_size: int = 32,
    workers: int = 2,
    cam_method: str | None = None,
) -> Iterator[Prediction | Failure]:
    """Predict ``files`` in batches, yielding one result per file in input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    window: list[tuple[Path, SquareImage | Failure]] = []
    n_ok = 0
    loaded = load_images(
        files, model.image_size, model.resize_mode, workers, prefetch=2 * batch_size
    )
    for item in loaded:
        window.append(item)
        n_ok += isinstance(item[1], SquareImage)
        if n_ok == batch_size:
            yield from _run_window(model, window, cam_method)
            window, n_ok = [], 0
    if window:
        yield from _run_window(model, window, cam_method)


def _run_window(
    model: Exported, window: list[tuple[Path, SquareImage | Failure]], cam_method: str | None
) -> Iterator[Prediction | Failure]:
    ok = [sq for _, sq in window if isinstance(sq, SquareImage)]
    probs, maps = (
        predict_batch(model, np.stack([sq.image for sq in ok]), cam_method) if ok else (None, None)
    )
    j = 0
    for path, sq in window:
        if isinstance(sq, Failure):
            yield sq
            continue
        keep = maps is not None
        yield Prediction(
            file=str(path),
            prob=float(probs[j]),
            notes=sq.notes,
            image=sq.image if keep else None,
            cam_map=maps[j] if keep else None,
        )
        j += 1


# ----------------------------------------------------------------------------------------------
# Records (the JSON both the command and the service answer with) and text lines


def decisions(prob: float, op: OperatingPoint) -> dict[str, bool]:
    """Positive or not at the operating point and at each reported threshold (``p >= t``)."""
    out = {"operating_point": bool(prob >= op.threshold)}
    out.update({str(t): bool(prob >= t) for t in REPORT_THRESHOLDS})
    return out


def record(
    pred: Prediction,
    op: OperatingPoint,
    identity: dict[str, Any],
    cam: str | None = None,
) -> dict[str, Any]:
    """The stable JSON object of one prediction (the same keys for every file)."""
    return {
        "file": pred.file,
        "prob": pred.prob,
        "positive": bool(pred.prob >= op.threshold),
        "threshold": op.threshold,
        "threshold_source": op.source,
        "decisions": decisions(pred.prob, op),
        "model": identity,
        "cam": cam,
        "notes": list(pred.notes),
    }


def error_record(file: str, reason: str) -> dict[str, Any]:
    """The JSON object of a file that could not be predicted."""
    return {"file": file, "error": reason}


def _word(positive: bool) -> str:
    return "positive" if positive else "negative"


def text_line(rec: dict[str, Any]) -> str:
    """One human-readable line for a prediction record."""
    d = rec["decisions"]
    m = rec["model"]
    extra = "".join(f"  [{n}]" for n in rec["notes"])
    cam = f"  cam {rec['cam']}" if rec["cam"] else ""
    return (
        f"{rec['file']}: p={rec['prob']:.4f}  {_word(d['operating_point']).upper()} at "
        f"{rec['threshold']:.4f}  (at 0.5: {_word(d['0.5'])}, at 0.25: {_word(d['0.25'])})  "
        f"model {m['id']} {m['arch']} {m['image_size']}px{cam}{extra}"
    )


# ----------------------------------------------------------------------------------------------
# Heat-map PNGs


def cam_image(image: np.ndarray, cam_map: np.ndarray, caption: str, alpha: float) -> Image.Image:
    """The X-ray and its heat-map overlay side by side, with a caption strip underneath."""
    from pneumo.cam import overlay

    s = image.shape[0]
    side = max(s, CAM_PANEL)
    gap, strip = 4, 20
    gray = Image.fromarray(image).convert("RGB")
    heat = Image.fromarray(overlay(image, cam_map, alpha))
    if side != s:
        gray = gray.resize((side, side), Image.Resampling.BILINEAR)
        heat = heat.resize((side, side), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (2 * side + gap, side + strip), "white")
    canvas.paste(gray, (0, 0))
    canvas.paste(heat, (side + gap, 0))
    ImageDraw.Draw(canvas).text((4, side + 4), caption, fill="black")
    return canvas


def cam_caption(rec: dict[str, Any], method: str) -> str:
    """The caption of a heat-map PNG: probability, decision, method and model."""
    return (
        f"p={rec['prob']:.3f} {_word(rec['positive'])} at {rec['threshold']:.3f}  "
        f"{method}  model {rec['model']['id']}"
    )


def png_bytes(img: Image.Image) -> bytes:
    """Encode an image as PNG in memory."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def cam_names(files: Sequence[Path]) -> list[str]:
    """A distinct PNG name per input, from its file name: ``x.dcm`` -> ``x.cam.png``.

    Same stems (``a/x.dcm``, ``b/x.dcm``, ``x.png``) get ``-2``, ``-3``... in input order; names
    are compared case-insensitively so they stay distinct on macOS and Windows too.
    """
    seen: set[str] = set()
    names = []
    for f in files:
        stem = _UNSAFE.sub("_", Path(f).stem).strip("._")[:100] or "image"
        name, k = f"{stem}.cam.png", 1
        while name.lower() in seen:
            k += 1
            name = f"{stem}-{k}.cam.png"
        seen.add(name.lower())
        names.append(name)
    return names


# ----------------------------------------------------------------------------------------------
# The command


def run_command(
    paths: Sequence[str],
    *,
    model_path: Path = DEFAULT_MODEL,
    threshold: float | None = None,
    operating_point: Path | None = None,
    cam_dir: Path | None = None,
    cam_method: str = "cam",
    as_json: bool = False,
    batch_size: int = 32,
    workers: int = 2,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The predict command: results on ``out``, notes and errors on ``err``; the exit status."""
    out = out or sys.stdout  # looked up at call time, so a redirected sys.stdout is honoured
    err = err or sys.stderr
    try:
        if cam_method not in CAM_METHODS:
            raise UsageError(f"unknown CAM method {cam_method!r}; choose {', '.join(CAM_METHODS)}")
        op, note = resolve_operating_point(threshold, operating_point)
        model = load_model(model_path)
        if cam_dir is not None:
            cam_dir.mkdir(parents=True, exist_ok=True)
    except (UsageError, OSError) as e:
        print(f"error: {e}", file=err)
        return EXIT_USAGE
    identity = model_identity(model)
    if note:
        print(f"note: {note}", file=err)
    if not as_json:
        print(
            f"model {model_path} ({identity['id']}, {model.arch}, {model.image_size}px "
            f"{model.resize_mode}); operating point {op.threshold:.4f} from {op.source}",
            file=err,
        )
    inputs = find_images(paths)
    failures = [Failure(p, r) for p, r in inputs.errors]
    for f in failures:
        _emit_failure(f, as_json, out, err)
    results = predict_files(
        model,
        inputs.files,
        batch_size=batch_size,
        workers=workers,
        cam_method=cam_method if cam_dir is not None else None,
    )
    # one result per file, in order, so the names line up even when a file is given twice
    names = cam_names(inputs.files) if cam_dir is not None else [None] * len(inputs.files)
    n_ok = 0
    for res, name in zip(results, names, strict=True):
        if isinstance(res, Failure):
            failures.append(res)
            _emit_failure(res, as_json, out, err)
            continue
        cam_path = cam_dir / name if cam_dir is not None and name else None
        rec = record(res, op, identity, cam=str(cam_path) if cam_path else None)
        if cam_path is not None:
            _write_cam(res, rec, cam_path, cam_method)
        print(json.dumps(rec) if as_json else text_line(rec), file=out, flush=as_json)
        n_ok += 1
    skipped = f", {inputs.skipped} non-image files skipped" if inputs.skipped else ""
    print(f"{n_ok} predicted, {len(failures)} failed{skipped}", file=err)
    return EXIT_FAILED if failures else EXIT_OK


def _write_cam(pred: Prediction, rec: dict[str, Any], path: Path, method: str) -> None:
    img = cam_image(pred.image, pred.cam_map, cam_caption(rec, method), CAM_ALPHA)
    write_bytes(path, png_bytes(img))


def _emit_failure(f: Failure, as_json: bool, out: TextIO, err: TextIO) -> None:
    if as_json:
        print(json.dumps(error_record(f.file, f.reason)), file=out, flush=True)
    else:
        print(f"{f.file}: error: {f.reason}", file=err)


# ----------------------------------------------------------------------------------------------
# The service's side: one model, a lock, and uploads spooled to temporary files


class Predictor:
    """A loaded model and its operating point, safe to call from many threads.

    Decoding runs in the caller's thread, at most ``max_decoding`` at a time (a large 16-bit
    DICOM takes hundreds of MB while it is converted); the forward pass holds a lock, because one
    torch model called concurrently only competes for the same cores and memory.
    """

    def __init__(
        self,
        model: Exported,
        op: OperatingPoint,
        cam_method: str = "cam",
        alpha: float = CAM_ALPHA,
        max_decoding: int = 2,
    ) -> None:
        if cam_method not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {cam_method!r}; choose {', '.join(CAM_METHODS)}")
        self.model = model
        self.op = op
        self.cam_method = cam_method
        self.alpha = alpha
        self.identity = model_identity(model)
        self._lock = threading.Lock()
        self._decoding = threading.BoundedSemaphore(max_decoding)

    def predict_file(
        self, path: Path, display_name: str, cam: bool = False
    ) -> tuple[dict[str, Any], bytes | None]:
        """(record, heat-map PNG or None) for one file; raises ``ImageReadError``."""
        with self._decoding:
            sq = load_square(path, self.model.image_size, self.model.resize_mode)
        with self._lock:
            probs, maps = predict_batch(
                self.model, sq.image[None], self.cam_method if cam else None
            )
        pred = Prediction(display_name, float(probs[0]), sq.notes)
        rec = record(pred, self.op, self.identity)
        if maps is None:
            return rec, None
        img = cam_image(sq.image, maps[0], cam_caption(rec, self.cam_method), self.alpha)
        return rec, png_bytes(img)


class UploadError(Exception):
    """A request the service refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Upload:
    """An uploaded file spooled to a temporary path (the caller deletes it)."""

    path: Path
    filename: str  # the client's name, for display only: never part of a path
    size: int


FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and small fields around the file
_SAFE_SUFFIXES = (*DICOM_SUFFIXES, *IMAGE_SUFFIXES)


def display_name(filename: str | None) -> str:
    """The client's file name reduced to its last component, for answers and logs only."""
    name = PureWindowsPath(PurePosixPath(filename or "").name).name
    name = "".join(ch for ch in name if ch.isprintable())[:200]
    return "upload" if name in ("", ".", "..") else name


def _suffix_for(filename: str) -> str:
    # only a known image suffix is kept, so the reader's "PNG content in a '.dcm' file" note
    # still tells the client something true; anything else becomes a neutral suffix
    suffix = PurePosixPath(filename).suffix.lower()
    return suffix if suffix in _SAFE_SUFFIXES else ".upload"


class _Multipart:
    """Callbacks of python-multipart's streaming parser: the ``file`` part goes to a temp file."""

    def __init__(self, field_name: str, max_bytes: int, tmp_dir: Path) -> None:
        self.field_name = field_name
        self.max_bytes = max_bytes
        self.tmp_dir = tmp_dir
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.target = None  # open temp file while inside the file part
        self.path: Path | None = None
        self.filename = ""
        self.size = 0
        self.ended = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.strip().lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self.disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name != self.field_name:
            return  # other fields are read (and counted against the body limit) but ignored
        if self.path is not None:
            raise UploadError(400, f"more than one '{self.field_name}' part: send one file")
        self.filename = display_name(options.get(b"filename", b"").decode("utf-8", "replace"))
        fd, tmp = tempfile.mkstemp(
            prefix="upload-", suffix=_suffix_for(self.filename), dir=self.tmp_dir
        )
        self.path = Path(tmp)
        self.target = os.fdopen(fd, "wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.target is None:
            return
        self.size += end - start
        if self.size > self.max_bytes:
            raise UploadError(413, f"file larger than the upload limit of {self.max_bytes} bytes")
        self.target.write(data[start:end])

    def on_part_end(self) -> None:
        if self.target is not None:
            self.target.close()
            self.target = None

    def on_end(self) -> None:
        self.ended = True

    def discard(self) -> None:
        if self.target is not None:
            self.target.close()
            self.target = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


async def receive_upload(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    *,
    max_bytes: int,
    tmp_dir: Path,
    field_name: str = "file",
) -> Upload:
    """Stream a multipart body into a temporary file in ``tmp_dir``, stopping at the limits.

    Raises ``UploadError``: 415 not multipart, 413 the file exceeds ``max_bytes`` (or the body
    exceeds it plus ``FORM_OVERHEAD``), 400 malformed, no or several ``file`` parts, or empty.
    Nothing is kept on error; on success the caller owns (and deletes) ``Upload.path``.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UploadError(
            415, f"send multipart/form-data with the image in a field named '{field_name}'"
        )
    state = _Multipart(field_name, max_bytes, tmp_dir)
    total, limit = 0, max_bytes + FORM_OVERHEAD
    try:
        parser = MultipartParser(boundary, callbacks=state.callbacks())
        async for chunk in chunks:
            total += len(chunk)
            if total > limit:
                raise UploadError(413, f"request larger than the upload limit of {max_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
        if not state.ended:
            raise UploadError(400, "incomplete multipart body (no closing boundary)")
        if state.path is None:
            raise UploadError(400, f"no file in the form field '{field_name}'")
        if state.size == 0:
            raise UploadError(400, "empty file (0 bytes)")
    except MultipartParseError as e:
        state.discard()
        raise UploadError(400, f"malformed multipart body: {e}") from None
    except BaseException:
        state.discard()  # also on cancellation (client gone): no temp file is left behind
        raise
    return Upload(state.path, state.filename, state.size)
