"""systemd/qsched.service and systemd/qsched-worker@.service: parsed as systemd reads them, with the
settings the daemon's lifecycle needs, and every qsched command line in them a real CLI command
(`python -m qsched <command> --help` answers, and click accepts the exact arguments). The worker runs
as the unprivileged user of systemd/qsched.sysusers, without devices unless the GPU drop-in
(systemd/qsched-worker-gpu.conf) adds /dev/nvidia*; systemd-analyze verify and security check them."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
UNITS = {"daemon": REPO / "systemd" / "qsched.service", "worker": REPO / "systemd" / "qsched-worker@.service"}
GPU_DROPIN = REPO / "systemd" / "qsched-worker-gpu.conf"
SYSUSERS = REPO / "systemd" / "qsched.sysusers"
INSTANCE = "null0"                      # a device of configs/qsched.yaml, standing in for %i
ETC_CONFIG = "/etc/qsched/qsched.yaml"  # the units' config path; checked against the shipped one


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: [Section], Key=Value, repeated keys accumulate (an empty value resets the
    list), '#'/';' comments, a trailing backslash continues the line."""
    sections: dict[str, dict[str, list[str]]] = {}
    cur = None
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        if not line or line[0] in "#;":
            continue
        m = re.fullmatch(r"\[([^\]]+)\]", line)
        if m:
            cur = sections.setdefault(m.group(1), {})
            continue
        assert cur is not None, f"{path}: {line!r} before any [Section]"
        assert "=" in line, f"{path}: not Key=Value: {line!r}"
        key, value = (x.strip() for x in line.split("=", 1))
        if value == "":
            cur[key] = []
        else:
            cur.setdefault(key, []).append(value)
    return sections


def one(unit, section, key) -> str:
    vals = unit[section].get(key)
    assert vals, f"[{section}] {key}= missing"
    return vals[-1]


def seconds(span: str) -> float:
    """A systemd time span: "90", "90s", "1min 30s", "2m"."""
    units = {"": 1, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "minute": 60,
             "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600, "ms": 1e-3, "msec": 1e-3}
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span):
        total += float(num) * units[unit]
    return total


def expand(arg: str, instance: str) -> str:
    return arg.replace("%i", instance).replace("%I", instance).replace("%%", "%")


def exec_argv(line: str, instance: str = INSTANCE) -> list[str]:
    line = line.lstrip("-@:+!")            # systemd's command prefixes
    return [expand(a, instance) for a in shlex.split(line)]


def qsched_commands() -> list[tuple[str, str, list[str]]]:
    """(unit, key, argv after the qsched binary) for every Exec* line that runs qsched."""
    out = []
    for name, path in UNITS.items():
        unit = parse_unit(path)
        for key, vals in unit["Service"].items():
            if key.startswith("Exec"):
                for v in vals:
                    argv = exec_argv(v)
                    if Path(argv[0]).name == "qsched":
                        out.append((name, key, argv[1:]))
    return out


