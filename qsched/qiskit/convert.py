"""Pure conversions between Qiskit V2 primitive PUBs and qsched tasks/results.

A PUB is an N-d broadcast of parameter bindings against observables (estimator) or shots (sampler).
A task is flat: params [bindings, num_parameters] and, for estimate, a list of observables; the
estimate result is the outer product evs[binding, observable]. Mapping a PUB onto one task keeps the
simulator on its fast path (one PUB, many bindings); reshaping picks the broadcast entries back out.
Nothing here talks to a daemon, so all of it is unit-tested with hand-built result dicts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from qiskit.circuit import QuantumCircuit
from qiskit.exceptions import QiskitError
from qiskit.primitives.containers import (
    BitArray,
    DataBin,
    PubResult,
    SamplerPubResult,
)
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.primitives.containers.sampler_pub import SamplerPub
from qiskit.quantum_info import SparseObservable

from ..errors import BadRequest
from ..sdk import pauli_basis, result_field
from ..wire import ROWS_METADATA_KEY


class CircuitError(BadRequest, QiskitError):
    """A circuit no qsched device can run, refused at run(): a BadRequest, and a QiskitError for code
    that catches Qiskit's."""

__all__ = [
    "EstimatorPlan",
    "SamplerPlan",
    "estimator_pub_to_task",
    "sampler_pub_to_task",
    "estimator_result",
    "sampler_result",
    "observable_to_wire",
    "precision_to_shots",
    "result_field",
    "registers_to_memory",
    "check_runnable",
    "CircuitError",
]


def _meta(result: Any) -> dict:
    m = result_field(result, "meta", None)
    return dict(m) if m else {}


# --------------------------------------------------------------------------- circuits
def _known_names() -> frozenset:
    from qiskit.circuit.library import get_standard_gate_name_mapping
    return frozenset(get_standard_gate_name_mapping()) | {
        "measure", "barrier", "reset", "delay", "unitary", "diagonal", "mcx", "if_else", "for_loop",
        "while_loop", "switch_case", "box", "store"}


_KNOWN: frozenset | None = None
_CONTROL_FLOW = frozenset({"if_else", "for_loop", "while_loop", "switch_case", "box"})


def check_runnable(circuit: QuantumCircuit) -> None:
    """Refuse at run() what no worker can run: an instruction that is neither one the simulators
    know nor defined in terms of them (an opaque Gate). Composite instructions (`to_gate()`,
    appended library circuits) are fine: each worker flattens them once per template. What one pool
    cannot run (reset or control flow on lightning) the daemon refuses at upload, from what the
    pool's devices declare."""
    global _KNOWN
    known = _KNOWN if _KNOWN is not None else (_KNOWN := _known_names())
    seen: set[str] = set()

    def walk(qc, depth):
        names = qc.count_ops().keys()      # ~2 us; walking qc.data costs ~1.5 us per instruction
        if all(n in known and n not in _CONTROL_FLOW for n in names):
            return
        for inst in qc.data:
            op = inst.operation
            name = op.name
            if name in known or name in seen:
                for block in getattr(op, "blocks", ()):
                    walk(block, depth + 1)
                continue
            definition = getattr(op, "definition", None)
            if definition is None or depth > 64:
                raise CircuitError(f"circuit: instruction {name!r} has no definition in terms of gates "
                                   f"the simulators run; give it a definition or decompose it",
                                   field="circuit")
            walk(definition, depth + 1)
            seen.add(name)
    walk(circuit, 0)


# --------------------------------------------------------------------------- idle qubits
def without_idle_qubits(circuit: QuantumCircuit) -> tuple[QuantumCircuit, list[int] | None]:
    """(the circuit on the qubits some instruction acts on, their indices) or (circuit, None) when
    every qubit is used. An ISA circuit laid out on a large backend leaves most qubits idle in |0>;
    aer drops them, a state-vector worker would simulate 2^(backend's qubits). Qubits keep their
    relative order, so results stay in the user's; barriers and delays do not count as use."""
    used: set = set()
    for inst in circuit.data:
        if inst.operation.name not in ("barrier", "delay"):
            used.update(inst.qubits)
    if not used and circuit.num_qubits:
        used = {circuit.qubits[0]}      # a circuit of no gates keeps one qubit: devices need one
    if len(used) == circuit.num_qubits:
        return circuit, None
    active = sorted(circuit.find_bit(q).index for q in used)
    keep = [circuit.qubits[i] for i in active]
    out = QuantumCircuit(len(keep), name=circuit.name, global_phase=circuit.global_phase,
                         metadata=circuit.metadata)
    out.add_bits(circuit.clbits)
    for creg in circuit.cregs:
        out.add_register(creg)
    where = dict(zip(keep, out.qubits))
    for inst in circuit.data:
        qubits = [where[q] for q in inst.qubits if q in where]
        if inst.operation.name == "barrier":
            if qubits:
                out.barrier(*qubits)
            continue
        if inst.operation.name == "delay" and not qubits:
            continue
        out.append(inst.operation, qubits, inst.clbits, copy=False)
    return out, active


