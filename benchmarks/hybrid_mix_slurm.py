"""The exclusive strategy through real Slurm: each job is an sbatch job holding the whole QPU (the qpu
GRES, turned into the qpu license by qsched's job_submit.lua) for its whole life; jobs pend in Slurm.

Also the job-side entry point: `python hybrid_mix_slurm.py job CTX.json IDX OUT.json`.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


class SlurmError(RuntimeError):
    pass


def _run(args, env=None, timeout=20) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


def qpu_total(env=None) -> int | None:
    """The qpu license count of a Slurm that answers, else None."""
    try:
        if _run(["sinfo", "-h", "-o", "%T"], env, timeout=5).returncode != 0:
            return None
        out = _run(["scontrol", "show", "lic", "qpu", "-o"], env, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"Total=(\d+)", out.stdout)
    return int(m.group(1)) if out.returncode == 0 and m else None


class OwnSlurm:
    """A throwaway single-node Slurm (slurm/testing/slurm-up.sh) with ONE qpu license, so a job that asks
    for the QPU holds all of it, and the SPANK plugin told to run jobs without a qsched session."""

    def __init__(self, workdir: Path, port: int = 6937):
        # not under workdir: munged runs as the munge user and must traverse every parent of DIR/run,
        # and temp dirs (mkdtemp, pytest's tmp_path) are 0700
        self.dir = Path(tempfile.mkdtemp(prefix="hybrid-mix-slurm-"))
        self.dir.chmod(0o755)
        self.port = port
        self.env: dict | None = None

    def __enter__(self):
        env = dict(os.environ, QSCHED_SLURM_LICENSES="qpu:1", QSCHED_SPANK_ARGS="on_down=continue",
                   QSCHED_SLURM_PORT=str(self.port), QSCHED_ADMIN_SOCKET=str(self.dir / "none.sock"))
        r = _run(["bash", str(REPO / "slurm/testing/slurm-up.sh"), str(self.dir)], env, timeout=180)
        if r.returncode != 0:
            self.__exit__(None, None, None)  # whatever it did start
            raise SlurmError(f"slurm-up.sh failed ({r.returncode}): {r.stderr[-2000:]}")
        self.env = dict(os.environ, SLURM_CONF=str(self.dir / "etc/slurm.conf"))
        # slurmctld's first scheduling pass comes ~3 s after start: take it here, not in the first job
        r = _run(["sbatch", "--parsable", "-J", "hybrid-mix-warm", "-o", "/dev/null", "--wrap", "true"], self.env)
        if r.returncode == 0:
            jid = r.stdout.strip().split(";")[0]
            deadline = time.time() + 30
            while time.time() < deadline and _states([jid], self.env).get(jid) not in ("COMPLETED", "FAILED"):
                time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        _run(["bash", str(REPO / "slurm/testing/slurm-down.sh"), str(self.dir), "--purge"], timeout=60)


def run_exclusive(ctx, specs, workdir: Path, env: dict, qpus: int, timeout_s: float):
    """Submit one sbatch job per hybrid job (in index order), wait for all; return (t0, results)."""
    d = workdir / f"slurm-jobs-{int(time.time() * 1000)}"
    d.mkdir(parents=True)
    t0 = time.time() + 0.05
    (d / "ctx.json").write_text(json.dumps({"params": asdict(ctx.params), "t0": t0,
                                            "specs": [asdict(s) for s in specs]}))
    time.sleep(max(0.0, t0 - time.time()))
    ids = []
    for s in specs:
        out = d / f"out-{s.idx}.json"
        cmd = f"exec {sys.executable} {HERE / 'hybrid_mix_slurm.py'} job {d / 'ctx.json'} {s.idx} {out}"
        r = _run(["sbatch", "--parsable", "-J", f"hybrid-mix-{s.idx}", "-o", str(d / f"slurm-{s.idx}.log"),
                  "-c", "1", f"--gres=qpu:{qpus}", "--wrap", cmd], env)
        if r.returncode != 0:
            _cancel(ids, env)
            raise SlurmError(f"sbatch failed: {r.stderr.strip()}")
        ids.append(r.stdout.strip().split(";")[0])
    deadline = time.time() + timeout_s
    try:
        while True:
            states = _states(ids, env)
            bad = {i: st for i, st in states.items() if st in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                                                 "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")}
            if bad:
                i = next(iter(bad))
                idx = ids.index(i)
                log = (d / f"slurm-{idx}.log")
                raise SlurmError(f"Slurm job {i} {bad[i]}: {log.read_text()[-2000:] if log.exists() else ''}")
            if all(st == "COMPLETED" for st in states.values()) and len(states) == len(ids):
                break
            if time.time() > deadline:
                raise SlurmError(f"Slurm jobs not done after {timeout_s:.0f} s: {states}")
            time.sleep(0.3)
    except BaseException:
        _cancel(ids, env)
        raise
    results = []
    for s in specs:
        out = d / f"out-{s.idx}.json"
        if not out.exists():
            raise SlurmError(f"job {s.idx} completed without results ({d / f'slurm-{s.idx}.log'})")
        results.append(json.loads(out.read_text()))
    return t0, results


def _states(ids, env) -> dict:
    r = _run(["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i %T"], env)
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


def _cancel(ids, env):
    if ids:
        _run(["scancel", *ids], env)


def job_main(ctx_path: str, idx: str, out_path: str) -> int:
    started = time.time()  # Slurm started us now: the time pending in Slurm ends here
    sys.path.insert(0, str(HERE))
    import hybrid_mix as hm

    d = json.loads(Path(ctx_path).read_text())
    p = hm.Params(**d["params"])
    spec = hm.JobSpec(**d["specs"][int(idx)])
    ctx = hm.Ctx(strategy="exclusive-slurm", params=p)
    res = hm._job_body(ctx, spec, lambda: d["t0"], started_at=started)
    Path(out_path + ".tmp").write_text(json.dumps(res))
    os.replace(out_path + ".tmp", out_path)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "job":
        sys.exit(job_main(*sys.argv[2:]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
