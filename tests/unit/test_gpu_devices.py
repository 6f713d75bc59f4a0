"""GPU simulator paths (qiskit-aer-gpu, lightning.gpu) give the CPU's results. Skipped cleanly where
there is no NVIDIA GPU or no GPU build installed (CI has neither)."""
from __future__ import annotations

import numpy as np
import pytest
from qiskit.circuit.library import efficient_su2

from qsched.devices import TaskPayload, load_device
from qsched.models import DeviceLimits, DeviceSpec


def _aer_gpu() -> bool:
    try:
        from qiskit_aer import AerSimulator
        return "GPU" in AerSimulator().available_devices()
    except Exception:
        return False


def _lightning_gpu() -> bool:
    try:
        import pennylane as qml
        qml.device("lightning.gpu", wires=2)
        return True
    except Exception:
        return False


pytestmark = pytest.mark.gpu          # tests/conftest.py skips it where no NVIDIA GPU answers
OBS = [[["ZZIIII", 1.0], ["IIIXXI", 0.5]]]


def _run(typ, options, kind, method=None):
    qc = efficient_su2(6, reps=2)
    params = np.random.default_rng(0).uniform(-1, 1, (4, qc.num_parameters))
    d = load_device(DeviceSpec(name=typ, type=typ, pool=typ, limits=DeviceLimits(max_qubits=6), options=options))
    out = d.run([TaskPayload("t", kind, "h", qc, params, None, OBS, method)])[0]
    assert not isinstance(out, Exception), out
    return out


@pytest.mark.skipif(not _aer_gpu(), reason="qiskit-aer-gpu not installed")
def test_aer_gpu_matches_cpu():
    gpu, cpu = _run("aer", {"device": "GPU"}, "gradient"), _run("aer", {}, "gradient")
    np.testing.assert_allclose(gpu["evs"], cpu["evs"], atol=1e-9)
    np.testing.assert_allclose(gpu["jacobian"], cpu["jacobian"], atol=1e-9)


@pytest.mark.skipif(not _lightning_gpu(), reason="pennylane-lightning-gpu not installed")
def test_lightning_gpu_adjoint_matches_cpu():
    gpu, cpu = _run("lightning", {"name": "lightning.gpu"}, "gradient"), _run("lightning", {}, "gradient")
    np.testing.assert_allclose(gpu["evs"], cpu["evs"], atol=1e-9)
    np.testing.assert_allclose(gpu["jacobian"], cpu["jacobian"], atol=1e-9)
