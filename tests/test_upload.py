"""The service's upload spooling, without HTTP: limits, refusals, and nothing left behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pneumo.upload import Upload, UploadError, display_name, receive_upload


def _multipart(payload: bytes, name: str = "file", filename: str = "a.dcm") -> tuple[bytes, str]:
    b = "testboundary42"
    body = (
        (
            f'--{b}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
            f'--{b}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{b}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={b}"


def _receive(body: bytes, ctype: str, tmp_dir: Path, max_bytes: int, chunk: int = 7) -> Upload:
    async def chunks():
        for start in range(0, len(body), chunk):
            yield body[start : start + chunk]

    return asyncio.run(receive_upload(chunks(), ctype, max_bytes=max_bytes, tmp_dir=tmp_dir))


def test_receive_upload_streams_to_a_temp_file_and_enforces_limits(tmp_path):
    payload = bytes(range(256)) * 4
    body, ctype = _multipart(payload, filename="../../etc/passwd.png")
    up = _receive(body, ctype, tmp_path, max_bytes=len(payload))
    assert up.path.parent == tmp_path and up.path.read_bytes() == payload
    assert up.filename == "passwd.png" and up.size == len(payload) and up.path.suffix == ".png"
    up.path.unlink()

    cases = [
        (_multipart(payload), len(payload) - 1, 413),
        (_multipart(b""), 100, 400),
        (_multipart(payload, name="other"), 10_000, 400),
        ((body[:-20], ctype), 10_000, 400),  # no closing boundary
        ((body, "application/json"), 10_000, 415),
        ((body, "multipart/form-data"), 10_000, 415),  # no boundary
    ]
    for (b, ct), limit, status in cases:
        with pytest.raises(UploadError) as exc:
            _receive(b, ct, tmp_path, max_bytes=limit)
        assert exc.value.status == status, exc.value.reason
    assert list(tmp_path.iterdir()) == []  # nothing left behind on any refusal

    two = _multipart(payload)[0].replace(b"--testboundary42--", b"--testboundary42")
    two += b'Content-Disposition: form-data; name="file"; filename="b"\r\n\r\n'
    two += b"xx\r\n--testboundary42--\r\n"
    with pytest.raises(UploadError, match="more than one"):
        _receive(two, ctype, tmp_path, max_bytes=10_000)
    assert list(tmp_path.iterdir()) == []


def test_display_names_are_the_last_component_only():
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("C:\\Users\\a\\scan.dcm") == "scan.dcm"
    assert display_name("") == "upload" and display_name("..") == "upload"
