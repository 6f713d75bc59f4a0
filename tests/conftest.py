"""Shared fixtures: a real qsched daemon (`qsched up`: embedded Redis, real worker processes) in a
private state directory. No tests/__init__.py: PennyLane ships a top-level `tests` package."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

TEST_DEVICES = [
    {"name": "null0", "type": "null", "pool": "null", "max_qubits": 20, "max_shots": 10000, "max_bindings": 5000},
    {"name": "aer0", "type": "aer", "pool": "aer", "max_qubits": 16, "max_shots": 100000},
    {"name": "lightning0", "type": "lightning", "pool": "lightning", "max_qubits": 16},
]


@dataclass
class Daemon:
    proc: subprocess.Popen
    state_dir: Path
    config_path: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"unix://{self.state_dir / 'qsched.sock'}"

    def client(self):
        import qsched
        return qsched.Client(self.url)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_daemon(state_dir: Path, devices=None, policy=None, extra=None, wait_devices=True) -> Daemon:
    state_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"state_dir": str(state_dir), "daemon": {"tcp": None, "drain_timeout_s": 10},
           "devices": devices or TEST_DEVICES, "policy": policy or {"name": "fair-share"}}
    for k, v in (extra or {}).items():
        cfg.setdefault(k, {}).update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
    config_path = state_dir / "qsched.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    log_path = state_dir / "daemon.log"
    env = {**os.environ, "QSCHED_STATE_DIR": str(state_dir)}
    env.pop("QSCHED_URL", None)
    env.pop("QSCHED_SESSION", None)
    proc = subprocess.Popen([sys.executable, "-m", "qsched", "up", "--config", str(config_path)],
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    d = Daemon(proc, state_dir, config_path, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited ({proc.returncode}):\n{d.log()}")
        try:
            devs = d.client().devices()
            if not wait_devices or all(x["up"] for x in devs):
                return d
        except Exception:
            pass
        time.sleep(0.1)
    d.stop(signal.SIGKILL)
    raise RuntimeError(f"daemon not ready within 60 s:\n{d.log()}")


@pytest.fixture(scope="session")
def qsched_daemon(tmp_path_factory):
    """One daemon for the whole run, with null, aer and lightning pools."""
    d = start_daemon(tmp_path_factory.mktemp("qsched"))
    yield d
    d.stop()


@pytest.fixture
def client(qsched_daemon):
    c = qsched_daemon.client()
    yield c
    c.close()


@pytest.fixture
def fresh_daemon(tmp_path):
    """A daemon of the test's own, for tests that kill or restart things."""
    started = []

    def start(**kw):
        d = start_daemon(tmp_path / f"d{len(started)}", **kw) if not kw.get("state_dir") else \
            start_daemon(kw.pop("state_dir"), **kw)
        started.append(d)
        return d
    yield start
    for d in started:
        d.stop(signal.SIGKILL, 5)
        # the embedded Redis and workers are the daemon's children: make sure none survives
        try:
            os.killpg(d.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
