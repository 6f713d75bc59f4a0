"""Issue 24 on real Slurm: a hybrid job requeued mid-run with `scontrol requeue` replays its prefix
from its record (0 device executions for it: the second run's session ran only the rest) and ends
with final parameters bit-identical to an uninterrupted run of the same script."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from qsched import keys

sys.path.insert(0, str(Path(__file__).parent))      # the e2e module's job helpers (tests are no package)
from test_slurm_e2e import _script, _wait  # noqa: E402

pytestmark = pytest.mark.slurm

# a seeded-free but deterministic loop (statevector estimates, fixed start): its trajectory is a
# function of the results it gets; the first run (SLURM_RESTART_COUNT 0) stops at iteration PAUSE
LOOP = r'''
import os, sys, time, pathlib
import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector
from qiskit.quantum_info import SparsePauliOp
import qsched

iters, pause, flag = int(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3])
p = ParameterVector("t", 8)
qc = QuantumCircuit(4)
for i in range(4):
    qc.ry(p[i], i)
for i in range(3):
    qc.cx(i, i + 1)
for i in range(4):
    qc.ry(p[4 + i], i)
obs = SparsePauliOp.from_list([("ZZII", 1.0), ("IZZI", 1.0), ("IIZZ", 1.0), ("XIII", 0.5)])
theta = np.full(8, 0.1)
with qsched.Client() as c:
    s = c.session()
    for i in range(iters):
        if i == pause and os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
            flag.write_text(str(i))
            time.sleep(300)                     # requeued here
        shifts = np.stack([theta + 0.05 * np.eye(8)[k] for k in range(8)])
        r = s.run("estimate", qc, shifts, observables=[obs], timeout=60)
        theta = theta - 0.2 * (r.evs[:, 0] - r.evs[:, 0].mean())
    print("final", theta.tobytes().hex(), s.id, flush=True)
'''
ITERS, PAUSE = 6, 3


def _records(daemon, jid) -> list[dict]:
    """The job's sessions' ledger records, oldest first."""
    out = []
    for _, f in daemon.redis().xrange(keys.ACCOUNTING):
        rec = json.loads(f[b"e"])
        if str(rec.get("job_id")) == str(jid):
            out.append(rec)
    return out


def test_a_requeued_job_replays_its_prefix_and_ends_bit_identical(slurm, slurm_daemon, users, user_python):
    alice = users["qsalice"]
    loop = _script(alice, user_python, "replay-loop.py", LOOP)
    flag = alice.home / "replay-paused"
    flag.unlink(missing_ok=True)
    whole_out, out = alice.home / "replay-whole.out", alice.home / "replay.out"
    for f in (whole_out, out):
        f.unlink(missing_ok=True)
    whole = slurm.sbatch("--gres=qpu:1", "-o", str(whole_out), str(loop), str(ITERS), "-1", str(flag),
                         user=alice.name, cwd=alice.home)
    jid = slurm.sbatch("--gres=qpu:1", "--requeue", "--open-mode=append", "-o", str(out), str(loop), str(ITERS),
                       str(PAUSE), str(flag), user=alice.name, cwd=alice.home)
    try:
        _wait(flag.exists, 120, "the first run to reach its pause")
        slurm.run("scontrol", "requeue", str(jid))
        info = slurm.wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=240)
        assert info["JobState"] == "COMPLETED", out.read_text()
        assert slurm.wait_state(whole, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)["JobState"] == "COMPLETED"
        recs = _wait(lambda: len(_records(slurm_daemon, jid)) >= 2 and _records(slurm_daemon, jid), 30,
                     "both runs' ledger records")
    finally:
        slurm.run("scancel", str(jid), check=False)
    first, second = recs[0], recs[-1]
    print(f"job {jid}: first run {first['tasks']} tasks {first['device_seconds']:.4f} device-s; requeued run "
          f"{second['replayed']} replayed, {second['tasks']} run, {second['device_seconds']:.4f} device-s")
    assert first["tasks"] == PAUSE, first
    assert second["replayed"] == PAUSE and second["tasks"] == ITERS - PAUSE, second   # the prefix: no device
    final = re.findall(r"final (\w+)", out.read_text())
    assert final and final[-1] == re.findall(r"final (\w+)", whole_out.read_text())[-1], (out.read_text(),
                                                                                           whole_out.read_text())
