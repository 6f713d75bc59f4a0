"""The qsched daemon: HTTP API, scheduling, worker supervision. `Daemon` (startup / serve / shutdown)
is the object; `run(config)` the foreground entry point."""
from .app import Daemon, check, run

__all__ = ["Daemon", "check", "run"]