def _restrict_terms(terms: list, active: list[int], n: int) -> list:
    """Pauli terms on n qubits -> the same on the active ones: an idle qubit is |0>, so a term with
    X or Y on it is 0 and Z or I on it is a factor 1. (Strings: the rightmost character is qubit 0.)"""
    act = set(active)
    idle = [n - 1 - q for q in range(n) if q not in act]
    keep = [n - 1 - q for q in reversed(active)]
    out = [["".join(p[i] for i in keep), c] for p, c in terms if not any(p[i] in "XY" for i in idle)]
    return out or [["I" * len(active), 0.0]]


# --------------------------------------------------------------------------- observables
def observable_to_wire(obs: SparseObservable) -> list[list]:
    """One SparseObservable -> [[pauli string in Qiskit order, real coeff], ...].

    SparseObservable may hold projector terms (0, 1, +, -, r, l); the wire format carries Paulis
    only, so those are expanded first.
    """
    if any(t not in (SparseObservable.BitTerm.X, SparseObservable.BitTerm.Y, SparseObservable.BitTerm.Z)
           for t in obs.bit_terms):
        obs = obs.as_paulis().simplify()
    n = obs.num_qubits
    terms = []
    for letters, qubits, coeff in obs.to_sparse_list():
        chars = ["I"] * n
        for letter, q in zip(letters, qubits):
            chars[n - 1 - q] = letter  # rightmost character is qubit 0
        terms.append(["".join(chars), float(np.real(coeff))])
    if not terms:  # the zero observable: keep the task well-formed
        terms.append(["I" * n, 0.0])
    return terms


def precision_to_shots(precision: float) -> int | None:
    """Estimator precision -> shots (standard error 1/sqrt(shots) for a unit-norm Pauli); 0 is exact."""
    if not precision:
        return None
    return int(math.ceil(1.0 / float(precision) ** 2))


def _flat_params(pub, circuit: QuantumCircuit) -> np.ndarray:
    bindings = pub.parameter_values
    nparam = circuit.num_parameters
    if nparam == 0:
        return np.zeros((max(1, int(np.prod(bindings.shape, dtype=np.int64))), 0))
    arr = bindings.as_array(circuit.parameters)  # last axis in template (circuit.parameters) order
    return np.ascontiguousarray(arr.reshape(-1, nparam), dtype=np.float64)


# --------------------------------------------------------------------------- estimator
@dataclass
class EstimatorPlan:
    """How one EstimatorPub maps onto one estimate task, and how to read the result back."""
    circuit: QuantumCircuit
    shape: tuple
    bindings_shape: tuple
    observables_shape: tuple
    precision: float
    shots: int | None
    task: dict = field(repr=False)
    # the task's observables are Pauli strings and these the PUB observables' coefficients over them
    # ([observables, strings], see pauli_basis); None: the task's observables are the PUB's
    coef: np.ndarray | None = field(default=None, repr=False)
    by_row: bool = False        # the task's rows are the PUB's entries, each at its own observable

    def index_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        nb = int(np.prod(self.bindings_shape, dtype=np.int64))
        no = int(np.prod(self.observables_shape, dtype=np.int64))
        bi = np.arange(nb).reshape(self.bindings_shape)
        oi = np.arange(no).reshape(self.observables_shape)
        bi, oi = np.broadcast_arrays(bi, oi)
        return bi, oi


def _check_estimator_measurements(circuit: QuantumCircuit) -> None:
    """Final measurements are allowed and collapse the state, as on aer (the reference for the aer
    pool): <X> of a measured qubit is 0, <Z> unchanged; the workers compute that exactly on every
    pool. StatevectorEstimator raises instead, but code written against aer must get aer's answer,
    not an error. A measurement followed by gates on its qubit has no exact estimate (aer samples
    trajectories and returns shot noise for precision 0): refused here, at run()."""
    if "measure" not in circuit.count_ops():     # ~2 us; the walk below ~5 us per instruction
        return
    measured: set[int] = set()
    for inst in circuit.data:
        name = inst.operation.name
        qs = [circuit.find_bit(q).index for q in inst.qubits]
        if name == "measure":
            measured.add(qs[0])
        elif name != "barrier" and measured.intersection(qs):
            raise BadRequest(f"circuit: {name!r} acts on qubit {min(measured.intersection(qs))} after "
                             f"it was measured; the estimator supports final measurements only",
                             field="circuit")


