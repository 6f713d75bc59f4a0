"""The device the exclusive and per-circuit strategies run on, and the circuit every strategy uses.

The hold-time model must match what qsched's `emulated-qpu` worker does, or the study would compare
two different devices: qsched.devices (EmulatedQPUDevice / AerDevice) is used whenever it imports.
HoldModelDevice is a fallback (or HYBRID_MIX_OWN_DEVICE=1) that reproduces the same model: aer with a
small noise model, then hold the device until setup_s + bindings x shots x rep_s has passed.
"""
from __future__ import annotations

import os
import time

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # aer's spin-waiting collapsed 4-6x on this VM


def build_circuit(num_qubits: int = 5, layers: int = 2):
    """Hardware-efficient ansatz on a line (the shape of seeds 000/004): RY/RZ layers + CX chain."""
    from qiskit.circuit import ParameterVector, QuantumCircuit

    theta = ParameterVector("θ", 2 * num_qubits * layers)
    qc = QuantumCircuit(num_qubits, name="hybrid_mix_ansatz")
    k = 0
    for _ in range(layers):
        for q in range(num_qubits):
            qc.ry(theta[k], q)
            qc.rz(theta[k + 1], q)
            k += 2
        for q in range(num_qubits - 1):
            qc.cx(q, q + 1)
    qc.measure_all()
    return qc


def random_bindings(rng: np.random.Generator, bindings: int, num_parameters: int) -> np.ndarray:
    return rng.uniform(-np.pi, np.pi, size=(bindings, num_parameters))


def modelled_hold_s(setup_s: float, rep_s: float, bindings: int, shots: int) -> float:
    return setup_s + bindings * shots * rep_s


class HoldModelDevice:
    """One device instance. `kind` 'emulated-qpu' holds for the modelled time; 'aer' runs as fast as it can."""

    def __init__(self, kind: str = "emulated-qpu", *, setup_s: float = 0.05, rep_s: float = 100e-6,
                 num_qubits: int = 5, noise: bool = True):
        from qiskit import transpile
        from qiskit_aer import AerSimulator

        self.kind, self.setup_s, self.rep_s = kind, setup_s, rep_s
        noise_model = None
        if kind == "emulated-qpu" and noise:
            from qiskit_aer.noise import NoiseModel, ReadoutError, depolarizing_error

            noise_model = NoiseModel()
            noise_model.add_all_qubit_quantum_error(depolarizing_error(1e-3, 1), ["ry", "rz", "sx", "x"])
            noise_model.add_all_qubit_quantum_error(depolarizing_error(1e-2, 2), ["cx"])
            noise_model.add_all_qubit_readout_error(ReadoutError([[0.98, 0.02], [0.03, 0.97]]))
        self.sim = AerSimulator(method="statevector", max_parallel_threads=1, noise_model=noise_model)
        self._transpile = transpile
        self._templates: dict[str, object] = {}
        self.circuit = build_circuit(num_qubits)

    def _template(self, circuit):
        # transpile once per template, bind after (transpiling each bound circuit costs 15 ms each)
        key = circuit.name + str(circuit.num_parameters)
        t = self._templates.get(key)
        if t is None:
            t = self._templates[key] = self._transpile(circuit, self.sim, optimization_level=0)
        return t

    def run(self, params: np.ndarray, shots: int, circuit=None) -> tuple[float, float]:
        """Run len(params) bindings as one batch; return the (start, end) the device was held."""
        start = time.time()
        t = self._template(circuit if circuit is not None else self.circuit)
        bound = [t.assign_parameters(p) for p in np.atleast_2d(params)]
        self.sim.run(bound, shots=shots).result()
        if self.kind == "emulated-qpu":
            until = start + modelled_hold_s(self.setup_s, self.rep_s, len(bound), shots)
            while (left := until - time.time()) > 0:
                time.sleep(left)
        return start, time.time()


class QschedDevice:
    """qsched's own device class (the code path qsched's worker runs), driven directly: one sample task
    of len(params) bindings per call, as qsched's worker would run one unmerged batch."""

    def __init__(self, kind: str, *, setup_s: float, rep_s: float, num_qubits: int, seed: int = 1234):
        from qsched.devices import load_device
        from qsched.models import DeviceLimits, DeviceSpec

        self.kind = kind
        spec = DeviceSpec(name="hybridmix0", type=kind, pool=kind, limits=DeviceLimits(max_qubits=num_qubits),
                          options=device_options(kind, setup_s=setup_s, rep_s=rep_s, seed=seed))
        self.dev = load_device(spec)
        self.circuit = build_circuit(num_qubits)
        self._n = 0

    def run(self, params: np.ndarray, shots: int, circuit=None) -> tuple[float, float]:
        from qsched.devices import TaskPayload

        self._n += 1
        task = TaskPayload(id=f"t{self._n}", kind="sample", template="hybrid_mix_ansatz",
                           circuit=circuit if circuit is not None else self.circuit,
                           params=np.atleast_2d(np.asarray(params, dtype=float)), shots=int(shots))
        start = time.time()
        (res,) = self.dev.run([task])
        end = time.time()
        if isinstance(res, Exception):
            raise res
        return start, end


def device_options(kind: str, *, setup_s: float, rep_s: float, seed: int = 1234) -> dict:
    """The `options` of the device in qsched's YAML config: the same for all three strategies."""
    if kind == "emulated-qpu":
        return {"setup_s": setup_s, "rep_s": rep_s, "seed": seed, "backend": "generic"}
    return {"seed": seed}


def qsched_devices_available() -> bool:
    try:
        from qsched.devices import load_device  # noqa: F401
        from qsched.devices.emulated import EmulatedQPUDevice  # noqa: F401
    except ImportError:
        return False
    return True


def make_device(kind: str, *, setup_s: float, rep_s: float, num_qubits: int):
    if qsched_devices_available() and os.environ.get("HYBRID_MIX_OWN_DEVICE") != "1":
        return QschedDevice(kind, setup_s=setup_s, rep_s=rep_s, num_qubits=num_qubits)
    return HoldModelDevice(kind, setup_s=setup_s, rep_s=rep_s, num_qubits=num_qubits)


# --- per-circuit and fifo-bursts strategies: what each RQ job runs, in the one worker owning the device --

_WORKER_DEVICE = None  # set by hybrid_mix_rqworker.py before it starts working


def rq_execute(job: int, iteration: int, params: list, shots: int) -> dict:
    """One circuit, one RQ job: record start/end here, in the process that owns the device."""
    start, end = _WORKER_DEVICE.run(np.asarray(params, dtype=float), int(shots))
    return {"job": job, "iteration": iteration, "start": start, "end": end}


def rq_execute_burst(job: int, iteration: int, params: list, shots: int) -> dict:
    """fifo-bursts: a whole burst, one RQ job, run as one batch (as a Warden / cloud job-mode job is)."""
    start, end = _WORKER_DEVICE.run(np.asarray(params, dtype=float), int(shots))
    return {"job": job, "iteration": iteration, "start": start, "end": end}
