"""Shared fixtures: a real qsched daemon (`qsched up`: embedded Redis, real worker processes) in a
private state directory, and a Python that other Unix users can run. No tests/__init__.py: PennyLane
ships a top-level `tests` package.

Markers (registered in pyproject.toml): `slurm` (needs root and an installable Slurm: skipped elsewhere,
a failure under CI=true), `gpu` (skipped without an NVIDIA GPU), `slow` (deselect with -m "not slow")."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(why: str):
    """Skip a test whose environment is missing; under CI=true that is a failure, not a skip."""
    if CI:
        pytest.fail(f"cannot run under CI=true: {why}")
    pytest.skip(why)


def slurm_missing() -> str | None:
    """Why the Slurm tests cannot run here, or None (slurm/testing/slurm-up.sh installs Slurm via apt)."""
    if os.geteuid() != 0:
        return "needs root (slurmd, munged, useradd)"
    have = shutil.which("slurmctld") and shutil.which("slurmd") and Path("/usr/include/slurm/spank.h").exists()
    if not have and not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get"
    return None


def gpu_present() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pytest_collection_modifyitems(items):
    # whatever runs on the real Slurm carries the marker, so -m "not slurm" deselects all of it
    for item in items:
        if "slurm" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.slurm)


def pytest_runtest_setup(item):
    if item.get_closest_marker("slurm") and (why := slurm_missing()):
        unavailable(why)
    if item.get_closest_marker("gpu") and not gpu_present():
        pytest.skip("no NVIDIA GPU here")


# --- a Python any user can run ----------------------------------------------------------------------

@dataclass
class PortablePython:
    """An interpreter plus this run's packages and qsched, in a world-readable directory outside the
    clone: the tests' other users (nobody, Slurm jobs' users) cannot reach a clone under a 0700 home,
    nor a pyenv interpreter under /root."""
    root: Path
    exe: str                                    # any user can exec it
    env: dict = field(default_factory=dict)     # to pass to those users' processes


def _readable(mode: int) -> bool:
    return bool(mode & stat.S_IROTH) and (not mode & stat.S_IXUSR or bool(mode & stat.S_IXOTH))


def _place(src: str, dst: str) -> None:
    """Hard-link a world-usable file (instant, no space: same inode, same mode); copy anything else
    (another file system, or a file others cannot read) and open up the copy."""
    st = os.stat(src)
    if _readable(st.st_mode):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)
    os.chmod(dst, st.st_mode | 0o044 | (0o011 if st.st_mode & stat.S_IXUSR else 0))


def _mirror(src: Path, dst: Path, skip=lambda rel: False) -> None:
    """dst mirrors src with 0755 directories; symlinks are followed (their targets may be unreachable)."""
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        rel = os.path.relpath(dirpath, src)
        dirnames[:] = [d for d in dirnames if not skip(os.path.normpath(os.path.join(rel, d)))]
        out = os.path.join(dst, rel)
        os.makedirs(out, exist_ok=True)
        os.chmod(out, 0o755)
        for f in filenames:
            if skip(os.path.normpath(os.path.join(rel, f))):
                continue
            s = os.path.join(dirpath, f)
            if os.path.exists(s):          # skip dangling links
                _place(s, os.path.join(out, f))


def _searchable(path: Path) -> bool:
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _base_dir() -> str:
    """A directory every user can reach, preferably on the venv's file system (hard links, not copies:
    /tmp is often a tmpfs in CI while the clone is on disk)."""
    dev = os.stat(sysconfig.get_paths()["purelib"]).st_dev
    found = [d for d in ("/tmp", "/var/tmp") if os.path.isdir(d) and _searchable(Path(d))]
    if not found:
        raise RuntimeError("neither /tmp nor /var/tmp is searchable by other users")
    return next((d for d in found if os.stat(d).st_dev == dev), found[0])


def make_portable_python(base_dir: str | None = None) -> PortablePython:
    """A private copy of the base interpreter's prefix (binary, libpython, stdlib) whose site-packages
    holds this venv's packages and the qsched being tested. Hard links where it can: ~2 s, no disk."""
    root = Path(tempfile.mkdtemp(prefix="qsched-python-", dir=base_dir or _base_dir()))
    root.chmod(0o755)
    if not _searchable(root):
        raise RuntimeError(f"{root} is not reachable by other users: cannot place a shared Python there")
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base_exe = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    base_prefix = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_paths(vars={"installed_base": sys.base_prefix, "base": sys.base_prefix})["stdlib"])
    libdir = Path(sysconfig.get_config_var("LIBDIR") or base_prefix / "lib")
    (root / "bin").mkdir(mode=0o755)
    (root / "lib").mkdir(mode=0o755)
    _place(str(base_exe), str(root / "bin" / ver))
    shared = sysconfig.get_config_var("INSTSONAME") if sysconfig.get_config_var("Py_ENABLE_SHARED") else None
    if shared and (libdir / shared).exists():
        # the binary finds libpython through an absolute RUNPATH into base_prefix: point it here instead
        _place(str(libdir / shared), str(root / "lib" / shared))
    # the interpreter finds its prefix from its own location (landmark lib/pythonX.Y/os.py)
    _mirror(stdlib, root / "lib" / ver, skip=lambda rel: rel.split(os.sep)[0] in ("site-packages", "dist-packages",
                                                                                     "test", "idlelib"))
    site = root / "lib" / ver / "site-packages"
    import qsched
    pkg = Path(qsched.__file__).resolve().parent
    seen = set()
    for sp in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]):
        if sp in seen or not Path(sp).is_dir():
            continue
        seen.add(sp)
        # an editable install's hook points into the clone; the package is placed below instead
        _mirror(Path(sp), site, skip=lambda rel: rel.startswith("__editable__") or rel == "qsched"
                or rel.endswith(".egg-link"))
    _mirror(pkg, site / "qsched", skip=lambda rel: rel.endswith("__pycache__"))
    wrapper = root / "bin" / "python"
    lib = f"LD_LIBRARY_PATH={root / 'lib'}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}} " if shared else ""
    wrapper.write_text(f"#!/bin/sh\n{lib}exec {root / 'bin' / ver} \"$@\"\n")
    wrapper.chmod(0o755)
    return PortablePython(root, str(wrapper), {"PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"})