def resolve(args: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """Walk the click groups: (command path, the command, its own arguments)."""
    from qsched.cli import cli
    cmd, path, rest = cli, [], list(args)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(click.Context(cmd), rest[0])
        assert sub is not None, f"`qsched {' '.join(path + rest[:1])}` is not a qsched command"
        cmd, path, rest = sub, path + [rest[0]], rest[1:]
    assert not isinstance(cmd, click.Group), f"`qsched {' '.join(path)}` is a group, not a command"
    return path, cmd, rest


# ------------------------------------------------------------------------------------------ the tests
@pytest.fixture(scope="module")
def units():
    return {name: parse_unit(p) for name, p in UNITS.items()}


def test_sections_and_install(units):
    for name, u in units.items():
        assert {"Unit", "Service", "Install"} <= set(u), name
        assert one(u, "Unit", "Description")
        assert one(u, "Install", "WantedBy") == "multi-user.target"


def test_daemon_unit_lifecycle(units):
    u = units["daemon"]
    drain = yaml.safe_load((REPO / "configs" / "qsched.yaml").read_text())["daemon"]["drain_timeout_s"]
    assert one(u, "Service", "Restart") == "on-failure"
    assert one(u, "Service", "KillSignal") == "SIGTERM"
    assert seconds(one(u, "Service", "TimeoutStopSec")) > drain
    # SIGTERM to the daemon alone: its embedded redis-server must outlive the drain
    assert one(u, "Service", "KillMode") == "mixed"
    reload = [exec_argv(v) for v in u["Service"]["ExecReload"]]
    assert reload[-1] == ["/bin/kill", "-HUP", "$MAINPID"]
    start = exec_argv(one(u, "Service", "ExecStart"))
    assert start[1:3] == ["daemon", "run"]
    assert "QSCHED_STATE_DIR=/var/lib/qsched" in u["Service"]["Environment"]
    assert one(u, "Service", "StateDirectory") == "qsched"


def test_worker_unit_is_a_per_device_template(units):
    u = units["worker"]
    assert "@" in UNITS["worker"].name
    raw = shlex.split(one(u, "Service", "ExecStart"))
    assert raw[1:4] == ["worker", "--device", "%i"]
    assert one(u, "Service", "Restart") == "on-failure"
    assert one(u, "Service", "KillSignal") == "SIGTERM"
    drain = yaml.safe_load((REPO / "configs" / "qsched.yaml").read_text())["daemon"]["drain_timeout_s"]
    assert seconds(one(u, "Service", "TimeoutStopSec")) > drain
    assert "qsched.service" in one(u, "Unit", "PartOf")
    assert "qsched.service" in one(u, "Unit", "After")
    # both find the embedded Redis in the same state directory
    assert u["Service"]["Environment"][0] == units["daemon"]["Service"]["Environment"][0]
    assert u["Service"].get("CapabilityBoundingSet") == []       # present and empty: no capabilities


@pytest.mark.parametrize("name", list(UNITS))
def test_hardening(units, name):
    s = units[name]["Service"]
    want = {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
            "ProtectHome": "read-only" if name == "daemon" else "yes", "PrivateTmp": "yes",
            "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
            "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
            "RestrictNamespaces": "yes", "SystemCallArchitectures": "native"}
    for k, v in want.items():
        assert s.get(k, [None])[-1] == v, f"{name}: {k}={s.get(k)} (want {v})"
    assert "AF_UNIX" in s["RestrictAddressFamilies"][-1]


def test_config_says_how_to_run_workers_under_systemd():
    """The daemon unit's comments tell the admin to turn the daemon's own workers off."""
    text = UNITS["daemon"].read_text()
    assert "start_workers: false" in text


COMMANDS = qsched_commands()


def test_every_qsched_command_line_was_found():
    keys = {(u, k) for u, k, _ in COMMANDS}
    assert ("daemon", "ExecStart") in keys and ("worker", "ExecStart") in keys


@pytest.mark.parametrize("unit,key,args", COMMANDS, ids=[f"{u}-{k}-{'_'.join(a[:2])}" for u, k, a in COMMANDS])
def test_exec_lines_are_real_qsched_commands(unit, key, args):
    path, cmd, rest = resolve(args)
    # the command exists for the installed CLI entry point, as systemd will run it
    cp = subprocess.run([sys.executable, "-m", "qsched", *path, "--help"], capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0, f"qsched {' '.join(path)} --help: {cp.returncode}\n{cp.stderr}"
    assert f"Usage: qsched {' '.join(path)}" in cp.stdout
    for opt in (a.split("=", 1)[0] for a in rest if a.startswith("--")):
        assert opt in cp.stdout, f"qsched {' '.join(path)} has no option {opt}"
    # click accepts these exact arguments (the shipped config stands in for /etc/qsched/qsched.yaml)
    args_here = [str(REPO / "configs" / "qsched.yaml") if a == ETC_CONFIG else a for a in rest]
    ctx = cmd.make_context(f"qsched {' '.join(path)}", args_here)
    if "device" in ctx.params:
        from qsched.config import load_config
        names = [d.name for d in load_config(REPO / "configs" / "qsched.yaml").devices]
        assert ctx.params["device"] in names


def test_units_use_the_same_config_and_binary():
    lines = [a for _, _, a in COMMANDS]
    assert all(ETC_CONFIG in a for a in lines), lines
    bins = {exec_argv(v)[0] for p in UNITS.values() for k, vals in parse_unit(p)["Service"].items()
            if k.startswith("Exec") for v in vals if "qsched" in exec_argv(v)[0]}
    assert bins == {"/opt/qsched/bin/qsched"}


def test_worker_runs_unprivileged_without_devices_unless_the_gpu_dropin_adds_nvidia(units):
    s = units["worker"]["Service"]
    user, group = one(units["worker"], "Service", "User"), one(units["worker"], "Service", "Group")
    assert user not in ("root", "0") and group not in ("root", "0")
    # the user the unit names is the one the sysusers file creates (with its group of the same name)
    declared = [line.split() for line in SYSUSERS.read_text().splitlines() if line.strip() and line[0] != "#"]
    assert ["u", user] == declared[0][:2] and group == user
    # and the group the config must name so that the worker reaches the embedded Redis's socket
    assert f"socket_group: {group}" in UNITS["worker"].read_text()
    assert s["PrivateDevices"][-1] == "yes" and s["UMask"][-1] == "0077"
    gpu = parse_unit(GPU_DROPIN)["Service"]
    assert gpu["PrivateDevices"][-1] == "no" and gpu["DevicePolicy"][-1] == "closed"
    assert gpu["DeviceAllow"] == ["char-nvidia* rw"]


@pytest.fixture(scope="module")
def systemd_analyze(env_unavailable) -> str:
    """systemd-analyze works on unit files offline (no running systemd needed); installed when missing."""
    exe = shutil.which("systemd-analyze")
    if not exe and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["flock", "/tmp/qsched-slurm.lock", "apt-get", "update", "-qq"], capture_output=True, env=env,
                       timeout=600)
        subprocess.run(["flock", "/tmp/qsched-slurm.lock", "apt-get", "install", "-y", "-qq",
                        "--no-install-recommends", "systemd"], capture_output=True, env=env, timeout=600)
        exe = shutil.which("systemd-analyze")
    if not exe:
        env_unavailable("systemd-analyze is not installed (apt-get install systemd)")
    return exe


@pytest.fixture
def unit_dir(tmp_path, env_unavailable):
    """The units with the binary pointed at this environment's qsched (verify wants it to exist), and
    the GPU drop-in on instance gpu0, as the admin guide installs it."""
    exe = shutil.which("qsched") or str(Path(sys.executable).parent / "qsched")
    if not Path(exe).exists():
        env_unavailable("no qsched executable to point the units at")
    for p in UNITS.values():
        (tmp_path / p.name).write_text(p.read_text().replace("/opt/qsched/bin/qsched", exe))
    (tmp_path / "qsched-worker@gpu0.service.d").mkdir()
    shutil.copy(GPU_DROPIN, tmp_path / "qsched-worker@gpu0.service.d" / "gpu.conf")
    return tmp_path


def _analyze(exe, unit_dir, *args) -> subprocess.CompletedProcess:
    # SYSTEMD_UNIT_PATH: the units and their drop-in directories come from here (trailing ':' keeps the
    # built-in search path for the targets they name)
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=unit_dir, timeout=120,
                          env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"})


def test_systemd_analyze_verify(systemd_analyze, unit_dir):
    """systemd's own parser: no unknown keys or sections, no bad values, the drop-in included."""
    cp = _analyze(systemd_analyze, unit_dir, "verify", "qsched.service", f"qsched-worker@{INSTANCE}.service",
                  "qsched-worker@gpu0.service")
    out = cp.stdout + cp.stderr
    problems = [line for line in out.splitlines() if str(unit_dir) in line or "qsched" in line]
    assert cp.returncode == 0 and not problems, out


# systemd-analyze security's exposure (0 best, 10 worst) measured with these units: daemon 4.1 (root,
# by design: SO_PEERCRED admin socket, scontrol), CPU worker 1.6, GPU worker 1.8 (it was 2.6 as root)
EXPOSURE_AT_MOST = {"qsched.service": 4.5, f"qsched-worker@{INSTANCE}.service": 2.0, "qsched-worker@gpu0.service": 2.0}


@pytest.mark.parametrize("unit", list(EXPOSURE_AT_MOST))
def test_systemd_analyze_security(systemd_analyze, unit_dir, unit):
    cp = _analyze(systemd_analyze, unit_dir, "security", "--offline=yes", "--no-pager", unit)
    out = cp.stdout + cp.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert m, out
    assert float(m.group(1)) <= EXPOSURE_AT_MOST[unit], out
    if "worker" in unit:
        assert re.search(r"✓ User=/DynamicUser=\s+Service runs under a static non-root user", out), out
        private = re.search(r"([✓✗]) PrivateDevices=", out)
        assert private and private.group(1) == ("✗" if "gpu" in unit else "✓"), out
        if "gpu" in unit:
            assert "char-nvidia*:rw" in out, out
