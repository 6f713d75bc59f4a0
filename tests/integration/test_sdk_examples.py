"""Every example runs as a job would run it (a subprocess finding the daemon from QSCHED_URL), on
tiny settings so the suite stays short; the default settings are exercised by hand (docs/user-guide.md)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CASES = {
    "vqe.py": (["--qubits", "3", "--reps", "1", "--maxiter", "5"], False, "VQE 3 qubits"),
    "qiskit_torch_layer.py": (["--epochs", "2", "--samples", "16"], True, "epoch 2"),
    "qcnn_torch.py": (["--epochs", "1", "--train", "16", "--test", "6", "--batch", "8"], True, "epoch 1"),
    "similarity_learning.py": (["--epochs", "2", "--pairs", "8"], True, "epoch 2"),
    "hypernetwork_vqa.py": (["--runs", "3", "--steps", "3", "--concurrency", "3"], False, "success probability"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs(qsched_daemon, name):
    args, needs_torch, expect = CASES[name]
    if needs_torch:
        pytest.importorskip("torch")
    env = {k: v for k, v in os.environ.items() if k not in ("QSCHED_SESSION", "QSCHED_POOL")}
    env["QSCHED_URL"] = qsched_daemon.url
    p = subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert expect in p.stdout


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_has_sbatch_script(name):
    script = EXAMPLES / name.replace(".py", ".sbatch")
    text = script.read_text()
    assert os.access(script, os.X_OK) and text.startswith("#!/bin/bash")
    assert "#SBATCH --qpu=" in text and f"examples/{name}" in text
