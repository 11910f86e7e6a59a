"""Robust image reading: DICOM (any transfer syntax pydicom decodes), PNG and JPEG.

``read_image`` turns a file into a 2-D ``uint8`` array or raises ``ImageReadError`` with a one-line
reason; it never raises anything else and never decodes an image whose header declares more than
``MAX_PIXELS`` pixels. The grayscale rules, in order:

- 8-bit unsigned MONOCHROME pixels with no modality rescale and no VOI are returned as stored
  (RSNA's files), so the cache holds exactly what the scanner's JPEG decodes to.
- Otherwise the Modality LUT (rescale slope/intercept or LUT sequence) is applied, then the VOI LUT
  or the first window (centre/width), and the VOI output range is mapped onto 0..255.
- Without a VOI, the 0.5th..99.5th percentile range of the (rescaled) values is stretched onto
  0..255: bit depths above 8 rarely use their full range, and the plain min/max of an X-ray is
  usually set by a few burned-in labels or collimator edges, which would wash out the lungs.
- MONOCHROME1 is inverted last (``255 - x``); colour (RGB, YBR, palette) becomes luminance
  (ITU-R 601: 0.299 R + 0.587 G + 0.114 B), which ``read_image_with_notes`` reports in its notes.
"""

from __future__ import annotations

import contextlib
import logging
import re
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.datadict import dictionary_has_tag
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    pixel_array,
)
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from pneumo.sniff import HEAD_BYTES, sniff

DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# Rows * Columns * samples * frames; a header above this is rejected before anything is decoded
# (a chest film is 4-12 MP; 100 MP of 16-bit samples is already 200 MB decoded).
MAX_PIXELS = 100_000_000
MAX_FILE_BYTES = 1 << 30
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PERCENTILES = (0.5, 99.5)


