"""View, sex and age from a DICOM header, without reading the pixels."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from pneumo.image_io.errors import ImageReadError
from pneumo.sniff import IMAGE_SUFFIXES


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
