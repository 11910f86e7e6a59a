"""Inference over image files with a loaded model, the library behind ``src/predict.py`` and
``src/serve.py``.

Every image goes through ``pneumo.imaging.load_square`` (the preprocess stage's reader and resize)
and the model's ``predict`` (``pneumo.runtime``: the ONNX export on onnxruntime, held to the infer
stage's forward pass, or that pass itself on torch) with the model's stored normalisation, so a
file gets here the probability the evaluate stage computed for it.
Folders are predicted in batches while a small thread pool decodes the next images: Pillow's
JPEG decoder and resize release the GIL, so decoding overlaps the forward pass. The service
predicts one upload at a time through a ``Predictor``.

The decision at the operating point uses ``p >= threshold`` as the evaluate stage does. Before a
file is decoded, the intended-use gate (``pneumo.intended_use``) may refuse it.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.cam.head import check_method
from pneumo.deployment import model_identity
from pneumo.image_io.errors import ImageReadError
from pneumo.imaging import SquareImage, load_square
from pneumo.intended_use import admit
from pneumo.operating_point import OperatingPoint
from pneumo.provenance import provenance_warning
from pneumo.results import (
    CAM_ALPHA,
    Failure,
    Prediction,
    Refusal,
    heatmap_png,
    record,
)
from pneumo.runtime import InferenceModel, Outputs
from pneumo.sniff import DICOM_SUFFIXES, IMAGE_SUFFIXES, sniff_file


@dataclass
class Inputs:
    """Image files to predict, in order, plus the paths that could not be used and why."""

    files: list[Path] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    skipped: int = 0  # non-image files inside the folders


def looks_like_image(path: Path) -> bool:
    """Whether a file found in a folder is one to predict: a known suffix or a DICM marker."""
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES or suffix in IMAGE_SUFFIXES:
        return True
    # DICOM files from archives and PACS exports often carry no suffix at all
    return suffix == "" and sniff_file(path) == "dicom"


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


@dataclass(frozen=True)
class Loaded:
    """A file admitted by the intended-use gate, decoded, with the gate's verdict."""

    square: SquareImage
    gate: str


Item = Loaded | Failure | Refusal


def _load(path: Path, size: int, mode: str, gate: bool) -> Item:
    try:
        admission = admit(path, gate)
        if admission.refused is not None:
            return Refusal(str(path), admission.refused)
        sq = load_square(path, size, mode)
        return Loaded(replace(sq, notes=sq.notes + admission.notes), admission.gate)
    except ImageReadError as e:
        return Failure(str(path), e.reason)
    except Exception as e:  # a decoder bug must cost one file, not the run
        return Failure(str(path), f"internal error while reading: {type(e).__name__}: {e}")


def load_images(
    files: Sequence[Path],
    size: int,
    mode: str,
    workers: int = 2,
    prefetch: int = 64,
    gate: bool = True,
) -> Iterator[tuple[Path, Item]]:
    """(file, loaded image, failure or refusal) in input order; ``workers`` threads decode ahead.

    At most ``prefetch`` decoded images wait for the consumer, so memory does not grow with the
    number of files. ``workers = 0`` decodes in the calling thread. ``gate`` False turns the
    intended-use gate off (research use): each answer then says so.
    """
    if workers <= 0 or len(files) <= 1:
        for f in files:
            yield f, _load(f, size, mode, gate)
        return
    pending: deque[tuple[Path, Future]] = deque()
    it = iter(files)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict-load") as pool:
        try:
            for f in it:
                pending.append((f, pool.submit(_load, f, size, mode, gate)))
                if len(pending) >= max(prefetch, workers):
                    break
            while pending:
                f, fut = pending.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(_load, nxt, size, mode, gate)))
                yield f, fut.result()
        finally:
            for _, fut in pending:  # the consumer stopped early: do not decode the rest
                fut.cancel()


