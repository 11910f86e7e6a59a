"""DICOM pixels -> 2-D uint8: decoding, colour to luminance, Modality LUT, VOI / window."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.datadict import dictionary_has_tag
from pydicom.encaps import generate_frames
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

from pneumo.image_io.errors import ImageReadError, check_size, one_line
from pneumo.image_io.grayscale import luminance, robust_range, stretch
from pneumo.image_io.result import ReadResult, ScaleFor

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dicom(
    path: Path,
    preamble: bool,
    notes: list[str],
    caught: list[warnings.WarningMessage],
    scale_for: ScaleFor | None = None,
) -> ReadResult:
    try:
        # without the DICM marker, force=True lets pydicom try a bare (ACR-NEMA style) dataset
        ds = pydicom.dcmread(path, force=not preamble)
    except Exception as e:
        what = "invalid DICOM" if preamble else "not a DICOM, PNG or JPEG file"
        raise ImageReadError(path, f"{what}: {one_line(e)}") from None
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
    scale = scale_for(cols, rows) if scale_for and _plain_jpeg(ds, samples, bits) else 1
    reduced = _decode_reduced(ds, rows, cols, scale) if scale > 1 else None
    if reduced is not None:  # the stored pixels are the picture: _plain_jpeg checked
        return ReadResult(_monochrome(reduced, ds), scale=scale, full_size=(cols, rows))
    arr = _decode(path, ds)
    expected = (rows, cols) if samples == 1 else (rows, cols, samples)
    if arr.shape != expected:
        raise ImageReadError(
            path, f"decoded shape {arr.shape} does not match the header {expected}"
        )
    return ReadResult(_dicom_to_uint8(path, arr, ds, notes))


# elements that make the stored pixels something other than the picture (checked by presence
# first: each pydicom element read costs 15-25 us, a tenth of the scaled decode's overhead)
_LUT_KEYWORDS = (
    "ModalityLUTSequence",
    "RescaleSlope",
    "RescaleIntercept",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
)


def _plain_jpeg(ds: pydicom.Dataset, samples: int, bits: int) -> bool:
    """JPEG baseline, one 8-bit gray sample stored as the picture: RSNA's files."""
    if samples != 1 or bits != 8:
        return False
    if UID(str(ds.file_meta.TransferSyntaxUID)) != JPEGBaseline8Bit:
        return False
    if int(ds.get("BitsStored") or 8) != 8:
        return False
    if str(ds.get("PhotometricInterpretation", "")).strip() not in ("MONOCHROME1", "MONOCHROME2"):
        return False
    return not any(k in ds for k in _LUT_KEYWORDS) or not (_has_rescale(ds) or _has_voi(ds))


def _decode_reduced(ds: pydicom.Dataset, rows: int, cols: int, scale: int) -> np.ndarray | None:
    """The frame's JPEG decoded at 1/``scale`` by libjpeg, or None to take the full path.

    The frame goes to Pillow directly, as pydicom's Pillow plugin would send it, with a draft
    size that makes libjpeg run its scaled inverse DCT; anything unexpected (another codestream,
    a size that disagrees with the header, a decoder error) falls back to the full decode, which
    reports the file's problem if it has one.
    """
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        with Image.open(io.BytesIO(frame)) as im:
            if im.format != "JPEG" or im.mode != "L" or im.size != (cols, rows):
                return None
            # draft picks the largest s with size // s >= the request: ask for exactly 1/scale
            im.draft("L", (cols // scale, rows // scale))
            im.load()
            arr = np.asarray(im)  # read-only, over Pillow's bytes: no second copy
    except Exception:
        return None
    expected = (-(-rows // scale), -(-cols // scale))
    return arr if arr.shape == expected else None


def _monochrome(out: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    return 255 - out if photometric == "MONOCHROME1" else out


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
        return f"the file is truncated ({one_line(eof[0].split(' found in file')[0], 120)})"
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
            raise ImageReadError(path, f"pixel data truncated ({name}): {one_line(e)}") from None
        raise ImageReadError(
            path, f"cannot decode the pixel data ({name}): {one_line(e)}"
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
        return luminance(rgb, 2**depth - 1)
    if arr.ndim == 3:
        notes.append(f"colour ({photometric or 'no photometric interpretation'}) converted to gray")
        if np.issubdtype(arr.dtype, np.floating):
            return luminance(arr, float(np.nanmax(arr)) or 1.0)
        stored = _int_element(path, ds, "BitsStored", default=arr.dtype.itemsize * 8)
        return luminance(arr, 2**stored - 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        notes.append(f"photometric interpretation {photometric or 'missing'}: read as MONOCHROME2")
    return _monochrome(_gray_to_uint8(arr, ds, notes), ds)


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
            notes.append(f"modality LUT / rescale ignored ({one_line(e, 120)})")
    if _has_voi(ds):
        windowed = _apply_voi(values, ds, notes)
        if windowed is not None:
            return windowed
    lo, hi = robust_range(values)
    if hi <= lo:
        notes.append("constant image")
        return np.zeros(arr.shape, np.uint8)
    return stretch(values, lo, hi)


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
        notes.append(f"VOI LUT / window ignored ({one_line(e, 120)})")
        return None
    if not hi > lo:
        notes.append("VOI LUT / window ignored (empty output range)")
        return None
    if out.min() == out.max() and values.min() != values.max():
        # a window that maps every pixel to one value was set for other data (e.g. before a
        # rescale); the picture matters more than the header here
        notes.append("VOI LUT / window ignored (it saturates the whole image)")
        return None
    return stretch(out, lo, hi)
