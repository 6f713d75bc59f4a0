"""A worker as systemd's qsched-worker@.service runs it: an unprivileged user whose group is
`redis.socket_group`, against a root daemon's embedded Redis (`daemon.start_workers: false`). The group
reaches the socket and nothing else of the Redis directory (the AOF holds the token-signing key)."""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

GROUP = "nogroup"                 # Debian's; the units use a `qsched` system user and group


def _as(user: str, group: str, python: str, code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", python, "-c", code],
                          capture_output=True, text=True, timeout=120, env=env, cwd="/")


@pytest.fixture
def root_daemon(daemon_starter, env_unavailable):
    if os.geteuid() != 0:
        pytest.skip("needs root: the daemon as root, the worker as nobody")
    try:
        grp.getgrnam(GROUP)
        pwd.getpwnam("nobody")
    except KeyError:
        env_unavailable(f"no user nobody or group {GROUP}")
    # pytest's tmp dirs are 0700: the worker's user must reach the state dir and the config
    state = Path(tempfile.mkdtemp(prefix="qsched-unpriv-", dir="/tmp"))
    state.chmod(0o755)
    d = daemon_starter(state, devices=[{"name": "null0", "type": "null", "pool": "null"}], wait_devices=False,
                       extra={"daemon": {"start_workers": False}, "redis": {"socket_group": GROUP}})
    d.config_path.chmod(0o644)
    try:
        yield d
    finally:
        d.stop_all()
        shutil.rmtree(state, ignore_errors=True)


def test_a_worker_in_the_socket_group_serves_a_root_daemon(root_daemon, portable_python):
    d = root_daemon
    rdir = d.state_dir / "redis"
    st = os.stat(rdir)
    assert (st.st_mode & 0o777, st.st_gid) == (0o710, grp.getgrnam(GROUP).gr_gid)
    env = {**portable_python.env, "HOME": "/tmp", "QSCHED_STATE_DIR": str(d.state_dir), "PATH": os.environ["PATH"]}
    probe = ("import os, socket, sys\n"
             f"s = socket.socket(socket.AF_UNIX); s.connect({str(rdir / 'redis.sock')!r}); print('connected')\n"
             f"try:\n    os.listdir({str(rdir)!r}); print('listed')\n"
             "except PermissionError:\n    print('no listing')\n")
    member = _as("nobody", GROUP, portable_python.exe, probe, env)
    assert member.stdout.splitlines() == ["connected", "no listing"], member.stderr
    # outside the group: not even the socket (it was 0700 to root alone before socket_group)
    other = _as("nobody", "daemon", portable_python.exe, probe, env)
    assert other.returncode != 0 and "PermissionError" in other.stderr, other.stdout

    worker = subprocess.Popen(["setpriv", "--reuid=nobody", f"--regid={GROUP}", "--clear-groups", portable_python.exe,
                               "-m", "qsched", "worker", "--device", "null0", "--config", str(d.config_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd="/",
                              start_new_session=True)
    try:
        c = d.client()
        deadline = time.monotonic() + 60
        while not c.devices()[0]["up"]:
            assert worker.poll() is None, worker.stdout.read().decode(errors="replace") if worker.stdout else ""
            assert time.monotonic() < deadline, "the unprivileged worker never sent a heartbeat"
            time.sleep(0.2)
        from qiskit import QuantumCircuit
        qc = QuantumCircuit(1)
        qc.h(0)
        qc.measure_all()
        with c.open_session(pool="null") as s:
            res = s.run("sample", qc, shots=10, timeout=60)
        assert sum(res.counts().values()) == 10
        hb = c.devices()[0]["worker"]
        assert hb["pid"] != os.getpid()
        assert Path(f"/proc/{hb['pid']}").stat().st_uid == pwd.getpwnam("nobody").pw_uid
        c.close()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def test_an_unknown_socket_group_is_refused_naming_the_field(tmp_path):
    import sys
    cfg = tmp_path / "qsched.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "redis": {"socket_group": "no-such-group-qs"}}))
    cp = subprocess.run([sys.executable, "-m", "qsched", "daemon", "check", "--config", str(cfg)],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1 and "redis.socket_group: no group 'no-such-group-qs'" in cp.stderr
