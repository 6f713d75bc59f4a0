"""Process ties shared by the daemon's children (embedded Redis, workers) and the demo."""
from __future__ import annotations

import os
import signal


def die_with_parent(expected_parent: int | None = None) -> None:
    """Linux: get SIGTERM when the process that started us dies, so no orphan holds a device or a store.

    A process that asks after its own exec (the worker) may ask too late: a parent that died before
    prctl never sends the signal. With `expected_parent`, such a process exits at once instead."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if expected_parent is not None and os.getppid() != expected_parent:
        raise SystemExit(f"the process that started this one (pid {expected_parent}) is gone")
