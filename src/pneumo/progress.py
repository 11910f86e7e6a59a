"""Progress of the long steps: a tqdm bar on a terminal, a few plain lines in a log.

tqdm's ``disable=None`` turns the bar off when the stream is not a terminal, and then says nothing
at all: under CI, ``nohup`` or ``dvc exp run --queue`` (whose output goes to a log file) an hour of
header reads at RSNA scale would look like a hang. Off a terminal, ``Progress`` writes a line such
as ``split: read 10000/26684 headers`` when another tenth of the work is done (at most one every
``min_interval_s`` seconds) and always one at the end. Progress goes to stderr only: no output
file of a stage depends on it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
MIN_INTERVAL_S = 5.0  # plain mode: seconds between two lines before the last


class _Bar(tqdm):
    # no monitor thread: the data stages fork worker pools, and forking a multi-threaded process
    # is unsafe
    monitor_interval = 0


class Progress:
    """Counts done items of one step; ``update(n)`` as work completes, ``close()`` at the end.

    ``desc`` starts the line (``"split: read"``), ``unit`` ends it (``"headers"``); ``total`` may be
    None when the amount is unknown (plain lines then say only how many are done).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str,
        *,
        enabled: bool = True,
        stream: IO[str] | None = None,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0
        self._interval = min_interval_s
        self._last_line = time.monotonic()
        self._tenth = 0  # plain mode: tenths of the total already reported
        self._reported = -1  # plain mode: the count the last line gave
        self._closed = not enabled
        tty = enabled and self.stream.isatty()
        self._bar = _Bar(total=total, desc=desc, unit=unit, file=self.stream) if tty else None

    def update(self, n: int = 1, **postfix: Any) -> None:
        """``n`` more items done; ``postfix`` (e.g. ``rejected=3``) shows beside a terminal bar."""
        if self._closed:
            return
        self.done += n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)
            return
        tenth = 10 * self.done // self.total if self.total else self._tenth + 1
        now = time.monotonic()
        if tenth > self._tenth and now - self._last_line >= self._interval:
            self._tenth = tenth
            self._write_line()

    def close(self) -> None:
        """End the bar, or write the last plain line (once)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._reported != self.done:
            self._write_line()

    def _write_line(self) -> None:
        self._last_line, self._reported = time.monotonic(), self.done
        of = f"/{self.total}" if self.total is not None else ""
        self.stream.write(f"{self.desc} {self.done}{of} {self.unit}\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(
    items: Iterable[T], desc: str, unit: str, *, total: int | None = None, **kwargs: Any
) -> Iterator[T]:
    """``items``, counting one done per item (``total`` defaults to ``len(items)`` when known)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit, **kwargs) as bar:
        for item in items:
            yield item
            bar.update()


def track_batches(n: int, size: int, desc: str, unit: str, **kwargs: Any) -> Iterator[slice]:
    """``slice(start, stop)`` over ``range(n)`` in steps of ``size``, each batch counted as done
    once the loop body has taken the next one (or finished)."""
    with Progress(n, desc, unit, **kwargs) as bar:
        for start in range(0, n, size):
            stop = min(start + size, n)
            yield slice(start, stop)
            bar.update(stop - start)
