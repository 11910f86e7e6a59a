"""The results of a prediction as the command and the service give them.

A ``Prediction`` or a ``Failure`` per file; the stable JSON record of a prediction (the command's
``--json`` line and the service's answer, the same keys for every file); and the heat-map PNG:
the X-ray as the model saw it beside its overlay, with a caption.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pneumo.cam.overlay import overlay
from pneumo.intended_use import PASSED
from pneumo.operating_point import OperatingPoint

# the reference pipelines' thresholds, reported beside the operating point
REPORT_THRESHOLDS = (0.5, 0.25)
CAM_ALPHA = 0.4
CAM_PANEL = 256  # minimum displayed side of each half of a heat-map PNG


@dataclass(frozen=True)
class Prediction:
    """One predicted image; ``image`` and ``cam_map`` are kept only for a heat map."""

    file: str
    prob: float
    notes: tuple[str, ...] = ()
    image: np.ndarray | None = None  # (S, S) uint8 as the model saw it
    cam_map: np.ndarray | None = None  # (S, S) float32 in [0, 1]
    gate: str = PASSED  # the intended-use gate's verdict: passed, no header or off
    ood_score: float | None = None  # pneumo.ood's distance; None without statistics
    out_of_distribution: bool | None = None  # the score above the export's threshold
    prob_sd: float | None = None  # the ensemble members' sd; None for one model (no invention)


@dataclass(frozen=True)
class Failure:
    """A file that could not be predicted, with the reader's one-line reason."""

    file: str
    reason: str


@dataclass(frozen=True)
class Refusal:
    """A file the intended-use gate refused, with its one-line reason."""

    file: str
    reason: str


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
    warning: str | None = None,
) -> dict[str, Any]:
    """The stable JSON object of one prediction (the same keys for every file)."""
    return {
        "file": pred.file,
        "prob": pred.prob,
        "prob_sd": pred.prob_sd,
        "positive": bool(pred.prob >= op.threshold),
        "threshold": op.threshold,
        "threshold_source": op.source,
        "decisions": decisions(pred.prob, op),
        "model": identity,
        "cam": cam,
        "notes": list(pred.notes),
        "gate": pred.gate,
        "ood_score": pred.ood_score,
        "out_of_distribution": pred.out_of_distribution,
        "warning": warning,
    }


def error_record(file: str, reason: str) -> dict[str, Any]:
    """The JSON object of a file that could not be predicted."""
    return {"file": file, "error": reason}


def refused_record(file: str, reason: str) -> dict[str, Any]:
    """The JSON object of a file the intended-use gate refused."""
    return {"file": file, "refused": reason}


def verdict(positive: bool) -> str:
    """The word for a decision: positive or negative."""
    return "positive" if positive else "negative"


def cam_image(image: np.ndarray, cam_map: np.ndarray, caption: str, alpha: float) -> Image.Image:
    """The X-ray and its heat-map overlay side by side, with a caption strip underneath."""
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
    ood = "  OUT OF DISTRIBUTION: unreliable" if rec["out_of_distribution"] else ""
    return (
        f"p={rec['prob']:.3f} {verdict(rec['positive'])} at {rec['threshold']:.3f}  "
        f"{method}  model {rec['model']['id']}{ood}"
    )


def png_bytes(img: Image.Image) -> bytes:
    """Encode an image as PNG in memory."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def heatmap_png(
    image: np.ndarray, cam_map: np.ndarray, rec: dict[str, Any], method: str, alpha: float
) -> bytes:
    """The heat-map PNG of one prediction record: ``cam_image`` with its caption, encoded."""
    return png_bytes(cam_image(image, cam_map, cam_caption(rec, method), alpha))


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
