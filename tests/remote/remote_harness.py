"""Helpers for the qrmi device's tests: the device's config against the IBM Runtime stand-in, its
credentials file, the daemon's Redis, the worker's pid."""
import contextlib
import json
import os
import signal
import time
from pathlib import Path

import redis
from ibm_standin import API_KEY, SERVICE_CRN, StandIn

from qsched import keys


def credentials(tmp_path: Path, mode: int = 0o600) -> str:
    path = tmp_path / "qpu.credentials"
    path.write_text(json.dumps({"apikey": API_KEY, "service_crn": SERVICE_CRN}))
    path.chmod(mode)
    return str(path)


def qpu_device(s: StandIn, creds: str, name: str = "qpu0", **options) -> dict:
    return {"name": name, "type": "qrmi", "pool": "qpu", "max_qubits": 5, "credentials_file": creds,
            "cost_prior": {"setup_s": 2.0, "per_shot_s": 0.0002},
            "options": {"resource": s.backend, "endpoint": s.url, "iam_endpoint": s.url,
                        "poll_interval_s": 0.05, "status_interval_s": 0.2, "call_timeout_s": 2.0,
                        "submit_timeout_s": 20.0, "throttle_s": 1.0, "default_shots": 4000, **options}}


def redis_of(d) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(d.state_dir / "redis" / "redis.sock"))


def worker_pid(d, device="qpu0", old=None, timeout=60):
    r = redis_of(d)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hb = r.get(keys.device_heartbeat(device))
        if hb and json.loads(hb)["pid"] != old:
            return json.loads(hb)["pid"]
        time.sleep(0.05)
    raise AssertionError("no worker heartbeat")


def until(cond, timeout=30.0, every=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")



@contextlib.contextmanager
def hung(pid: int):
    """The process stopped (SIGSTOP: alive, no heartbeat) for the block, killed after it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