def predict_files(
    model: InferenceModel,
    files: Sequence[Path],
    *,
    batch_size: int = 32,
    workers: int = 2,
    cam_method: str | None = None,
    gate: bool = True,
) -> Iterator[Prediction | Failure | Refusal]:
    """Predict ``files`` in batches, yielding one result per file in input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    window: list[tuple[Path, Item]] = []
    n_ok = 0
    loaded = load_images(
        files, model.image_size, model.resize_mode, workers, prefetch=2 * batch_size, gate=gate
    )
    for item in loaded:
        window.append(item)
        n_ok += isinstance(item[1], Loaded)
        if n_ok == batch_size:
            yield from _run_window(model, window, cam_method)
            window, n_ok = [], 0
    if window:
        yield from _run_window(model, window, cam_method)


def _run_window(
    model: InferenceModel, window: list[tuple[Path, Item]], cam_method: str | None
) -> Iterator[Prediction | Failure | Refusal]:
    ok = [item.square for _, item in window if isinstance(item, Loaded)]
    out = model.predict_all(np.stack([sq.image for sq in ok]), cam_method) if ok else None
    j = 0
    for path, item in window:
        if not isinstance(item, Loaded):
            yield item
            continue
        keep = out.maps is not None
        yield Prediction(
            file=str(path),
            prob=float(out.probs[j]),
            notes=item.square.notes,
            image=item.square.image if keep else None,
            cam_map=out.maps[j] if keep else None,
            gate=item.gate,
            prob_sd=None if out.sd is None else float(out.sd[j]),
            **ood_fields(model, out, j),
        )
        j += 1


def ood_fields(model: InferenceModel, out: Outputs, j: int) -> dict[str, Any]:
    """The out-of-distribution score of image ``j`` of a batch and its flag (None without
    statistics: the torch runtime, or an export from before them)."""
    if out.ood is None or model.ood is None:
        return {"ood_score": None, "out_of_distribution": None}
    score = float(out.ood[j])
    return {"ood_score": score, "out_of_distribution": bool(model.ood.flag(score))}


class Refused(Exception):
    """The intended-use gate refused an upload; ``reason`` is its one-line reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Predictor:
    """A loaded model and its operating point, safe to call from many threads.

    Decoding runs in the caller's thread, at most ``max_decoding`` at a time (a large 16-bit
    DICOM takes hundreds of MB while it is converted); the forward pass holds a lock, because one
    model called concurrently only competes for the same cores and memory.
    """

    def __init__(
        self,
        model: InferenceModel,
        op: OperatingPoint,
        cam_method: str = "gradcam++",
        alpha: float = CAM_ALPHA,
        max_decoding: int = 2,
    ) -> None:
        check_method(cam_method)
        self.model = model
        self.op = op
        self.cam_method = cam_method
        self.alpha = alpha
        self.identity = model_identity(model)
        self.warning = provenance_warning(model.provenance)
        self._lock = threading.Lock()
        self._decoding = threading.BoundedSemaphore(max_decoding)

    def predict_file(
        self, path: Path, display_name: str, cam: bool = False, gate: bool = True
    ) -> tuple[dict[str, Any], bytes | None]:
        """(record, heat-map PNG or None) for one file; raises ``ImageReadError`` or ``Refused``."""
        with self._decoding:
            admission = admit(path, gate)
            if admission.refused is not None:
                raise Refused(admission.refused)
            sq = load_square(path, self.model.image_size, self.model.resize_mode)
        with self._lock:
            out = self.model.predict_all(sq.image[None], self.cam_method if cam else None)
        pred = Prediction(
            display_name,
            float(out.probs[0]),
            sq.notes + admission.notes,
            gate=admission.gate,
            prob_sd=None if out.sd is None else float(out.sd[0]),
            **ood_fields(self.model, out, 0),
        )
        rec = record(pred, self.op, self.identity, warning=self.warning)
        if out.maps is None:
            return rec, None
        return rec, heatmap_png(sq.image, out.maps[0], rec, self.cam_method, self.alpha)