class ImageReadError(Exception):
    """A file that cannot become an image; ``str()`` is one line naming the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(str(path), reason)  # args kept picklable for process pools
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class ReadResult:
    """A decoded image and what the reader had to do to get it (colour dropped, meta assumed...)."""

    image: np.ndarray  # 2-D uint8
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageMeta:
    """The only header fields that leave data/raw/ (RSNA's patientId is already a random UUID)."""

    view: str | None  # "PA" / "AP" / other ViewPosition, None when unknown
    sex: str | None  # "M" / "F" / "O", None when unknown
    age: int | None  # years, None when absent or unparseable


_AGE = re.compile(r"^\s*0*(\d{1,3})\s*([YMWD]?)\s*$", re.IGNORECASE)


def parse_age(value: object) -> int | None:
    """DICOM AS ("062Y", "006M") or RSNA's bare number ("62") -> whole years; None if unreadable."""
    if value is None:
        return None
    m = _AGE.match(str(value))
    if not m:
        return None
    n, unit = int(m.group(1)), (m.group(2) or "Y").upper()
    return {"Y": n, "M": n // 12, "W": n // 52, "D": n // 365}[unit]


def read_meta(path: str | Path) -> ImageMeta:
    """View, sex and age from a DICOM header (pixels are not read); all None for PNG/JPEG."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageMeta(None, None, None)
    with warnings.catch_warnings():
        # pydicom warns about RSNA's bare-number ages and about odd headers; one summary line
        # from the caller is worth more than 26,684 identical warnings
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            # a forced read turns any bytes into a few bogus elements: a real header without
            # file meta still has identification, patient or image-pixel groups (keys(): a
            # Dataset iterates over its elements, not its tags, whatever ruff's SIM118 says)
            if not any(tag.group in (0x0008, 0x0010, 0x0028) for tag in ds.keys()):  # noqa: SIM118
                raise ImageReadError(path, "not a DICOM file (no DICOM header found)") from None
        view = str(ds.get("ViewPosition", "") or "").strip().upper() or None
        sex = str(ds.get("PatientSex", "") or "").strip().upper() or None
        age_elem = ds.get((0x0010, 0x1010))
        age = parse_age(age_elem.value if age_elem is not None else None)
    return ImageMeta(view, sex, age)


# ----------------------------------------------------------------------------------------------
# Reading


def read_image(path: str | Path) -> np.ndarray:
    """DICOM, PNG or JPEG -> 2-D uint8 array; any failure is an ``ImageReadError`` with a reason."""
    return read_image_with_notes(path).image


def read_image_with_notes(path: str | Path) -> ReadResult:
    """Like ``read_image``, with notes on conversions (colour to gray, assumed transfer syntax)."""
    path = Path(path)
    notes: list[str] = []
    with _quiet_pydicom() as caught:
        try:
            image = _read_any(path, notes, caught)
        except ImageReadError:
            raise
        except MemoryError:
            raise ImageReadError(path, "out of memory while decoding") from None
        except Exception as e:  # a bad file must become a reason, whatever the library raised
            raise ImageReadError(path, f"unreadable: {_one_line(e)}") from e
    return ReadResult(np.ascontiguousarray(image), tuple(notes))


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[list[warnings.WarningMessage]]:
    # pydicom both warns and logs each header oddity (RSNA: "Invalid value for VR AS" on every
    # file); the warnings are recorded so a rejection can quote them, the log records dropped.
    # Both switches are process-wide (not thread-safe): the stage reads in processes, not threads.
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
            warnings.simplefilter("always")
            yield caught
    finally:
        logger.setLevel(level)


def _one_line(e: BaseException | str, limit: int = 240) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, BaseException) and type(e).__name__ not in text:
        text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_any(path: Path, notes: list[str], caught: list[warnings.WarningMessage]) -> np.ndarray:
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
        return _read_pillow(path, notes)
    if kind == "gzip":
        raise ImageReadError(path, "gzip-compressed file, not an image (decompress it first)")
    if kind in ("zip", "tiff", "gif", "bmp"):
        raise ImageReadError(
            path, f"unsupported file format ({kind.upper()}); expected DICOM, PNG or JPEG"
        )
    return _read_dicom(path, preamble=kind == "dicom", notes=notes, caught=caught)


# ----------------------------------------------------------------------------------------------
# DICOM


def _read_dicom(
    path: Path, preamble: bool, notes: list[str], caught: list[warnings.WarningMessage]
) -> np.ndarray:
    try:
        # without the DICM marker, force=True lets pydicom try a bare (ACR-NEMA style) dataset
        ds = pydicom.dcmread(path, force=not preamble)
    except Exception as e:
        what = "invalid DICOM" if preamble else "not a DICOM, PNG or JPEG file"
        raise ImageReadError(path, f"{what}: {_one_line(e)}") from None
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise ImageReadError(path, _no_pixel_reason(ds, preamble, caught))
    if not preamble:
        notes.append("no DICOM preamble/file meta: read with force=True")
    frames = _int_element(path, ds, "NumberOfFrames", default=1)
    rows = _int_element(path, ds, "Rows")
    cols = _int_element(path, ds, "Columns")
    samples = _int_element(path, ds, "SamplesPerPixel", default=1)
    bits = _int_element(path, ds, "BitsAllocated")
    if frames > 1:
        raise ImageReadError(path, f"multi-frame image ({frames} frames); expected a single image")
    check_size(path, rows, cols, samples, frames, bits)
    if samples not in (1, 3):
        raise ImageReadError(path, f"unsupported SamplesPerPixel {samples} (expected 1 or 3)")
    _ensure_transfer_syntax(ds, notes)
    arr = _decode(path, ds)
    expected = (rows, cols) if samples == 1 else (rows, cols, samples)
    if arr.shape != expected:
        raise ImageReadError(
            path, f"decoded shape {arr.shape} does not match the header {expected}"
        )
    return _dicom_to_uint8(path, arr, ds, notes)


def check_size(
    path: str | Path, rows: int, cols: int, samples: int = 1, frames: int = 1, bits: int = 8
) -> None:
    """Reject a declared size of zero or above ``MAX_PIXELS`` before any pixel is decoded."""
    if rows <= 0 or cols <= 0 or samples <= 0 or bits <= 0:
        raise ImageReadError(path, f"invalid image size {rows} x {cols} (samples {samples})")
    pixels = rows * cols * samples * frames
    if pixels > MAX_PIXELS:
        raise ImageReadError(
            path,
            f"header declares an enormous image ({rows} x {cols} x {samples} samples x {frames} "
            f"frames x {bits} bits = {pixels / 1e6:.0f} MP > {MAX_PIXELS / 1e6:.0f} MP limit)",
        )


def _int_element(path: Path, ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise ImageReadError(path, f"missing required element {keyword}")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageReadError(path, f"invalid {keyword} {str(value)!r}") from None


def _no_pixel_reason(ds: pydicom.Dataset, preamble: bool, caught: list) -> str:
    eof = [str(w.message) for w in caught if "End of file" in str(w.message)]
    if eof:
        # pydicom drops an element cut short by the end of the file (with undefined length,
        # the whole dataset) and only warns
        return f"the file is truncated ({_one_line(eof[0].split(' found in file')[0], 120)})"
    known = sum(1 for elem in ds if dictionary_has_tag(elem.tag))
    if not preamble and known < 2:
        # random bytes force-read as implicit VR give one garbage element swallowing the file
        return "not a DICOM, PNG or JPEG file (no DICM marker, no recognisable DICOM elements)"
    if "Rows" in ds and "Columns" in ds:
        return (
            f"image header ({ds.get('Rows')} x {ds.get('Columns')}) but no pixel data: "
            "the file is probably truncated"
        )
    sop = ds.get("SOPClassUID")
    what = UID(str(sop)).name if sop else "unknown SOP class"
    modality = ds.get("Modality")
    return f"no pixel data (not an image: {what}{f', modality {modality}' if modality else ''})"


def _ensure_transfer_syntax(ds: pydicom.Dataset, notes: list[str]) -> None:
    if ds.file_meta.get("TransferSyntaxUID"):
        return
    # no file meta (ACR-NEMA style): use the encoding pydicom detected while parsing, which is
    # implicit VR little endian for every such file we have seen
    implicit, little = ds.original_encoding
    uid = {
        (True, True): ImplicitVRLittleEndian,
        (False, True): ExplicitVRLittleEndian,
        (False, False): ExplicitVRBigEndian,
    }.get((implicit, little), ImplicitVRLittleEndian)
    ds.file_meta.TransferSyntaxUID = uid
    notes.append(f"no transfer syntax in the file meta: read as {uid.name}")


def _decode(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    if ts == JPEGBaseline8Bit:
        # Pillow's libjpeg-turbo decodes RSNA's files about 3x faster than pylibjpeg (3 vs 11 ms)
        with contextlib.suppress(Exception):
            return pixel_array(ds, decoding_plugin="pillow")
    try:
        return pixel_array(ds)
    except Exception as e:
        name = ts.name if ts.is_transfer_syntax else f"unknown transfer syntax {ts}"
        if "less than expected" in str(e):
            raise ImageReadError(path, f"pixel data truncated ({name}): {_one_line(e)}") from None
        raise ImageReadError(
            path, f"cannot decode the pixel data ({name}): {_one_line(e)}"
        ) from None


def _dicom_to_uint8(
    path: Path, arr: np.ndarray, ds: pydicom.Dataset, notes: list[str]
) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)[..., :3]
        desc = ds.get("RedPaletteColorLookupTableDescriptor")
        depth = int(desc[2]) if desc else (16 if rgb.dtype.itemsize > 1 else 8)
        if depth == 16 and rgb.max() <= 255:
            # a 16-bit descriptor over 8-bit entries, a known writer quirk (and what pydicom
            # makes of the big endian OW tables of OBXXXX1A_expb): scaling by 65535 would
            # leave a black image
            depth = 8
        notes.append("palette colour converted to grayscale")
        return _luminance(rgb, 2**depth - 1)
    if arr.ndim == 3:
        notes.append(f"colour ({photometric or 'no photometric interpretation'}) converted to gray")
        if np.issubdtype(arr.dtype, np.floating):
            return _luminance(arr, float(np.nanmax(arr)) or 1.0)
        stored = _int_element(path, ds, "BitsStored", default=arr.dtype.itemsize * 8)
        return _luminance(arr, 2**stored - 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        notes.append(f"photometric interpretation {photometric or 'missing'}: read as MONOCHROME2")
    out = _gray_to_uint8(arr, ds, notes)
    return 255 - out if photometric == "MONOCHROME1" else out


def _luminance(rgb: np.ndarray, maxval: float) -> np.ndarray:
    y = rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587)
    y += rgb[..., 2] * np.float32(0.114)
    if maxval != 255:
        y *= np.float32(255.0 / maxval)
    return _to_uint8(y)


def _to_uint8(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32)
    np.nan_to_num(y, copy=False, nan=0.0)
    np.clip(y, 0, 255, out=y)
    return np.rint(y, out=y).astype(np.uint8)


def _valid_lut(seq: object) -> bool:
    """A LUT sequence whose first item has a descriptor and data (some files ship it empty)."""
    if not seq:
        return False
    item = seq[0]  # type: ignore[index]
    return item.get("LUTDescriptor") is not None and item.get("LUTData") is not None


def _has_rescale(ds: pydicom.Dataset) -> bool:
    if _valid_lut(ds.get("ModalityLUTSequence")):
        return True
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None or intercept is None or slope == "" or intercept == "":
        return False
    return float(slope) != 1.0 or float(intercept) != 0.0


def _has_voi(ds: pydicom.Dataset) -> bool:
    if _valid_lut(ds.get("VOILUTSequence")):
        return True
    return ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, "")


def _gray_to_uint8(arr: np.ndarray, ds: pydicom.Dataset, notes: list[str]) -> np.ndarray:
    plain = arr.dtype == np.uint8 and int(ds.get("BitsStored") or 8) == 8
    if plain and not _has_rescale(ds) and not _has_voi(ds):
        return arr  # RSNA: the stored pixels are the picture, no rescaling
    values = arr
    if _has_rescale(ds):
        if not _valid_lut(ds.get("ModalityLUTSequence")) and ds.get("ModalityLUTSequence"):
            # pydicom prefers the (empty) sequence over slope/intercept: drop it first
            del ds.ModalityLUTSequence
        try:
            values = apply_modality_lut(arr, ds)
        except Exception as e:
            notes.append(f"modality LUT / rescale ignored ({_one_line(e, 120)})")
    if _has_voi(ds):
        windowed = _apply_voi(values, ds, notes)
        if windowed is not None:
            return windowed
    lo, hi = _robust_range(values)
    if hi <= lo:
        notes.append("constant image")
        return np.zeros(arr.shape, np.uint8)
    return _stretch(values, lo, hi)


def _apply_voi(values: np.ndarray, ds: pydicom.Dataset, notes: list[str]) -> np.ndarray | None:
    """VOI LUT (preferred, as pydicom does) or the first window, mapped onto 0..255."""
    try:
        seq = ds.get("VOILUTSequence")
        if _valid_lut(seq):
            ints = values if np.issubdtype(values.dtype, np.integer) else np.rint(values)
            ints = ints.astype(np.int64, copy=False)
            out = apply_voi(ints, ds, 0)
            n_entries, first = int(seq[0].LUTDescriptor[0]) or 65536, int(seq[0].LUTDescriptor[1])
            table = apply_voi(np.arange(first, first + n_entries), ds, 0)
            lo, hi = float(table.min()), float(table.max())
        else:
            out = apply_windowing(values, ds, 0)
            # the output range pydicom maps the window onto depends on bit depth and rescale:
            # read it off the function itself rather than re-deriving its rules
            lo, hi = (float(v) for v in apply_windowing(np.array([-1e300, 1e300]), ds, 0))
    except Exception as e:
        notes.append(f"VOI LUT / window ignored ({_one_line(e, 120)})")
        return None
    if not hi > lo:
        notes.append("VOI LUT / window ignored (empty output range)")
        return None
    if out.min() == out.max() and values.min() != values.max():
        # a window that maps every pixel to one value was set for other data (e.g. before a
        # rescale); the picture matters more than the header here
        notes.append("VOI LUT / window ignored (it saturates the whole image)")
        return None
    return _stretch(out, lo, hi)


def _robust_range(values: np.ndarray) -> tuple[float, float]:
    v = values
    if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
        v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 0.0
    lo, hi = (float(x) for x in np.percentile(v, _PERCENTILES))
    if hi <= lo:  # more than 99 % of one value (a sparse 1-bit mask): fall back to min/max
        lo, hi = float(v.min()), float(v.max())
    return lo, hi


def _stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    y = values.astype(np.float32) if values.dtype != np.float64 else values
    y = (y - lo) * (255.0 / (hi - lo))
    return _to_uint8(y)


# ----------------------------------------------------------------------------------------------
# PNG / JPEG


def _read_pillow(path: Path, notes: list[str]) -> np.ndarray:
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
        raise ImageReadError(path, f"header declares an enormous image: {_one_line(e)}") from None
    except Exception as e:
        raise ImageReadError(path, f"cannot decode the image: {_one_line(e)}") from None


def _pil_to_uint8(im: Image.Image, notes: list[str]) -> np.ndarray:
    mode = im.mode
    if mode == "L":
        return np.array(im)
    if mode == "1":
        return np.array(im.convert("L"))
    if mode.startswith("I") or mode == "F":
        # 16-bit / 32-bit / float grayscale: no window exists, stretch like a DICOM without VOI
        values = np.asarray(im)
        lo, hi = _robust_range(values)
        return np.zeros(values.shape, np.uint8) if hi <= lo else _stretch(values, lo, hi)
    if mode == "LA":
        notes.append("alpha channel dropped")
        return np.array(im.getchannel("L"))
    if mode in ("P", "PA"):
        notes.append("palette image converted to grayscale")
    else:
        notes.append(f"colour ({mode}) converted to grayscale")
    return np.array(im.convert("RGB").convert("L"))
