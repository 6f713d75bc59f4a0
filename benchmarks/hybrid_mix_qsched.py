"""The qsched strategies' infrastructure: a private qsched (`qsched up`) with one device, fair share.

`qsched` runs the study's policy: fair share, class `interactive` a tier above `batch` (strict priority
at each pick), accounts chem and phys weighted 2:1 (the user running the study may charge both).
`qsched-flat` is the same without the tiers (every class in tier 0: plain fair share with the default
class weights), the baseline the mixed scenario's makespan cost is measured against.
`qsched-nopreempt` is `qsched` with `policy.preempt: false` (tiers, no recall of an inbox batch), where
this qsched has preemption.

The device's busy intervals come from the worker's own records: the batch completion events it writes
to the daemon's Redis stream (started/finished/exec_s per batch, with the session), read after the run.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import yaml

import hybrid_mix_device as hd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ACCOUNT_WEIGHTS = {"chem": 2.0, "phys": 1.0}
TIERS = {"interactive": {"tier": 1}, "batch": {"tier": 0}}


def preemption_available() -> bool:
    """Whether this qsched has preemption at batch boundaries (policy.preempt, on by default)."""
    try:
        from qsched.config import POLICY_KEYS
    except ImportError:
        return False
    return "preempt" in POLICY_KEYS


def one_batch_per_call() -> dict:
    """The device as the other strategies run it: one batch per device call. emulated-qpu merges up to 8
    sessions' batches into one call by default (cross-session batching, benchmarks/cross_session.py):
    a merged call pays setup once, so the device would do less work than the bound counts, and up to 9
    batches would wait per device instead of one, undoing the late binding that tiers and shares rely on."""
    import dataclasses

    from qsched.models import DeviceSpec

    return {"merge_batches": 1} if "merge_batches" in {f.name for f in dataclasses.fields(DeviceSpec)} else {}


def policy(variant: str) -> dict:
    pol: dict = {"name": "fair-share", "weights": {"accounts": dict(ACCOUNT_WEIGHTS)}}
    if variant in ("qsched", "qsched-nopreempt"):
        pol["classes"] = {k: dict(v) for k, v in TIERS.items()}
        if variant == "qsched-nopreempt":
            if not preemption_available():
                raise RuntimeError("qsched-nopreempt: this qsched has no policy.preempt (no preemption to turn off)")
            pol["preempt"] = False
    elif variant != "qsched-flat":
        raise ValueError(variant)
    return pol


def write_config(workdir: Path, p, variant: str = "qsched", run: int = 0) -> tuple[Path, Path, str]:
    workdir = workdir / f"{variant}-{run}"
    state = workdir / "qsched-state"
    state.mkdir(parents=True, exist_ok=True)
    pool = "emulated" if p.device == "emulated-qpu" else p.device
    cfg = {
        "state_dir": str(state),
        "daemon": {"tcp": f"127.0.0.1:{_free_port()}", "drain_timeout_s": 5},
        "devices": [{"name": "qpu0", "type": p.device, "pool": pool, "max_qubits": p.qubits,
                     "options": hd.device_options(p.device, setup_s=p.setup_s, rep_s=p.rep_s),
                     **one_batch_per_call()}],
        "policy": policy(variant),
        "users": {getpass.getuser(): list(ACCOUNT_WEIGHTS)},    # the accounts the study's jobs charge
    }
    path = workdir / "qsched.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, state, pool


def qsched_command() -> list[str]:
    exe = Path(sys.executable).with_name("qsched")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("qsched")
    return [found] if found else [sys.executable, "-m", "qsched.cli"]


def start(infra, p, variant: str = "qsched", run: int = 0):
    """Start `qsched up` under infra (stopped with it, or by infra.stop_proc); return (url the jobs use,
    pool, state dir, the process)."""
    import urllib.request

    cfg, state, pool = write_config(infra.workdir, p, variant, run)
    env = dict(os.environ, QSCHED_STATE_DIR=str(state))
    env.pop("QSCHED_URL", None)
    env.pop("QSCHED_SESSION", None)
    proc = infra._popen([*qsched_command(), "up", "--config", str(cfg)], f"{variant}-{run}", env=env)
    tcp = yaml.safe_load(cfg.read_text())["daemon"]["tcp"]
    health = f"http://{tcp}/v1/health"

    def up():
        if proc.poll() is not None:
            log = (infra.workdir / f"{variant}-{run}.log").read_text()[-3000:]
            raise RuntimeError(f"qsched up exited with {proc.returncode}:\n{log}")
        with urllib.request.urlopen(health, timeout=2) as r:
            h = json.loads(r.read())
        if h.get("status") != "ok":
            return False
        import qsched          # devices over the unix socket: over TCP they need a credential
        return _devices_ready({"devices": qsched.Client(f"unix://{state / 'qsched.sock'}", retry_s=0).devices()})

    infra.log(f"starting qsched: {' '.join(qsched_command())} up --config {cfg}")
    t = time.time()
    from hybrid_mix import _wait_for

    _wait_for(up, 90, "qsched up")
    infra.log(f"qsched up in {time.time() - t:.1f} s")
    return f"unix://{state / 'qsched.sock'}", pool, state, proc


def _devices_ready(d) -> bool:
    """Every device's worker is up (when the answer says; the jobs' warm-up task waits anyway)."""
    devs = d.get("devices")
    if not isinstance(devs, list) or not devs:
        return False
    return all(x.get("up", True) for x in devs if isinstance(x, dict))


def device_records(state_dir: Path, sessions: dict[str, int], since: float) -> list[tuple[float, float, int, int]]:
    """(start, end, job, -2) per batch the worker ran for our sessions since `since`, from its events."""
    from redis import Redis

    try:  # where the daemon's embedded Redis listens
        from qsched.daemon.redis_server import EmbeddedRedis
        sock = EmbeddedRedis(state_dir).socket
    except ImportError:
        sock = state_dir / "redis" / "redis.sock"
    r = Redis(unix_socket_path=str(sock))
    try:
        from qsched import keys
        stream = keys.EVENTS
    except ImportError:
        stream = "qsched:events"
    out = []
    for _id, fields in r.xrange(stream, min=f"{int(since * 1000)}-0"):
        e = json.loads(fields[b"e"])
        sid = e.get("session")
        if sid not in sessions or not e.get("bindings"):
            continue
        end = float(e["finished"])
        out.append((end - float(e["exec_s"]), end, sessions[sid], -2))
    r.close()
    return out
