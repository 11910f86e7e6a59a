"""Uploads for the web service (``src/serve.py``): a multipart body streamed, within a size limit,
into a temporary file under a name the service makes up.

The parser is our own, on python-multipart's streaming callbacks, because Starlette's
``request.form()`` does not cap file parts (its ``max_part_size`` applies to the other fields):
it spools a file of any size to disk before the handler can refuse it. Here the file part and
the whole body are counted while they arrive, and the request stops at the limit with a 413.
The client's file name is kept for display only, reduced to its last component; the temporary
file keeps its suffix only when it is a known image suffix.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from pneumo.sniff import DICOM_SUFFIXES, IMAGE_SUFFIXES


class UploadError(Exception):
    """A request the service refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Upload:
    """An uploaded file spooled to a temporary path (the caller deletes it)."""

    path: Path
    filename: str  # the client's name, for display only: never part of a path
    size: int


FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and small fields around the file
_SAFE_SUFFIXES = (*DICOM_SUFFIXES, *IMAGE_SUFFIXES)


def display_name(filename: str | None) -> str:
    """The client's file name reduced to its last component, for answers and logs only."""
    name = PureWindowsPath(PurePosixPath(filename or "").name).name
    name = "".join(ch for ch in name if ch.isprintable())[:200]
    return "upload" if name in ("", ".", "..") else name


def _suffix_for(filename: str) -> str:
    # only a known image suffix is kept, so the reader's "PNG content in a '.dcm' file" note
    # still tells the client something true; anything else becomes a neutral suffix
    suffix = PurePosixPath(filename).suffix.lower()
    return suffix if suffix in _SAFE_SUFFIXES else ".upload"


class _Multipart:
    """Callbacks of python-multipart's streaming parser: the ``file`` part goes to a temp file."""

    def __init__(self, field_name: str, max_bytes: int, tmp_dir: Path) -> None:
        self.field_name = field_name
        self.max_bytes = max_bytes
        self.tmp_dir = tmp_dir
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.target = None  # open temp file while inside the file part
        self.path: Path | None = None
        self.filename = ""
        self.size = 0
        self.ended = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.strip().lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self.disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name != self.field_name:
            return  # other fields are read (and counted against the body limit) but ignored
        if self.path is not None:
            raise UploadError(400, f"more than one '{self.field_name}' part: send one file")
        self.filename = display_name(options.get(b"filename", b"").decode("utf-8", "replace"))
        fd, tmp = tempfile.mkstemp(
            prefix="upload-", suffix=_suffix_for(self.filename), dir=self.tmp_dir
        )
        self.path = Path(tmp)
        self.target = os.fdopen(fd, "wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.target is None:
            return
        self.size += end - start
        if self.size > self.max_bytes:
            raise UploadError(413, f"file larger than the upload limit of {self.max_bytes} bytes")
        self.target.write(data[start:end])

    def on_part_end(self) -> None:
        if self.target is not None:
            self.target.close()
            self.target = None

    def on_end(self) -> None:
        self.ended = True

    def discard(self) -> None:
        if self.target is not None:
            self.target.close()
            self.target = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


async def receive_upload(
    chunks: AsyncIterator[bytes],
    content_type: str | None,
    *,
    max_bytes: int,
    tmp_dir: Path,
    field_name: str = "file",
) -> Upload:
    """Stream a multipart body into a temporary file in ``tmp_dir``, stopping at the limits.

    Raises ``UploadError``: 415 not multipart, 413 the file exceeds ``max_bytes`` (or the body
    exceeds it plus ``FORM_OVERHEAD``), 400 malformed, no or several ``file`` parts, or empty.
    Nothing is kept on error; on success the caller owns (and deletes) ``Upload.path``.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UploadError(
            415, f"send multipart/form-data with the image in a field named '{field_name}'"
        )
    state = _Multipart(field_name, max_bytes, tmp_dir)
    total, limit = 0, max_bytes + FORM_OVERHEAD
    try:
        parser = MultipartParser(boundary, callbacks=state.callbacks())
        async for chunk in chunks:
            total += len(chunk)
            if total > limit:
                raise UploadError(413, f"request larger than the upload limit of {max_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
        if not state.ended:
            raise UploadError(400, "incomplete multipart body (no closing boundary)")
        if state.path is None:
            raise UploadError(400, f"no file in the form field '{field_name}'")
        if state.size == 0:
            raise UploadError(400, "empty file (0 bytes)")
    except MultipartParseError as e:
        state.discard()
        raise UploadError(400, f"malformed multipart body: {e}") from None
    except BaseException:
        state.discard()  # also on cancellation (client gone): no temp file is left behind
        raise
    return Upload(state.path, state.filename, state.size)
