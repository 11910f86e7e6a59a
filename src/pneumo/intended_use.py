"""The intended-use gate of prediction: is a DICOM file a frontal chest radiograph?

The model was trained on RSNA-format films (see the shared RSNA notes: CR secondary captures of
chest films, ``Modality`` CR, ``BodyPartExamined`` CHEST, ``ViewPosition`` PA or AP, 8-bit
MONOCHROME2, one frame). The gate reads the header only (no pixels) and refuses, with a one-line
reason, what the model was never meant to see. The rules, each on a DICOM standard attribute:

1. **Modality (0008,0060)** must be ``CR`` (Computed Radiography) or ``DX`` (Digital X-Ray): RSNA's
   files are CR; DX is the same projection radiograph from a flat-panel detector. Modality is Type 1
   in the General Series module, so a header without it is refused too (CT, MR, US, ``OT``
   secondary captures of unknown content: all refused).
2. **BodyPartExamined (0018,0015)**, when present and not empty, must name the chest. The
   standard's defined term is ``CHEST`` (PS3.16 CID 4031); real headers also carry ``THORAX``,
   local languages (``TORAX``, ``TORACE``, ``PECHO``) and compounds such as ``CHEST PA`` or
   ``PORT_CHEST``, so any word of the value that is one of ``CHEST_WORDS`` passes. The attribute is
   Type 3 (optional): absent or empty, the other rules decide.
3. **ViewPosition (0018,5101)**, when present and not empty, must be frontal: ``PA`` or ``AP``
   (RSNA's two views). The standard's other defined terms (``LL``, ``RL`` laterals, ``LLD``/``RLD``
   decubitus, ``LLO``/``RLO`` obliques) and free text such as ``LATERAL`` are refused. Absent or
   empty (it is Type 2 in the DX and CR modules), the other rules decide.
4. **NumberOfFrames (0028,0008)** above 1 is a cine or a volume, not a radiograph; and
   **SamplesPerPixel (0028,0002)** above 1 or a **PhotometricInterpretation (0028,0004)** other
   than ``MONOCHROME1``/``MONOCHROME2`` (RGB, YBR, PALETTE COLOR) is colour data: a radiograph is
   monochrome.

PNG and JPEG files have no header: they pass the gate, and nothing here can tell a chest film from
any other picture. A file whose header cannot be parsed passes too, so that the image reader gives
its own reason. The preprocess stage never calls the gate: training data is chosen by the split.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from pneumo.sniff import sniff_file

MODALITIES = ("CR", "DX")
CHEST_WORDS = frozenset({"CHEST", "THORAX", "TORAX", "TORACE", "THORAKS", "PECHO", "LUNG", "LUNGS"})
FRONTAL_VIEWS = ("PA", "AP")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")

# what prediction records as the gate's verdict (the ``gate`` field of every answer)
PASSED = "passed"
NO_HEADER = "no header"  # PNG / JPEG, or a header the reader will reject itself
OFF = "off"


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def _int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        return int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):  # a malformed value: the reader rejects it with its reason
        return default


def header_refusals(ds: Dataset) -> list[str]:
    """The reasons (one per broken rule, in the module's order) a header is not for this model."""
    reasons = []
    modality = _text(ds, "Modality")
    if modality not in MODALITIES:
        found = f"Modality {modality}" if modality else "no Modality in the header"
        reasons.append(f"{found}: the model reads chest radiographs ({' or '.join(MODALITIES)})")
    body_part = _text(ds, "BodyPartExamined")
    if body_part and not CHEST_WORDS.intersection(re.split(r"[^A-Z]+", body_part)):
        reasons.append(f"BodyPartExamined {body_part}, not the chest")
    view = _text(ds, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        reasons.append(f"ViewPosition {view}: not a frontal (PA or AP) view")
    frames = _int(ds, "NumberOfFrames", 1)
    if frames > 1:
        reasons.append(f"multi-frame data ({frames} frames), not a radiograph")
    samples = _int(ds, "SamplesPerPixel", 1)
    photometric = _text(ds, "PhotometricInterpretation")
    if samples > 1 or (photometric and photometric not in MONOCHROME):
        reasons.append(f"colour data ({photometric or f'{samples} samples per pixel'})")
    return reasons


def read_header(path: Path) -> Dataset | None:
    """The DICOM header of ``path`` without its pixels; None for PNG/JPEG or an unparseable file."""
    if sniff_file(path) not in ("dicom", "unknown"):  # PNG, JPEG, or a format the reader refuses
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RSNA's bare-number ages warn on every file
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # the reader names the problem when it decodes the file
            return None
    # a forced read makes a few bogus elements out of any bytes: a header has image-pixel,
    # identification or patient elements
    return ds if any(tag.group in (0x0008, 0x0010, 0x0028) for tag in ds.keys()) else None  # noqa: SIM118


def check_file(path: str | Path) -> tuple[str, str | None]:
    """(``PASSED`` or ``NO_HEADER``, None) for a file the model may read; else ("refused", why)."""
    ds = read_header(Path(path))
    if ds is None:
        return NO_HEADER, None
    reasons = header_refusals(ds)
    return ("refused", "; ".join(reasons)) if reasons else (PASSED, None)


@dataclass(frozen=True)
class Admission:
    """The gate's verdict on one file, as prediction reports it."""

    gate: str  # PASSED, NO_HEADER or OFF: the ``gate`` field of the answer
    refused: str | None  # the reason when the gate is on and refuses the file
    notes: tuple[str, ...] = ()  # with the gate off: what it would have refused


def admit(path: str | Path, enabled: bool) -> Admission:
    """Check ``path`` against the rules; with ``enabled`` False (research use) only note them."""
    verdict, reason = check_file(path)
    if enabled:
        return Admission(verdict, reason if verdict == "refused" else None)
    notes = (f"intended-use gate off, it would refuse: {reason}",) if reason else ()
    return Admission(OFF, None, notes)
