"""Worker processes of the data stages: how many, and that none outlives its stage.

A pool worker blocked on its task queue does not notice that the stage process was killed
(``kill -9``, or SIGTERM, whose default action runs no ``finally``): it stays, holding its memory,
and one busy with a chunk goes on writing into the dead run's temporary folder. On Linux each
worker asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``); elsewhere it
checks once that its parent is the stage that started it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def available_cores() -> int:
    """Cores this process may run on (``workers: 0`` means all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def n_workers(workers: int) -> int:
    """The number of processes ``workers`` asks for (0 = every core this process may use)."""
    return workers if workers > 0 else available_cores()


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker when process ``parent_pid`` (the stage) dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the stage died before the request took effect
        os._exit(1)


def process_pool(workers: int, mp_context: Any) -> ProcessPoolExecutor:
    """A process pool whose workers end when this process dies (``die_with_parent``)."""
    return ProcessPoolExecutor(
        workers, mp_context=mp_context, initializer=die_with_parent, initargs=(os.getpid(),)
    )