def estimator_pub_to_task(pub: EstimatorPub, by_row: Callable[[], bool] | None = None) -> EstimatorPlan:
    """EstimatorPub -> estimate task (template circuit, params [B, P], observables list of O).

    The task computes the outer product B x O; the broadcast PUB shape is read back by indexing.
    Cheaper where it applies: an exact estimate of observables that share Pauli strings (a zipped PUB
    of one Hamiltonian per row) sends the strings, B x strings values; and where the pool offers row
    observables (`by_row()`, asked only then) a PUB sends its entries as rows, each row at its own
    observable (ROWS_METADATA_KEY): when that costs least (a zipped PUB without shared strings), and
    with precision whenever the PUB is not laid out as B x O with bindings varying slowest, so the
    noise is drawn in the PUB's own order (aer's draws for a seeded PUB).
    """
    circuit = pub.circuit
    _check_estimator_measurements(circuit)
    params = _flat_params(pub, circuit)
    obs_arr = pub.observables.sparse_observables_array().reshape(-1)
    observables = [observable_to_wire(o) for o in obs_arr]
    sent, active = without_idle_qubits(circuit)
    if active is not None:
        observables = [_restrict_terms(o, active, circuit.num_qubits) for o in observables]
    precision = float(pub.precision or 0.0)
    shots = precision_to_shots(precision)
    plan = EstimatorPlan(circuit=circuit, shape=tuple(pub.shape), bindings_shape=tuple(pub.parameter_values.shape),
                         observables_shape=tuple(pub.observables.shape), precision=precision, shots=shots,
                         task={"kind": "estimate", "circuit": sent, "params": params,
                               "observables": observables, "shots": shots})
    mode, basis = _estimate_mode(plan, observables, len(sent.data), by_row)
    if mode == "basis" and basis is not None:
        plan.task["observables"], plan.coef = basis
    elif mode == "rows":
        bi, oi = plan.index_arrays()
        rows = sent.copy()
        rows.metadata = {**(sent.metadata or {}), ROWS_METADATA_KEY: True}
        plan.task.update(circuit=rows, params=params[bi.ravel()], observables=[observables[i] for i in oi.ravel()])
        plan.by_row = True
    return plan


