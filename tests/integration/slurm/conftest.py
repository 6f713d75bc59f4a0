"""A real single-machine Slurm (munge + slurmctld + slurmd, with slurmdbd on a private MariaDB for
accounting) for the whole session, brought up by slurm/testing/slurm-up.sh, plus two real Unix users
with Slurm associations (qsalice in account chem, qsbob in phys) and a qsched daemon wired to it.

Needs root (slurmd, useradd) and apt or the packages installed. Elsewhere the tests skip, except with
CI=true, where a Slurm that will not start is a failure.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
UP = REPO / "slurm" / "testing" / "slurm-up.sh"
DOWN = REPO / "slurm" / "testing" / "slurm-down.sh"
USERS = ("qsalice", "qsbob")
# Slurm associations (slurmdbd enforces them): the first account of a user is its default
ACCOUNTS = {"chem": ("qsalice",), "phys": ("qsbob",)}
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(why: str):
    if CI:
        pytest.fail(f"Slurm tests cannot run under CI=true: {why}")
    pytest.skip(why)


def _free_ports(n: int = 4) -> int:
    """A port P with P..P+n-1 free (slurmctld, slurmd, slurmdbd, MariaDB)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p > 65535 - n:
            continue
        with contextlib.ExitStack() as held:
            try:
                for k in range(1, n):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", p + k))
            except OSError:
                continue
            return p
    raise RuntimeError(f"no {n} free consecutive ports")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SlurmCluster:
    dir: Path
    env: dict
    plugstack: Path
    plugstack_default: str
    daemon_config: Path         # the daemon's qsched.yaml, written first: Slurm's pools and licences come from it
    daemon_tcp: str

    def run(self, *argv, user: str | None = None, check=True, cwd=None, timeout=30, env=None):
        full = [*argv]
        if user:
            # runuser keeps our environment (SLURM_CONF...) and switches to the user
            full = ["runuser", "-u", user, "--", *argv]
        e = {**self.env, **(env or {})}
        cp = subprocess.run(full, capture_output=True, text=True, cwd=cwd, env=e, timeout=timeout)
        if check and cp.returncode != 0:
            raise AssertionError(f"{' '.join(full)} -> {cp.returncode}\nstdout: {cp.stdout}\nstderr: {cp.stderr}")
        return cp

    def sbatch(self, *args, user: str | None = None, cwd=None, check=True) -> int | subprocess.CompletedProcess:
        cp = self.run("sbatch", "--parsable", *args, user=user, cwd=cwd, check=check)
        if not check and cp.returncode != 0:
            return cp
        return int(cp.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict:
        from qsched.slurm.jobs import parse_scontrol_record
        cp = self.run("scontrol", "show", "job", "-o", str(job_id))
        return parse_scontrol_record(cp.stdout.strip().splitlines()[0])

    def wait_state(self, job_id: int, states, timeout=30.0) -> dict:
        states = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        while True:
            j = self.job(job_id)
            if j["JobState"] in states:
                return j
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {j['JobState']}, not {states} after {timeout} s: {j}")
            time.sleep(0.1)

    def set_plugstack(self, extra: str = "") -> None:
        """Rewrite plugstack.conf (each new step reads it; no restart needed)."""
        self.plugstack.write_text(self.plugstack_default.rstrip("\n") + (" " + extra if extra else "") + "\n")

    def cancel_all(self):
        self.run("scancel", "--full", "--partition=debug", check=False)


@pytest.fixture(scope="session")
def slurm():
    if os.geteuid() != 0:
        _unavailable("needs root (slurmd, munged, useradd)")
    have = shutil.which("slurmctld") and shutil.which("slurmd") and Path("/usr/include/slurm/spank.h").exists()
    if not have and not shutil.which("apt-get"):
        _unavailable("Slurm is not installed and there is no apt-get")
    # the Unix users before their associations: slurmctld resolves an association's user name to a uid
    # when it loads it, and one added for a missing user stays without (its jobs: "Invalid account")
    created = []
    for name in USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-M", "-s", "/bin/bash", name], check=True, capture_output=True)
            created.append(name)
    d = Path(tempfile.mkdtemp(prefix="qsched-slurm-", dir="/tmp"))
    d.chmod(0o755)
    daemon_config, tcp = _write_daemon_config(d)
    port = _free_ports()
    env = {**os.environ, "QSCHED_SLURM_PORT": str(port), "QSCHED_SLURM_ACCOUNTING": "1",
           "QSCHED_SLURM_ACCOUNTS": " ".join(f"{a}={','.join(us)}" for a, us in ACCOUNTS.items()),
           # qsched_site.lua and Licenses= from the daemon's config, through `qsched slurm sync`
           "QSCHED_SLURM_SITE_CONFIG": str(daemon_config), "QSCHED_PYTHON": sys.executable}
    try:
        cp = subprocess.run(["bash", str(UP), str(d)], capture_output=True, text=True, env=env, timeout=600)
    except subprocess.TimeoutExpired:
        _unavailable("slurm-up.sh timed out")
    if cp.returncode != 0:
        subprocess.run(["bash", str(DOWN), str(d), "--purge"], capture_output=True)
        _delete_users(created)
        _unavailable(f"slurm-up.sh failed:\n{cp.stderr[-3000:]}")
    plugstack = d / "etc" / "plugstack.conf"
    env = {**os.environ, "SLURM_CONF": str(d / "etc" / "slurm.conf")}
    for k in ("QSCHED_URL", "QSCHED_SESSION", "QSCHED_POOL", "QSCHED_CLASS", "SLURM_JOB_ID"):
        env.pop(k, None)
    cluster = SlurmCluster(d, env, plugstack, plugstack.read_text(), daemon_config, tcp)
    yield cluster
    cluster.cancel_all()
    subprocess.run(["bash", str(DOWN), str(d), "--purge"], capture_output=True, timeout=60)
    _delete_users(created)


def _delete_users(names) -> None:
    for name in names:
        subprocess.run(["userdel", name], capture_output=True)


@dataclass
class SlurmUser:
    name: str
    uid: int
    gid: int
    home: Path          # a work dir under the cluster dir, owned by the user


@pytest.fixture(scope="session")
def users(slurm):
    """Two real Unix users (the slurm fixture creates them when missing and removes those it created),
    each with a work dir."""
    out = {}
    for name in USERS:
        pw = pwd.getpwnam(name)
        home = slurm.dir / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        home.chmod(0o755)
        out[name] = SlurmUser(name, pw.pw_uid, pw.pw_gid, home)
    return out


@dataclass
class UserPython:
    """How a job of another user runs Python with this venv's packages."""
    exe: str
    env: dict = field(default_factory=dict)

    def shebang_script(self, body: str) -> str:
        exports = "".join(f"export {k}={v}\n" for k, v in self.env.items())
        return f"#!/bin/bash\n{exports}exec {self.exe} - \"$@\" <<'PYEOF'\n{body}\nPYEOF\n"


@pytest.fixture(scope="session")
def user_python(users, portable_python):
    """The session's portable Python (tests/conftest.py): the clone and the venv's interpreter may sit
    where the test users cannot reach them (a 0700 home, pyenv under /root)."""
    name = next(iter(users))
    env = {**portable_python.env, "HOME": str(users[name].home)}
    cp = subprocess.run(["runuser", "-u", name, "--", "env", *[f"{k}={v}" for k, v in env.items()],
                         portable_python.exe, "-c", "import qsched, numpy, qiskit"],
                        capture_output=True, text=True, cwd="/")
    if cp.returncode != 0:
        _unavailable(f"user {name} cannot run {portable_python.exe} with qsched importable:\n{cp.stderr[-2000:]}")
    return UserPython(portable_python.exe, portable_python.env)


@dataclass
class SlurmDaemon:
    proc: subprocess.Popen
    state_dir: Path
    config_path: Path
    log_path: Path
    tcp: str
    env: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"unix://{self.state_dir / 'qsched.sock'}"

    def client(self, url: str | None = None):
        import qsched
        return qsched.Client(url or self.url)

    def redis(self):
        import redis
        return redis.Redis(unix_socket_path=str(self.state_dir / "redis" / "redis.sock"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self, timeout: float = 60) -> None:
        """`qsched up` on this config; returns once its devices are up and the admin socket exists."""
        self.proc = subprocess.Popen([sys.executable, "-m", "qsched", "up", "--config", str(self.config_path)],
                                     stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                     env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with self.client() as c:
                    if all(x["up"] for x in c.devices()) and (self.state_dir / "admin.sock").exists():
                        return
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"daemon not ready within {timeout:g} s:\n{self.log()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM (drain, then exit), SIGKILL after timeout; then make sure no child survives."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode


# the policy the Slurm tests run under: account weights apply to sessions whose account Slurm reports
# and a site class (premium) that job_submit.lua knows only from the generated qsched_site.lua
SLURM_POLICY = {"name": "fair-share", "weights": {"accounts": {"chem": 2}}, "classes": {"premium": {"weight": 3}}}


def _write_daemon_config(cluster_dir: Path) -> tuple[Path, str]:
    """The daemon's config: one aer device (so jobs' tasks must share it), a lightning pool (scripts that
    name it), the Slurm hooks on. Slurm's pool licences (4 per device) are generated from it."""
    state = cluster_dir / "qsched"
    state.mkdir(exist_ok=True)
    state.chmod(0o755)
    tcp = f"127.0.0.1:{_free_port()}"
    # drain_timeout_s as in production: a stop must end with the running batches, long before it
    cfg = {"state_dir": str(state), "daemon": {"tcp": tcp, "drain_timeout_s": 30},
           "devices": [{"name": "aer0", "type": "aer", "pool": "aer", "max_qubits": 16},
                       {"name": "lightning0", "type": "lightning", "pool": "lightning", "max_qubits": 16}],
           "policy": SLURM_POLICY,
           "slurm": {"enabled": True, "env": {"SLURM_CONF": str(cluster_dir / "etc" / "slurm.conf")},
                     "reconcile_interval_s": 0.5, "site": {"default_pool": "aer", "slots_per_device": 4}}}
    config_path = state / "qsched.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    return config_path, tcp


@pytest.fixture(scope="session")
def slurm_daemon(slurm):
    """`qsched up` as root on the cluster's daemon config (see _write_daemon_config), in the state dir the
    plugstack's admin_socket points at. A test may stop and start it (same state)."""
    state = slurm.daemon_config.parent
    d = SlurmDaemon(None, state, slurm.daemon_config, state / "daemon.log", slurm.daemon_tcp,  # type: ignore[arg-type]
                    env={**slurm.env, "QSCHED_STATE_DIR": str(state)})
    d.start()
    yield d
    d.stop()
