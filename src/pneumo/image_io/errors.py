"""The one error the image reader raises, its one-line reasons and the size limit."""

from __future__ import annotations

from pathlib import Path

# Rows * Columns * samples * frames; a header above this is rejected before anything is decoded
# (a chest film is 4-12 MP; 100 MP of 16-bit samples is already 200 MB decoded).
MAX_PIXELS = 100_000_000


class ImageReadError(Exception):
    """A file that cannot become an image; ``str()`` is one line naming the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(str(path), reason)  # args kept picklable for process pools
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def one_line(e: BaseException | str, limit: int = 240) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, BaseException) and type(e).__name__ not in text:
        text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
