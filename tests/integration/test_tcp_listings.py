"""Listings over TCP (`QSCHED_URL=http://host:port qsched session list`) against a real daemon and a real
munged: a MUNGE credential names the caller, and an unauthorised or forbidden listing is an error (exit 1),
never an empty table. The munged is private (its own key and socket, QSCHED_MUNGE_SOCKET and
slurm.munge_socket point at it), so the system's munged and the Slurm tests are not touched."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from qsched.errors import NotFound

NULL = [{"name": "null0", "type": "null", "pool": "null", "max_qubits": 20}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def munged(env_unavailable):
    """A munged of this module's own: its socket path."""
    unavailable = env_unavailable
    if not shutil.which("munged"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            unavailable("munged is not installed (apt-get install munge needs root)")
        # apt shares dpkg with the Slurm bring-up: take its lock
        for argv in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "munge"]):
            subprocess.run(["flock", "/tmp/qsched-slurm.lock", *argv], check=True, capture_output=True, timeout=600,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    d = Path(tempfile.mkdtemp(prefix="qsched-munge-", dir="/tmp"))
    d.chmod(0o755)
    (d / "key").write_bytes(os.urandom(128))
    (d / "key").chmod(0o600)
    run_as: list[str] = []
    if os.geteuid() == 0:
        # munged refuses to run as root without --force; it runs as munge, as in production
        shutil.chown(d, "munge", "munge")
        shutil.chown(d / "key", "munge", "munge")
        run_as = ["runuser", "-u", "munge", "--"]
    sock = d / "munge.sock"
    cp = subprocess.run([*run_as, shutil.which("munged") or "munged", f"--socket={sock}", f"--key-file={d / 'key'}",
                         f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'munged.log'}",
                         f"--seed-file={d / 'seed'}"], capture_output=True, text=True, timeout=30)
    if cp.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        unavailable(f"munged did not start: {cp.stderr}")
    try:
        yield str(sock)
    finally:
        try:
            pid = int((d / "munged.pid").read_text())
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):            # it writes its seed file on the way out: then remove the dir
                os.kill(pid, 0)
                time.sleep(0.05)
        except (OSError, ValueError):
            pass
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tcp_daemon(munged, tmp_path_factory, daemon_starter):
    port = _free_port()
    d = daemon_starter(tmp_path_factory.mktemp("tcp"), devices=NULL,
                       extra={"daemon": {"tcp": f"127.0.0.1:{port}"},
                              "slurm": {"enabled": False, "munge_socket": munged}})
    d.tcp_url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        d.stop_all()


def qs(url, *args, munge_socket, python=sys.executable, user=None, env_extra=None):
    env = {**os.environ, "QSCHED_URL": url, "QSCHED_MUNGE_SOCKET": munge_socket, "QSCHED_RETRY_S": "2",
           **(env_extra or {})}
    argv = [python, "-m", "qsched", *args]
    if user:
        argv = ["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in env.items()
                                                      if k.startswith(("QSCHED_", "PYTHON"))], *argv]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, cwd="/")


def test_root_lists_over_tcp_with_munge_and_the_daemon_log_says_nothing_secret(tcp_daemon, munged):
    c = tcp_daemon.client()
    s = c.open_session(pool="null", name="over-tcp")
    try:
        out = qs(tcp_daemon.tcp_url, "session", "list", "-o", "id,name", "-P", "-n", munge_socket=munged)
        assert out.returncode == 0, out.stderr
        assert f"{s.id}|over-tcp" in out.stdout.splitlines()
        me = qs(tcp_daemon.tcp_url, "session", "list", "-u", "root", "-o", "id", "-n", munge_socket=munged)
        assert me.returncode == 0 and s.id in me.stdout.split()
        show = qs(tcp_daemon.tcp_url, "session", "show", s.id, "--json", munge_socket=munged)
        assert show.returncode == 0, show.stderr
        assert '"name": "over-tcp"' in show.stdout
        queue = qs(tcp_daemon.tcp_url, "queue", "-o", "id", "-n", munge_socket=munged)
        assert queue.returncode == 0 and s.id in queue.stdout.split(), queue.stderr
        dev = qs(tcp_daemon.tcp_url, "device", "list", "-o", "name", "-n", munge_socket=munged)
        assert dev.returncode == 0 and dev.stdout.split() == ["null0"], dev.stderr
        # a session closed over TCP (MUNGE, purpose "close") is in the ledger read over TCP
        cancel = qs(tcp_daemon.tcp_url, "session", "cancel", s.id, munge_socket=munged)
        assert cancel.returncode == 0 and f"closed {s.id}" in cancel.stdout, cancel.stderr
        acct = qs(tcp_daemon.tcp_url, "acct", "-S", time.strftime("%Y-%m-%d"), "-o", "session", "-n",
                  munge_socket=munged)
        assert acct.returncode == 0 and s.id in acct.stdout.split(), acct.stderr
    finally:
        with contextlib.suppress(NotFound):      # closed by the CLI above
            s.close()
        c.close()
    assert "MUNGE:" not in tcp_daemon.log()        # credentials are not logged


