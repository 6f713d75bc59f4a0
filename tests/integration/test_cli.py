"""The `qsched` command against a real daemon: filters, formats, sessions by Slurm job id, a closed
session's `show`, acct -S/-E, and `top` across a daemon restart and in a terminal."""
from __future__ import annotations

import json
import os
import pwd
import select
import signal
import subprocess
import sys
import time
import uuid

import pytest

import qsched
from qsched.client import Session

ME = pwd.getpwuid(os.getuid()).pw_name


def qs(daemon_url, *args, timeout=60):
    env = {**os.environ, "QSCHED_URL": daemon_url, "QSCHED_RETRY_S": "5"}
    env.pop("NO_COLOR", None)
    return subprocess.run([sys.executable, "-m", "qsched", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def job_session(client, pool, job_id, name="cli-job") -> Session:
    """A session that names a Slurm job (no Slurm here: the daemon takes the job id as given)."""
    info = client._t.request("POST", "/v1/sessions", body={"pool": pool, "job_id": job_id, "name": name})
    return Session(client, info)


def _job() -> str:
    return str(int(uuid.uuid4().int % 10**7) + 10**7)


def test_version(qsched_daemon):
    out = qs(qsched_daemon.url, "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"qsched {qsched.__version__}"


def test_listings_filters_and_formats(qsched_daemon, client):
    j1, j2 = _job(), _job()
    a, b = job_session(client, "null", j1, "cli-a"), job_session(client, "aer", j2, "cli-b")
    try:
        out = qs(qsched_daemon.url, "session", "list", "-j", j1, "-o", "id,JobID,pool,user", "-P", "--noheader")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"{a.id}|{j1}|null|{ME}"
        both = qs(qsched_daemon.url, "session", "list", "-j", f"{j1},{j2}", "-n", "-o", "id").stdout.split()
        assert sorted(both) == sorted([a.id, b.id])
        assert qs(qsched_daemon.url, "session", "list", "-j", j2, "--pool", "null", "-n").stdout.strip() == ""
        assert b.id in qs(qsched_daemon.url, "session", "list", "-u", ME, "--state", "idle").stdout
        empty = qs(qsched_daemon.url, "session", "list", "-u", "nobody-at-all")
        assert empty.returncode == 0 and empty.stdout.split()[:2] == ["ID", "JOB_ID"]
        assert "(none)" not in empty.stdout and len(empty.stdout.strip().splitlines()) == 1

        q = json.loads(qs(qsched_daemon.url, "queue", "--json", "-j", j1).stdout)
        assert [s["id"] for s in q["sessions"]] == [a.id] and q["pools"]["aer"]["devices"] == ["aer0"]
        s = q["sessions"][0]
        assert isinstance(s["created"], float) and s["created_iso"].startswith(time.strftime("%Y-"))
        queue = qs(qsched_daemon.url, "queue", "-u", ME, "--pool", "aer").stdout
        assert "policy: fair-share" in queue and b.id in queue and a.id not in queue

        dev = qs(qsched_daemon.url, "device", "list")
        assert dev.returncode == 0 and "STATE" in dev.stdout.splitlines()[0]
        assert "True" not in dev.stdout and "None" not in dev.stdout
        rows = {line.split()[0]: line.split()[3] for line in dev.stdout.splitlines()[1:]}
        assert rows["aer0"] == "up" and rows["null0"] == "up"
        assert qs(qsched_daemon.url, "device", "list", "--pool", "aer", "-n", "-o", "name").stdout.split() == ["aer0"]
        assert qs(qsched_daemon.url, "device", "list", "--state", "down", "-n").stdout.strip() == ""
        devs = json.loads(qs(qsched_daemon.url, "device", "list", "--json").stdout)["devices"]
        assert all(d["state"] == "up" and d["up"] is True for d in devs)
        bad = qs(qsched_daemon.url, "session", "list", "-o", "id,nonsense")
        assert bad.returncode == 2 and "nonsense" in bad.stderr
    finally:
        a.close()
        b.close()


def test_sessions_by_job_id_and_a_closed_session(qsched_daemon, client):
    j = _job()
    s = job_session(client, "null", j)
    fut = s.submit("sample", _bell(), shots=10)
    fut.result(timeout=30)
    shown = qs(qsched_daemon.url, "session", "show", "-j", j)
    assert shown.returncode == 0, shown.stderr
    assert s.id in shown.stdout and "IDLE" in shown.stdout
    cancel = qs(qsched_daemon.url, "session", "cancel", "-j", j)
    assert cancel.returncode == 0, cancel.stderr
    assert f"closed {s.id} (job {j})" in cancel.stdout
    assert s.id not in qs(qsched_daemon.url, "session", "list").stdout

    # closed: GET /v1/sessions/{sid} no longer knows it; the ledger does
    closed = qs(qsched_daemon.url, "session", "show", s.id)
    assert closed.returncode == 0, closed.stderr
    assert "CLOSED" in closed.stdout and j in closed.stdout and "accounting ledger" in closed.stdout
    rec = json.loads(qs(qsched_daemon.url, "session", "show", s.id, "--json").stdout)
    assert rec["id"] == s.id and rec["state"] == "CLOSED" and rec["usage"]["tasks"] == 1 and rec["closed_iso"]
    by_job = json.loads(qs(qsched_daemon.url, "session", "show", "-j", j, "--json").stdout)["sessions"]
    assert [x["id"] for x in by_job] == [s.id]
    again = qs(qsched_daemon.url, "session", "cancel", "-j", j)
    assert again.returncode == 1 and "no open session" in again.stderr
    nothing = qs(qsched_daemon.url, "session", "show", "s-does-not-exist")
    assert nothing.returncode == 1 and "s-does-not-exist" in nothing.stderr

    # acct: -j without -S looks at all time; -S/-E as sacct takes them
    acct = qs(qsched_daemon.url, "acct", "-j", j, "-P", "-o", "session,jobid,tasks")
    assert acct.returncode == 0, acct.stderr
    assert acct.stdout.strip().splitlines() == ["SESSION|JOB_ID|TASKS", f"{s.id}|{j}|1"]
    today = time.strftime("%Y-%m-%d")
    assert s.id in qs(qsched_daemon.url, "acct", "-S", today, "-n", "-o", "session").stdout.split()
    assert s.id in qs(qsched_daemon.url, "acct", "-S", "now-1hours", "-E", "now", "-n", "-o", "session").stdout
    assert s.id not in qs(qsched_daemon.url, "acct", "-S", "now+1hours", "-n").stdout
    assert s.id not in qs(qsched_daemon.url, "acct", "-S", "0", "-E", "2000-01-01T00:00", "-n").stdout
    assert s.id in qs(qsched_daemon.url, "acct", "--since", "7d", "-u", ME, "-n").stdout
    bad = qs(qsched_daemon.url, "acct", "-S", "someday")
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr


def _bell():
    from qiskit import QuantumCircuit
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


def _read_until(read, pred, timeout, what):
    deadline = time.monotonic() + timeout
    buf = ""
    while time.monotonic() < deadline:
        buf += read()
        if pred(buf):
            return buf
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; output so far:\n{buf[-3000:]}")


NULL_ONLY = [{"name": "null0", "type": "null", "pool": "null", "max_qubits": 20, "max_shots": 10000,
              "max_bindings": 5000}]


@pytest.mark.slow
def test_top_keeps_polling_across_a_daemon_restart(fresh_daemon, tmp_path):
    d = fresh_daemon(devices=NULL_ONLY)
    out_path = tmp_path / "top.out"
    env = {**os.environ, "QSCHED_URL": d.url}
    with open(out_path, "w") as out:
        top = subprocess.Popen([sys.executable, "-m", "qsched", "top", "--interval", "0.3"], stdout=out,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        with d.client() as c, c.session("null") as s:
            for _ in range(5):
                s.run("sample", _bell(), shots=10)
            text = _read_until(out_path.read_text, lambda t: t.count("policy fair-share") >= 3, 30, "three frames")
            assert "BUSY%" in text and "WAIT_P95_S" in text and "ACCOUNT" in text and "JOB_ID" in text
            assert "\x1b[" not in text                      # not a terminal: no colour
        d.stop()
        _read_until(out_path.read_text, lambda t: "reconnecting" in t, 30, "reconnecting")
        assert top.poll() is None
        n = out_path.read_text().count("policy fair-share")
        fresh_daemon(state_dir=d.state_dir, devices=NULL_ONLY)
        _read_until(out_path.read_text, lambda t: t.count("policy fair-share") > n, 60, "a frame after the restart")
        assert top.poll() is None
    finally:
        top.send_signal(signal.SIGINT)
        top.wait(10)
    assert top.returncode == 0


def test_top_in_a_terminal_colours_and_q_quits(qsched_daemon):
    master, slave = os.openpty()
    env = {**os.environ, "QSCHED_URL": qsched_daemon.url, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    top = subprocess.Popen([sys.executable, "-m", "qsched", "top", "--interval", "0.2"], stdin=slave, stdout=slave,
                           stderr=slave, env=env, close_fds=True)
    os.close(slave)

    def read():
        r, _, _ = select.select([master], [], [], 0.1)
        try:
            return os.read(master, 65536).decode(errors="replace") if r else ""
        except OSError:
            return ""
    try:
        text = _read_until(read, lambda t: "policy fair-share" in t and "q quits" in t, 30, "a frame")
        assert "\x1b[" in text                              # a terminal: colour
        os.write(master, b"q")
        top.wait(10)
        assert top.returncode == 0
    finally:
        if top.poll() is None:
            top.kill()
            top.wait()
        os.close(master)

    env["NO_COLOR"] = "1"
    master, slave = os.openpty()
    top = subprocess.Popen([sys.executable, "-m", "qsched", "top", "--interval", "0.2"], stdin=slave, stdout=slave,
                           stderr=slave, env=env, close_fds=True)
    os.close(slave)
    try:
        text = _read_until(read, lambda t: "policy fair-share" in t and "q quits" in t, 30, "a frame")
        assert "\x1b[3" not in text and "\x1b[1m" not in text   # NO_COLOR: no colours (the screen clear stays)
        os.write(master, b"q")
        top.wait(10)
        assert top.returncode == 0
    finally:
        if top.poll() is None:
            top.kill()
            top.wait()
        os.close(master)


@pytest.mark.parametrize("args", [["top", "--once"], ["queue", "--json"]])
def test_existing_script_forms_keep_working(qsched_daemon, client, args):
    s = client.open_session("null", name="cli-forms")
    try:
        out = qs(qsched_daemon.url, *args)
        assert out.returncode == 0, out.stderr
        assert s.id in out.stdout
    finally:
        s.close()
