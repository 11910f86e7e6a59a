"""The reader's entry point: any file -> 2-D uint8 or ``ImageReadError`` (see the package)."""

from __future__ import annotations

import contextlib
import logging
import stat
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from pneumo.image_io.dicom import read_dicom
from pneumo.image_io.errors import ImageReadError, one_line
from pneumo.image_io.pillow import read_pillow
from pneumo.image_io.result import ReadResult, ScaleFor
from pneumo.sniff import HEAD_BYTES, sniff

MAX_FILE_BYTES = 1 << 30


def read_image(path: str | Path) -> np.ndarray:
    """DICOM, PNG or JPEG -> 2-D uint8 array; any failure is an ``ImageReadError`` with a reason."""
    return read_image_with_notes(path).image


def read_image_with_notes(path: str | Path, scale_for: ScaleFor | None = None) -> ReadResult:
    """Like ``read_image``, with notes on conversions (colour to gray, assumed transfer syntax).

    With ``scale_for``, a JPEG file or a JPEG baseline grayscale DICOM is decoded at the scale it
    chooses from the image's size (``pneumo.imaging.dct_scale``); anything else is read whole.
    """
    path = Path(path)
    notes: list[str] = []
    with _quiet_pydicom() as caught:
        try:
            decoded = _read_any(path, notes, caught, scale_for)
        except ImageReadError:
            raise
        except MemoryError:
            raise ImageReadError(path, "out of memory while decoding") from None
        except Exception as e:  # a bad file must become a reason, whatever the library raised
            raise ImageReadError(path, f"unreadable: {one_line(e)}") from e
    return replace(decoded, image=np.ascontiguousarray(decoded.image), notes=tuple(notes))


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[list[warnings.WarningMessage]]:
    # pydicom both warns and logs each header oddity (RSNA: "Invalid value for VR AS" on every
    # file); the warnings are recorded so a rejection can quote them, the log records dropped.
    # The records go through a filter of this call's own, not a saved-and-restored logger level:
    # prediction reads in threads, and two threads restoring each other's level left pydicom's
    # logger silenced for good. (The warnings filter stays process-wide: the preprocess stage
    # reads in processes; prediction's threads may lose a note, never the image.)
    logger = logging.getLogger("pydicom")
    drop = logging.Filter(name="\0")  # matches no logger name: drops every record
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
            warnings.simplefilter("always")
            yield caught
    finally:
        logger.removeFilter(drop)


def _read_any(
    path: Path,
    notes: list[str],
    caught: list[warnings.WarningMessage],
    scale_for: ScaleFor | None,
) -> ReadResult:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot access the file: {e.strerror}") from None
    # a FIFO or device would block or stream forever
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(path, "not a regular file")
    if st.st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    if st.st_size > MAX_FILE_BYTES:
        raise ImageReadError(
            path, f"file too large ({st.st_size >> 20} MiB > {MAX_FILE_BYTES >> 20} MiB)"
        )
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    kind = sniff(head)
    if kind in ("png", "jpeg"):
        expected = (".png",) if kind == "png" else (".jpg", ".jpeg")
        if path.suffix.lower() not in expected:
            notes.append(
                f"{kind.upper()} content in a '{path.suffix}' file: read as {kind.upper()}"
            )
        return read_pillow(path, notes, scale_for)
    if kind == "gzip":
        raise ImageReadError(path, "gzip-compressed file, not an image (decompress it first)")
    if kind in ("zip", "tiff", "gif", "bmp"):
        raise ImageReadError(
            path, f"unsupported file format ({kind.upper()}); expected DICOM, PNG or JPEG"
        )
    return read_dicom(path, kind == "dicom", notes, caught, scale_for)
