"""Where qsched keeps its files: one place for the daemon, the worker, the CLI and the client (which must
not import the daemon's config to find a socket)."""
from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """QSCHED_STATE_DIR, else /var/lib/qsched for root, else $XDG_STATE_HOME/qsched (~/.local/state)."""
    env = os.environ.get("QSCHED_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/qsched")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "qsched"


def daemon_socket(state_dir: str | Path) -> Path:
    """The daemon's user API socket."""
    return Path(state_dir) / "qsched.sock"


def embedded_redis_socket(state_dir: str | Path) -> Path:
    """The embedded redis-server's socket (local mode queues jobs there too)."""
    return Path(state_dir) / "redis" / "redis.sock"