@pytest.fixture(scope="session")
def portable_python():
    """See PortablePython; removed at the end of the session."""
    py = make_portable_python()
    yield py
    shutil.rmtree(py.root, ignore_errors=True)


# --- the built wheel, installed into fresh venvs outside the checkout -------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def qsched_wheel(tmp_path_factory) -> Path:
    """`pip wheel --no-deps` of a clean copy of the checkout (its tracked files: no stale build/ dir)."""
    src = tmp_path_factory.mktemp("wheel-src")
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True,
                               timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        files = []
    if files and files != [""]:
        for rel in filter(None, files):
            if (REPO / rel).is_file():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, src / rel)
    else:                                  # not a git checkout: everything but the build outputs
        shutil.copytree(REPO, src, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".venv", "build", "*.egg-info", "__pycache__", ".git"))
    out = tmp_path_factory.mktemp("wheel")
    try:
        import setuptools
        isolation = [] if int(setuptools.__version__.split(".")[0]) >= 68 else ["--use-pep517"]
    except ImportError:
        isolation = ["--use-pep517"]
    argv = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)]
    if not isolation:
        argv.insert(5, "--no-build-isolation")          # the venv's setuptools: no download
    subprocess.run(argv, check=True, capture_output=True, timeout=600)
    (whl,) = out.glob("qsched-*.whl")
    return whl


@dataclass
class WheelVenv:
    root: Path
    env: dict                 # for its commands, as any user (the interpreter's libpython)

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def run(self, *argv, user: str | None = None, check=True, timeout=300, env=None, **kw):
        e = {**os.environ, **self.env, **(env or {})}
        for k in ("VIRTUAL_ENV", "PYTHONPATH", "QSCHED_URL", "QSCHED_SESSION", "QSCHED_CONFIG"):
            if k not in (env or {}):
                e.pop(k, None)
        if user:
            argv = ("runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in e.items()
                                                          if k in ("PATH", "HOME") or k in self.env
                                                          or k in (env or {})], *argv)
        cp = subprocess.run(list(argv), capture_output=True, text=True, env=e, timeout=timeout, **kw)
        if check and cp.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, argv))} -> {cp.returncode}\n{cp.stdout}\n{cp.stderr}")
        return cp


@pytest.fixture(scope="session")
def wheel_venv(qsched_wheel, portable_python):
    """make(extras) -> a fresh venv in a world-readable directory outside the checkout with
    `pip install 'qsched-*.whl[extras]'` (deps from the pip cache, the index otherwise), made with the
    portable Python's interpreter so that other users (Slurm jobs) can run it too. One per extras."""
    made: dict[str, WheelVenv] = {}
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    env = {"PYTHONNOUSERSITE": "1"}
    if (portable_python.root / "lib").is_dir():
        env["LD_LIBRARY_PATH"] = str(portable_python.root / "lib")      # libpython, for a shared build

    def make(extras: str) -> WheelVenv:
        if extras not in made:
            root = Path(tempfile.mkdtemp(prefix=f"qsched-venv-{extras or 'base'}-", dir=_base_dir()))
            root.chmod(0o755)
            v = WheelVenv(root, {**env, "PATH": f"{root / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
            v.run(str(portable_python.root / "bin" / ver), "-m", "venv", str(root), cwd="/")
            target = f"{qsched_wheel}[{extras}]" if extras else str(qsched_wheel)
            v.run(v.bin("python"), "-m", "pip", "install", "-q", target, cwd="/", timeout=900)
            made[extras] = v
        return made[extras]
    yield make
    for v in made.values():
        shutil.rmtree(v.root, ignore_errors=True)


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

    def stop_all(self, sig=signal.SIGTERM, timeout=30) -> None:
        """stop(), then make sure no child survives: the embedded Redis and workers are in its group."""
        self.stop(sig, timeout)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


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
            import qsched
            devs = qsched.Client(d.url, retry_s=0).devices()     # a daemon that died must show at once
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


@pytest.fixture(scope="session")
def daemon_starter():
    """start_daemon itself, for a module that wants a daemon of its own (test modules cannot import
    conftest under --import-mode=importlib); the caller stops what it starts."""
    return start_daemon


@pytest.fixture(scope="session")
def env_unavailable():
    """unavailable() (skip, or fail under CI=true), for test modules."""
    return unavailable


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
        d.stop_all(signal.SIGKILL, 5)
