"""A worker's heartbeat, sent by a small process beside it.

A long simulation holds the worker's GIL (aer at 22 qubits: 16 s in which no other thread of the
worker ran), so a thread cannot beat for it. This process beats while the worker runs and stops
beating when the worker is stopped (SIGSTOP), a zombie or gone; the key's expiry then tells the
daemon within `ttl_s` that the device is down and that what its worker held is lost."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil

_ALIVE_STATES = {psutil.STATUS_RUNNING, psutil.STATUS_SLEEPING, psutil.STATUS_DISK_SLEEP, psutil.STATUS_IDLE,
                 psutil.STATUS_WAKING}


def start(redis_url: str, device: str, *, ttl_s: float, static: dict, token: str) -> subprocess.Popen:
    """Start the heartbeat process for the calling worker, which holds the device's lease `token`."""
    # the URL may hold a password: over a pipe, not in argv (which every local user can read)
    argv = [sys.executable, "-m", "qsched.heartbeat", device, str(os.getpid()), str(ttl_s), json.dumps(static),
            token]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, close_fds=True)
    assert proc.stdin is not None
    proc.stdin.write(redis_url.encode() + b"\n")
    proc.stdin.close()
    return proc


def beat(redis_url: str, device: str, worker_pid: int, ttl_s: float, static: dict, token: str) -> None:
    import redis as redis_lib

    from .redisconn import sync_client
    from .store import DeviceQueue
    queue = DeviceQueue(sync_client(redis_url, socket_timeout=max(1.0, ttl_s)), device)
    worker = psutil.Process(worker_pid)
    interval = max(0.05, ttl_s / 4)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        try:
            if worker.status() not in _ALIVE_STATES:
                time.sleep(interval)       # stopped or a zombie: let the key expire
                continue
            rss = worker.memory_info().rss
        except psutil.NoSuchProcess:
            return
        try:
            # memory grows with the qubit count (16 bytes x 2^n per state vector): show it to admins
            ours = queue.beat({**static, "pid": worker_pid, "rss_bytes": rss, "at": time.time()}, ttl_s, token)
        except redis_lib.RedisError:
            ours = True                    # Redis restarting: the worker's own loop notices too
        if not ours:
            # another worker holds the device (ours lapsed while we were stopped, say): stop ours
            print(f"qsched heartbeat: device {device} is served by another worker; stopping worker "
                  f"{worker_pid}", file=sys.stderr)
            os.kill(worker_pid, signal.SIGTERM)
            return
        time.sleep(interval)


if __name__ == "__main__":
    device, pid, ttl, static_json, lease = sys.argv[1:6]
    beat(sys.stdin.readline().strip(), device, int(pid), float(ttl), json.loads(static_json), lease)
