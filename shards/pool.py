"""Worker processes that end with their parent.

A ``ProcessPoolExecutor`` worker waits for its next task on a pipe whose write end its siblings also hold (forked
copies), so after a ``kill -9`` of the parent it never sees end-of-file and waits forever, holding memory and file
handles. Each worker therefore arranges its own end: Linux's ``PR_SET_PDEATHSIG`` has the kernel send it SIGKILL when
the parent dies, and a thread that watches ``os.getppid()`` covers other systems (and a failed ``prctl``).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_SECONDS = 0.5
"""How often the fallback thread looks for a new parent pid."""


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _ask_kernel_for_sigkill() -> bool:
    """``prctl(PR_SET_PDEATHSIG, SIGKILL)``: True when the kernel will kill this process as its parent dies."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(WATCH_SECONDS)
        if os.getppid() != parent:  # re-parented to init or a subreaper: the parent is gone
            _kill_self()


def die_with_parent(parent: int) -> None:
    """Make this (worker) process end when the process ``parent`` does; call first thing in the worker."""
    _ask_kernel_for_sigkill()
    if os.getppid() != parent:  # the parent died before prctl took effect
        _kill_self()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="die-with-parent").start()
