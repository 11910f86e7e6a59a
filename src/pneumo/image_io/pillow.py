"""PNG / JPEG -> 2-D uint8 with Pillow (EXIF orientation applied, colour to gray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pneumo.image_io.errors import ImageReadError, check_size, one_line
from pneumo.image_io.grayscale import robust_range, stretch


def read_pillow(path: Path, notes: list[str]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            w, h = im.size
            check_size(path, h, w, max(1, len(im.getbands())), 1, 8)
            if getattr(im, "n_frames", 1) > 1:
                notes.append(f"{im.n_frames} frames: the first one is used")
            im.load()
            # Pillow returns a copy even when there is nothing to turn: read the tag itself
            orientation = im.getexif().get(0x0112, 1)
            upright = ImageOps.exif_transpose(im)
            if orientation not in (1, None):
                notes.append(f"EXIF orientation {orientation} applied")
            return _pil_to_uint8(upright, notes)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"header declares an enormous image: {one_line(e)}") from None
    except Exception as e:
        raise ImageReadError(path, f"cannot decode the image: {one_line(e)}") from None


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
