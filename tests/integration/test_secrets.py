"""Secrets stay out of what other local users can read: argv and the environment of child processes."""
from __future__ import annotations

import subprocess
import time

import psutil

from qsched.daemon.redis_server import redis_server_binary

PASSWORD = "s3cret-for-the-test-only"


def test_the_redis_password_is_in_no_process_command_line_or_environment(fresh_daemon, tmp_path):
    sock = tmp_path / "redis.sock"
    redis = subprocess.Popen([redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm",
                              "700", "--requirepass", PASSWORD, "--save", "", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        d = fresh_daemon(devices=[{"name": "null0", "type": "null", "pool": "null"}],
                         extra={"redis": {"url": f"unix://:{PASSWORD}@{sock}"}})
        procs = [d.proc, *(psutil.Process(d.proc.pid).children(recursive=True))]
        assert len(procs) >= 3                                   # daemon, worker, heartbeat
        for p in procs:
            p = psutil.Process(p.pid)
            assert PASSWORD not in " ".join(p.cmdline()), p.cmdline()
            assert all(PASSWORD not in v for v in p.environ().values()), p.cmdline()
    finally:
        redis.kill()
        redis.wait()
