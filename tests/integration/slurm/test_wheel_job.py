"""A non-root user submits with `qsched submit` from the light client install (`qsched[client]`, the built
wheel in a fresh venv outside the checkout), and the job's Python is that venv: the Qiskit SDK runs on the
job's session, and `qsched session list` inside the job sees it over the unix socket and over TCP, where
MUNGE (the cluster's munged) names the job's user; another user's listing is refused with exit 1."""
from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

JOB = r'''#!/bin/bash
set -u
V={venv}
export PYTHONNOUSERSITE=1 {ld}
$V/bin/python - <<'PYEOF'
from qiskit import QuantumCircuit
from qsched.qiskit import SamplerV2
qc = QuantumCircuit(1)
qc.x(0)
qc.measure_all()
print("counts", SamplerV2().run([qc], shots=16).result()[0].data.meas.get_counts(), flush=True)
PYEOF
echo "unix: $($V/bin/qsched session list -o id,job_id,user -P -n)"
echo "tcp: $(QSCHED_URL=http://{tcp} $V/bin/qsched session list -o id,job_id,user -P -n)"
QSCHED_URL=http://{tcp} $V/bin/qsched session list -u root >/dev/null 2>"$HOME/other.err"
echo "other rc=$? $(cat "$HOME/other.err")"
'''


def test_a_non_root_job_from_the_client_wheel_venv(slurm, slurm_daemon, users, wheel_venv):
    v = wheel_venv("client")
    alice = users["qsalice"]
    ld = f"LD_LIBRARY_PATH={v.env['LD_LIBRARY_PATH']}" if "LD_LIBRARY_PATH" in v.env else ""
    script = alice.home / "wheel-job.sh"
    script.write_text(JOB.format(venv=v.root, ld=ld, tcp=slurm_daemon.tcp))
    script.chmod(0o755)
    out = alice.home / "wheel-job.out"
    env = {"SLURM_CONF": slurm.env["SLURM_CONF"], "HOME": str(alice.home)}
    cp = v.run(v.bin("qsched"), "submit", "--qpu", "aer", "--wait", "-o", str(out), str(script), user=alice.name,
               env=env, cwd=alice.home, check=False, timeout=180)
    text = out.read_text() if out.exists() else ""
    assert cp.returncode == 0, f"{cp.stdout}\n{cp.stderr}\n{text}"
    job_id = cp.stdout.strip().splitlines()[0]
    assert job_id.isdigit(), cp.stdout
    assert "counts {'1': 16}" in text, text
    unix = re.search(r"^unix: (\S+)\|(\d+)\|(\S+)$", text, re.M)
    tcp = re.search(r"^tcp: (\S+)\|(\d+)\|(\S+)$", text, re.M)
    assert unix and tcp, text
    assert unix.groups() == tcp.groups() and unix.group(2) == job_id and unix.group(3) == alice.name, text
    assert "other rc=1 qsched: user: root's sessions and records are shown only to root and admins" in text, text