def _estimate_mode(plan: EstimatorPlan, observables: list, gates: int, by_row) -> tuple[str, Any]:
    """'outer' (B x O), 'basis' (B x shared strings, with pauli_basis's answer) or 'rows' (one row
    per PUB entry), by a cost of gates per simulation and terms per expectation value."""
    nb = int(np.prod(plan.bindings_shape, dtype=np.int64))
    no = len(observables)
    size = int(np.prod(plan.shape, dtype=np.int64))
    if plan.shots is not None:
        bi, oi = plan.index_arrays()
        laid_out = size == nb * no and np.array_equal(bi.ravel(), np.arange(size) // no) and \
            np.array_equal(oi.ravel(), np.arange(size) % no)
        return ("rows" if not laid_out and by_row is not None and by_row() else "outer"), None
    terms = sum(len(o) for o in observables) / max(no, 1)
    costs = {"outer": nb * (gates + no * terms)}
    basis = pauli_basis(observables)
    if basis is not None:
        costs["basis"] = nb * (gates + len(basis[0]))
    if size < nb * no and size * (gates + terms) < min(costs.values()) and by_row is not None and by_row():
        return "rows", None
    return min(costs, key=costs.__getitem__), basis


def estimator_result(plan: EstimatorPlan, result: Any, pub_circuit: QuantumCircuit | None = None) -> PubResult:
    """Task result {evs [B, O], stds [B, O], meta} -> PubResult with the PUB's broadcast shape."""
    evs = np.asarray(result_field(result, "evs"), dtype=np.float64)
    stds = result_field(result, "stds")
    nb = int(np.prod(plan.bindings_shape, dtype=np.int64))
    bi, oi = plan.index_arrays()
    if plan.by_row:                 # one row per entry, in the PUB's order
        out_evs = evs.reshape(bi.shape)
        out_stds = np.zeros_like(out_evs) if stds is None else np.asarray(stds, dtype=np.float64).reshape(bi.shape)
    elif plan.coef is not None:     # exact values of Pauli strings: each entry its own combination
        evs = evs.reshape(nb, plan.coef.shape[1])
        out_evs = np.einsum("st,st->s", evs[bi.ravel()], plan.coef[oi.ravel()]).reshape(bi.shape)
        out_stds = np.zeros_like(out_evs)
    else:
        no = int(np.prod(plan.observables_shape, dtype=np.int64))
        evs = evs.reshape(nb, no)
        stds = np.zeros_like(evs) if stds is None else np.asarray(stds, dtype=np.float64).reshape(nb, no)
        out_evs = np.array(evs[bi, oi], dtype=np.float64)  # (not ascontiguousarray: it makes 0-d 1-d)
        out_stds = np.array(stds[bi, oi], dtype=np.float64)
    circuit = pub_circuit if pub_circuit is not None else plan.circuit
    metadata = {"target_precision": plan.precision,
                "circuit_metadata": circuit.metadata,
                "qsched": _meta(result)}
    if plan.shots is not None:
        metadata["shots"] = plan.shots
    return PubResult(DataBin(evs=out_evs, stds=out_stds, shape=out_evs.shape), metadata=metadata)


# --------------------------------------------------------------------------- sampler
@dataclass
class SamplerPlan:
    circuit: QuantumCircuit
    shape: tuple
    shots: int
    task: dict = field(repr=False)


def _without_empty_registers(circuit: QuantumCircuit) -> QuantumCircuit:
    """The template to send: a ClassicalRegister(0) holds no bits and has no samples to return (the
    result still carries it, as an empty BitArray)."""
    if all(c.size for c in circuit.cregs):
        return circuit
    out = circuit.copy()
    out.cregs = [c for c in circuit.cregs if c.size]
    return out


def sampler_pub_to_task(pub: SamplerPub) -> SamplerPlan:
    circuit = pub.circuit
    params = _flat_params(pub, circuit)
    task = {"kind": "sample", "circuit": without_idle_qubits(_without_empty_registers(circuit))[0], "params": params,
            "shots": int(pub.shots)}
    return SamplerPlan(circuit=circuit, shape=tuple(pub.shape), shots=int(pub.shots), task=task)


def _register_array(reg_result: Any, num_bits: int, rows: int, shots: int) -> np.ndarray:
    nbytes = (num_bits + 7) // 8
    if reg_result is None:
        return np.zeros((rows, shots, nbytes), dtype=np.uint8)
    arr = result_field(reg_result, "array")
    arr = np.asarray(arr, dtype=np.uint8)
    return arr.reshape(rows, shots, nbytes)


def sampler_result(plan: SamplerPlan, result: Any) -> SamplerPubResult:
    """Task result {registers: {name: {num_bits, array [B, shots, bytes]}}} -> SamplerPubResult."""
    registers = result_field(result, "registers") or {}
    rows = int(np.prod(plan.shape, dtype=np.int64))
    data = {}
    for creg in plan.circuit.cregs:
        arr = _register_array(registers.get(creg.name), creg.size, rows, plan.shots)
        data[creg.name] = BitArray(arr.reshape(plan.shape + arr.shape[1:]), creg.size)
    metadata = {"shots": plan.shots, "circuit_metadata": plan.circuit.metadata, "qsched": _meta(result)}
    return SamplerPubResult(DataBin(**data, shape=plan.shape), metadata=metadata)


# --------------------------------------------------------------------------- backend.run
def registers_to_memory(circuit: QuantumCircuit, registers: dict, shots: int) -> np.ndarray:
    """Per-register bit arrays of one bound circuit -> bool [shots, num_clbits], column j = clbit j.

    Registers may sit anywhere in the clbit list (or overlap), so each bit is placed by its index.
    """
    nclbits = circuit.num_clbits
    bits = np.zeros((shots, nclbits), dtype=bool)
    for creg in circuit.cregs:
        if creg.size == 0:
            continue
        arr = _register_array(registers.get(creg.name), creg.size, 1, shots)[0]
        # big-endian bytes per shot: the last unpacked bit is register bit 0
        unpacked = np.unpackbits(arr, axis=-1, bitorder="big")[:, -creg.size:][:, ::-1]
        for j, clbit in enumerate(creg):
            bits[:, circuit.find_bit(clbit).index] = unpacked[:, j]
    return bits


def memory_to_hex(bits: np.ndarray) -> list[str]:
    """bool [shots, n] (column j = clbit j) -> ["0x..", ...] as BackendV2 results carry memory."""
    shots, n = bits.shape
    if n == 0:
        return ["0x0"] * shots
    if n <= 63:
        weights = (1 << np.arange(n, dtype=np.int64))
        ints = bits.astype(np.int64) @ weights
        return [hex(int(v)) for v in ints]
    packed = np.packbits(bits[:, ::-1], axis=-1, bitorder="big")
    return [hex(int.from_bytes(row.tobytes(), "big") >> ((-n) % 8)) for row in packed]
