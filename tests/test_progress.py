"""Progress of the long steps: plain lines off a terminal, a tqdm bar on one."""

from __future__ import annotations

import io

from pneumo.progress import Progress, track, track_batches


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal_one_per_tenth_and_the_last() -> None:
    log = io.StringIO()
    assert list(track(range(95), "split: read", "headers", stream=log, min_interval_s=0)) == list(
        range(95)
    )
    lines = log.getvalue().splitlines()
    assert lines[0] == "split: read 10/95 headers" and lines[-1] == "split: read 95/95 headers"
    assert len(lines) == 10  # nine tenths reached on the way, then the end


def test_a_fast_step_writes_only_its_last_line() -> None:
    log = io.StringIO()
    with Progress(26684, "split: read", "headers", stream=log) as bar:
        for _ in range(26684):
            bar.update()
    assert log.getvalue() == "split: read 26684/26684 headers\n"


def test_unknown_total_and_disabled() -> None:
    log = io.StringIO()
    list(track(iter(range(7)), "download: hash NORMAL", "images", stream=log))
    assert log.getvalue() == "download: hash NORMAL 7 images\n"
    quiet = io.StringIO()
    with Progress(3, "x", "y", enabled=False, stream=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_a_terminal_gets_a_bar_not_lines() -> None:
    tty = _Terminal()
    with Progress(40, "infer: test", "images", stream=tty) as bar:
        bar.update(40, rejected=0)
    out = tty.getvalue()
    assert "infer: test" in out and "40/40" in out and "\r" in out
    assert "infer: test 40/40 images\n" not in out


def test_batches_cover_the_range_once() -> None:
    log = io.StringIO()
    slices = list(track_batches(10, 4, "cam: test maps", "images", stream=log))
    assert [(s.start, s.stop) for s in slices] == [(0, 4), (4, 8), (8, 10)]
    assert log.getvalue().endswith("cam: test maps 10/10 images\n")