def test_without_a_credential_every_listing_is_an_error_not_an_empty_table(tcp_daemon, munged):
    c = tcp_daemon.client()
    s = c.open_session(pool="null", name="hidden")
    try:
        for args in (["session", "list"], ["queue"], ["acct"], ["device", "list"], ["session", "show", s.id]):
            out = qs(tcp_daemon.tcp_url, *args, munge_socket="/nonexistent/munge.sock")
            assert out.returncode == 1, (args, out.stdout, out.stderr)
            assert "authorization" in out.stderr and "MUNGE" in out.stderr, (args, out.stderr)
            assert out.stdout == "", (args, out.stdout)          # no header of an empty table
    finally:
        s.close()
        c.close()


def test_a_credential_is_single_use_and_bound_to_its_purpose(tcp_daemon, munged):
    from qsched.client.transport import SyncTransport
    from qsched.errors import QschedError
    from qsched.slurm.munge import credential_for
    t = SyncTransport(tcp_daemon.tcp_url, 10)
    try:
        cred = credential_for("list", socket=munged)
        assert "sessions" in t.request("GET", "/v1/sessions", headers={"X-Qsched-Munge": cred})
        with pytest.raises(QschedError, match="replayed") as e:
            t.request("GET", "/v1/sessions", headers={"X-Qsched-Munge": cred})
        assert e.value.status == 401
        with pytest.raises(QschedError, match="'list', not 'open'") as e:
            t.request("POST", "/v1/sessions", body={"pool": "null"},
                      headers={"X-Qsched-Munge": credential_for("list", socket=munged)})
        assert e.value.status == 401
    finally:
        t.close()


def test_a_user_sees_their_own_and_is_refused_another_users(tcp_daemon, munged, portable_python):
    """nobody (a real non-root user, MUNGE-proven over TCP): its own listing is empty with exit 0 (it has
    no sessions); root's sessions are refused with exit 1 naming the field, not shown as nothing."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the CLI as another user")
    c = tcp_daemon.client()
    s = c.open_session(pool="null", name="roots")
    py = portable_python.exe
    env = portable_python.env
    try:
        own = qs(tcp_daemon.tcp_url, "session", "list", "-o", "id,user", "-P", munge_socket=munged, python=py,
                 user="nobody", env_extra=env)
        assert own.returncode == 0, own.stderr
        assert own.stdout.splitlines() == ["ID|USER"]            # the header: nobody has no session
        other = qs(tcp_daemon.tcp_url, "session", "list", "-u", "root", munge_socket=munged, python=py,
                   user="nobody", env_extra=env)
        assert other.returncode == 1 and other.stdout == ""
        assert "user: root's sessions and records are shown only to root and admins (you are nobody)" in other.stderr
        acct = qs(tcp_daemon.tcp_url, "acct", "-u", "root", munge_socket=munged, python=py, user="nobody",
                  env_extra=env)
        assert acct.returncode == 1 and "user: root's" in acct.stderr
        show = qs(tcp_daemon.tcp_url, "session", "show", s.id, munge_socket=munged, python=py, user="nobody",
                  env_extra=env)
        assert show.returncode == 1 and "belongs to another user" in show.stderr
    finally:
        s.close()
        c.close()
