"""PNG / JPEG -> 2-D uint8 with Pillow (EXIF orientation applied, colour to gray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pneumo.image_io.errors import ImageReadError, check_size, one_line
from pneumo.image_io.grayscale import robust_range, stretch
from pneumo.image_io.result import ReadResult, ScaleFor

_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def read_pillow(path: Path, notes: list[str], scale_for: ScaleFor | None = None) -> ReadResult:
    try:
        with Image.open(path) as im:
            w, h = im.size
            check_size(path, h, w, max(1, len(im.getbands())), 1, 8)
            if getattr(im, "n_frames", 1) > 1:
                notes.append(f"{im.n_frames} frames: the first one is used")
            # Pillow returns a copy even when there is nothing to turn: read the tag itself
            orientation = im.getexif().get(0x0112, 1)
            scale = _draft(im, orientation, scale_for)
            im.load()
            upright = ImageOps.exif_transpose(im)
            if orientation not in (1, None):
                notes.append(f"EXIF orientation {orientation} applied")
            full = (h, w) if orientation in _TRANSPOSED else (w, h)
            return ReadResult(_pil_to_uint8(upright, notes), scale=scale, full_size=full)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"header declares an enormous image: {one_line(e)}") from None
    except Exception as e:
        raise ImageReadError(path, f"cannot decode the image: {one_line(e)}") from None


def _draft(im: Image.Image, orientation: int | None, scale_for: ScaleFor | None) -> int:
    """Make libjpeg decode a JPEG at the scale ``scale_for`` picks; the scale set (1: none)."""
    if im.format != "JPEG" or scale_for is None:
        return 1
    w, h = im.size
    scale = scale_for(w, h)
    if orientation not in (1, None):
        # a turned or mirrored image moves the partial last block to another edge: only exact
        # multiples keep the decoded pixels where the full image's box expects them
        while scale > 1 and (w % scale or h % scale):
            scale //= 2
    if scale == 1:
        return 1
    # draft picks the largest s with size // s >= the request: ask for exactly 1/scale; the
    # mode stays (colour is converted to gray the usual way after)
    if im.draft(im.mode, (w // scale, h // scale)) is None:
        return 1  # a decoder that cannot draft (more than one tile)
    if im.size != (-(-w // scale), -(-h // scale)):
        raise ValueError(f"draft decoded {im.size}, expected 1/{scale} of {w} x {h}")
    return scale


def _pil_to_uint8(im: Image.Image, notes: list[str]) -> np.ndarray:
    mode = im.mode
    if mode == "L":
        return np.array(im)
    if mode == "1":
        return np.array(im.convert("L"))
    if mode.startswith("I") or mode == "F":
        # 16-bit / 32-bit / float grayscale: no window exists, stretch like a DICOM without VOI
        values = np.asarray(im)
        lo, hi = robust_range(values)
        return np.zeros(values.shape, np.uint8) if hi <= lo else stretch(values, lo, hi)
    if mode == "LA":
        notes.append("alpha channel dropped")
        return np.array(im.getchannel("L"))
    if mode in ("P", "PA"):
        notes.append("palette image converted to grayscale")
    else:
        notes.append(f"colour ({mode}) converted to grayscale")
    return np.array(im.convert("RGB").convert("L"))
