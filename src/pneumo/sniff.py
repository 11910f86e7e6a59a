"""What a file is: PNG, JPEG, DICOM (the ``DICM`` marker) or another format, by content or suffix.

The one definition of these signatures and suffixes, used by the image reader
(``pneumo.image_io``), the folder source (``pneumo.sources.folder``) and the predict command's
folder walk. It is a module of its own so that the download stage, which sniffs the files it
imports, does not depend on the image reader.
"""

from __future__ import annotations

from pathlib import Path

DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
HEAD_BYTES = 132  # a DICOM file's 128-byte preamble and its "DICM" marker


def sniff(head: bytes) -> str:
    """The format of a file's first ``HEAD_BYTES``: png, jpeg, dicom, gzip, zip, ... or unknown."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[128:HEAD_BYTES] == b"DICM":
        return "dicom"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    return "unknown"


def sniff_file(path: Path) -> str | None:
    """``sniff`` of a file's first bytes, or None when the file cannot be opened."""
    try:
        with open(path, "rb") as f:
            return sniff(f.read(HEAD_BYTES))
    except OSError:
        return None
