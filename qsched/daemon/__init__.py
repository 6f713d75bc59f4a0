"""The qsched daemon: HTTP API, scheduling loop, worker supervision; `run(config)` is the entry point."""
from .main import run, serve

__all__ = ["run", "serve"]
