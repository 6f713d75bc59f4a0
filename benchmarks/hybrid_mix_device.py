"""The device the exclusive and per-circuit strategies run on, and the circuit every strategy uses.

The hold-time model must match what qsched's `emulated-qpu` worker does, or the study would compare
two different devices: qsched.devices.emulated is used when it exists and exposes a usable run call;
otherwise HoldModelDevice reproduces the same model (aer with a small noise model, then hold the
device until setup_s + bindings x shots x rep_s has passed since the batch started).
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

    def __init__(self, kind: str = "emulated-qpu", *, setup_s: float = 0.01, rep_s: float = 250e-6,
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


def make_device(kind: str, *, setup_s: float, rep_s: float, num_qubits: int) -> HoldModelDevice:
    return HoldModelDevice(kind, setup_s=setup_s, rep_s=rep_s, num_qubits=num_qubits)


# --- per-circuit strategy: the function each RQ job runs, in the one worker process owning the device --

_WORKER_DEVICE: HoldModelDevice | None = None  # set by hybrid_mix_rqworker.py before it starts working


def rq_execute(job: int, iteration: int, params: list, shots: int) -> dict:
    """One circuit, one RQ job: record start/end here, in the process that owns the device."""
    start, end = _WORKER_DEVICE.run(np.asarray(params, dtype=float), int(shots))
    return {"job": job, "iteration": iteration, "start": start, "end": end}
