"""Start a private `qsched up` for a benchmark and stop it afterwards."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time

import yaml


@contextlib.contextmanager
def private_daemon(devices: list[dict], policy: dict | None = None, *, daemon: dict | None = None):
    import qsched
    state = tempfile.mkdtemp(prefix="qsched-bench-")
    cfg = {"state_dir": state, "daemon": {"tcp": None, **(daemon or {})}, "devices": devices,
           "policy": policy or {"name": "fair-share"}}
    path = os.path.join(state, "qsched.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    env = {k: v for k, v in os.environ.items() if k not in ("QSCHED_URL", "QSCHED_SESSION", "QSCHED_CONFIG")}
    proc = subprocess.Popen([sys.executable, "-m", "qsched", "up", "--config", path], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(state, "daemon.log"), "wb"))
    url = f"unix://{state}/qsched.sock"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if all(d["up"] for d in qsched.Client(url).devices()):
                    break
            except qsched.QschedError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(open(os.path.join(state, "daemon.log")).read())
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
