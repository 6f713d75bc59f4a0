"""Process ties shared by the daemon's children (embedded Redis, workers) and the demo."""
from __future__ import annotations

import signal


def die_with_parent() -> None:
    """Linux: get SIGTERM when the process that started us dies, so no orphan holds a device or a store."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
