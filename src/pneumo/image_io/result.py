"""What a reader returns: the gray image, the reader's notes and the scale it was decoded at."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReadResult:
    """A decoded image and what the reader had to do to get it (colour dropped, meta assumed...)."""

    image: np.ndarray  # 2-D uint8
    notes: tuple[str, ...] = ()
    scale: int = 1  # image is a 1/scale decode (JPEG's DCT scaling) of a file of full_size
    full_size: tuple[int, int] | None = None  # (width, height); None: the image's own


# (width, height) of the image in the file -> the DCT scale s (8, 4, 2, 1) to decode a JPEG at
ScaleFor = Callable[[int, int], int]
