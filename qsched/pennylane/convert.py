"""Pure conversions between PennyLane tapes and qsched tasks.

A tape becomes a Qiskit template in which *every* numeric gate argument is a Parameter (θ[k] in tape
order), so tapes that differ only in their numbers (optimizer steps, data points, parameter-shift
offsets) share one cached template and stack into one task as rows of the params array.

Analytic measurements are all expressed as expectation values of Pauli sums, so one estimate (or
adjoint gradient) task serves them and their derivatives are linear maps of the task's jacobian:
expval(H) -> <H>; var(H) -> <H^2> - <H>^2; probs(wires) -> the 2^k - 1 Z-strings on those wires,
then an inverse Walsh-Hadamard transform. Finite-shot tapes are diagonalized by PennyLane's own
transforms and sampled; PennyLane's measurement processes then read the bitstrings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np
import pennylane as qml
from pennylane.exceptions import DeviceError
from pennylane.measurements import ExpectationMP, ProbabilityMP, StateMeasurement, StateMP, VarianceMP
from pennylane.pauli import PauliSentence
from pennylane.wires import Wires

from ..wire import ROWS_METADATA_KEY

# PennyLane op name -> Qiskit gate name. Each maps its arguments 1:1 and in order, so a template
# parameter is exactly one tape parameter, and server jacobian columns are tape derivatives.
GATES: dict[str, str] = {
    "Hadamard": "h", "PauliX": "x", "PauliY": "y", "PauliZ": "z", "S": "s", "T": "t", "SX": "sx",
    "Adjoint(S)": "sdg", "Adjoint(T)": "tdg", "Adjoint(SX)": "sxdg",
    "CNOT": "cx", "CZ": "cz", "CY": "cy", "SWAP": "swap", "Toffoli": "ccx", "CSWAP": "cswap",
    "RX": "rx", "RY": "ry", "RZ": "rz", "PhaseShift": "p", "U1": "p", "U3": "u",
    "IsingXX": "rxx", "IsingYY": "ryy", "IsingZZ": "rzz",
    "CRX": "crx", "CRY": "cry", "CRZ": "crz", "ControlledPhaseShift": "cp",
}
# Ops with no observable effect on measurement statistics; their parameters get zero derivative.
DROPPED = frozenset({"Identity", "GlobalPhase", "Barrier", "Snapshot"})
MAX_PROBS_WIRES = 12  # analytic probs use 2^k - 1 observables
MAX_DENSITY_WIRES = 6  # analytic density matrices (and what is computed from them) use 4^k - 1
MAX_MATRIX_WIRES = 6   # operations without a decomposition travel as their matrix up to this size


class MatrixGate(qml.QubitUnitary):
    """An operation that PennyLane cannot decompose (BlockEncode, DoubleExcitationPlus, ...), sent
    to the daemon as its unitary matrix (a Qiskit ``unitary`` instruction; the worker synthesizes it
    into its own gates once per template). Its data is a matrix: device derivatives refuse it."""

    def __init__(self, U, wires, source: str = "QubitUnitary", id=None):
        super().__init__(U, wires=wires, unitary_check=False, id=id)
        self.hyperparameters["source"] = source


class StateSlot(qml.operation.Operation):
    """The tape's initial state as data: non-trainable real amplitudes (AmplitudeEmbedding,
    StatePrep) that a pool whose workers prepare states directly (``state_prep_slot`` in their
    description: lightning) receives per binding, instead of a 2^k-gate RY/CNOT tree in the
    template. Broadcast over a leading axis like StatePrep; not differentiable."""
    num_wires = None
    num_params = 1
    ndim_params = (1,)
    grad_method = None

    def __init__(self, state, wires, id=None):
        super().__init__(state, wires=wires, id=id)


STATE_SLOT = "qsched_state"   # its Qiskit instruction (qsched.devices.lightning.split_state_slot)
STATE_METADATA_KEY = "qsched.state"   # template metadata: estimate results carry each row's state vector
SUPPORTED_OPS = frozenset(GATES) | DROPPED | {"MatrixGate", "StateSlot"}


def stopping_condition(op: qml.operation.Operator) -> bool:
    return op.name in SUPPORTED_OPS


# --------------------------------------------------------------------------- state preparation
def _uniform_ry(alphas, controls: list, target) -> list:
    """Uniformly controlled RY (angle alphas[..., j] when controls are in basis state j, controls[0]
    the most significant bit) as 2^k RY + 2^k CNOT in Gray-code order (Möttönen et al. 2004).
    Always emits every gate, so the structure depends only on the number of wires."""
    k = len(controls)
    if k == 0:
        return [qml.RY(alphas[..., 0], wires=target)]
    size = 1 << k
    gray = [i ^ (i >> 1) for i in range(size)]
    # theta = M^-1 alpha with M[j, i] = (-1)^popcount(j & gray_i); M is a signed Hadamard matrix
    m = np.array([[(-1) ** bin(j & g).count("1") for g in gray] for j in range(size)], dtype=float)
    thetas = qml.math.tensordot(alphas, qml.math.convert_like(m / size, alphas), axes=[[-1], [0]])
    ops = []
    for i in range(size):
        ops.append(qml.RY(thetas[..., i], wires=target))
        flip = gray[i] ^ gray[(i + 1) % size]
        bit = flip.bit_length() - 1
        ops.append(qml.CNOT(wires=[controls[k - 1 - bit], target]))
    return ops


def real_state_prep_ops(state, wires) -> list:
    """A real (signed) state vector -> a fixed RY/CNOT circuit whose angles carry the amplitudes.

    Level k splits each block of amplitudes by wire k; upper levels rotate by the ratio of the two
    halves' norms, the last level by the signed pair, so signs need no phase gates. Differentiable
    through qml.math (autograd/torch) and broadcast over leading axes.
    """
    n = len(wires)
    a = qml.math.cast(state, "float64")
    lead = qml.math.shape(a)[:-1]
    ops = []
    for k in range(n):
        blocks = qml.math.reshape(a, lead + (1 << k, 2, 1 << (n - k - 1)))
        if k < n - 1:
            left = qml.math.sqrt(qml.math.sum(blocks[..., 0, :] ** 2, axis=-1))
            right = qml.math.sqrt(qml.math.sum(blocks[..., 1, :] ** 2, axis=-1))
        else:
            left, right = blocks[..., 0, 0], blocks[..., 1, 0]
        alphas = 2 * qml.math.arctan2(right, left)
        ops.extend(_uniform_ry(alphas, list(wires[:k]), wires[k]))
    return ops


def decomposer(op: qml.operation.Operator):
    """Decompositions whose gate structure does not depend on the data, so the template is reused.

    AmplitudeEmbedding/StatePrep with real amplitudes -> the RY tree above (the amplitudes become
    template parameters); BasisState -> U3(pi * bit, 0, pi * bit) per wire, which is X^bit exactly
    (RX(pi) is -iX: a state of k ones came back times (-i)^k). Everything else: PennyLane's own.
    """
    if isinstance(op, qml.StatePrep) and not qml.math.is_abstract(op.data[0]):
        state = op.data[0]
        if "complex" in qml.math.get_dtype_name(state):
            if not np.allclose(qml.math.imag(qml.math.detach(state)), 0):
                return op.decomposition()       # complex phases: PennyLane's Möttönen with RZ
            state = qml.math.real(state)
        if qml.math.shape(state)[-1] == 1 << len(op.wires):
            return real_state_prep_ops(state, op.wires)
    if isinstance(op, qml.BasisState):
        bits = op.data[0]
        return [qml.U3(np.pi * bits[..., i], 0 * bits[..., i], np.pi * bits[..., i], wires=w)
                for i, w in enumerate(op.wires)]
    if not op.has_decomposition and op.has_matrix and len(op.wires) <= MAX_MATRIX_WIRES:
        return [MatrixGate(op.matrix(), wires=op.wires, source=op.name)]
    return op.decomposition()


def expand_state_slot(tape):
    """A tape whose first operation is a StateSlot -> the same tape with the RY/CNOT tree instead
    (for pools whose workers do not prepare states from data). The slot is never trainable; the
    trainable indices after it move by the tree's extra parameters."""
    slot, rest = tape.operations[0], tape.operations[1:]
    tree = real_state_prep_ops(slot.data[0], slot.wires)
    shift = sum(op.num_params for op in tree) - slot.num_params
    trainable = [t + shift for t in tape.trainable_params if t >= slot.num_params]
    return qml.tape.QuantumScript(tree + list(rest), tape.measurements, shots=tape.shots, trainable_params=trainable)


# --------------------------------------------------------------------------- templates
@dataclass
class Template:
    """One structure: the circuit (built once) and which tape parameters feed which column."""
    key: tuple
    circuit: Any                       # qiskit QuantumCircuit with parameters θ[0..P-1]
    num_params: int
    _rows_circuit: Any = field(default=None, repr=False, compare=False)

    def rows_circuit(self):
        """The circuit asking for row i's value at observable i alone (ROWS_METADATA_KEY), built once."""
        if self._rows_circuit is None:
            out = self.circuit.copy()
            out.metadata = {**(self.circuit.metadata or {}), ROWS_METADATA_KEY: True}
            self._rows_circuit = out
        return self._rows_circuit


@dataclass
class TapeCircuit:
    template: Template
    values: np.ndarray                 # [P] float64, this tape's parameter values in template order
    columns: np.ndarray                # op-parameter index -> template column, -1 for dropped ops
    wire_order: Wires                  # qubit i of the template is wire_order[i]


MATRIX_COLUMN = -2   # columns entry of a MatrixGate's data: no template parameter, not differentiable
STATE_COLUMN = -3    # columns entry of a StateSlot's data: amplitudes after the angles, not differentiable


_Controlled = qml.ops.op_math.Controlled
# per operator class: (a StateSlot, a MatrixGate, a controlled gate); isinstance through ABCs costs
# ~0.5 us a call, three per gate
_OP_FLAGS: dict[type, tuple[bool, bool, bool]] = {}


def _op_flags(tp: type) -> tuple[bool, bool, bool]:
    flags = _OP_FLAGS.get(tp)
    if flags is None:
        flags = _OP_FLAGS[tp] = (issubclass(tp, StateSlot), issubclass(tp, MatrixGate), issubclass(tp, _Controlled))
    return flags


def _wire_labels(op, controlled: bool) -> tuple:
    """op.wires as a tuple of labels. A controlled gate's (CNOT, CRZ, Toffoli, ...) `wires` builds a
    new Wires from its control and target wires on every access (~5 us); read the two parts."""
    if controlled:
        return op.hyperparameters["control_wires"].labels + op.base.wires.labels
    return op.wires.labels


def tape_structure(tape, wire_order: Wires) -> tuple[tuple, list, list, list]:
    """(structure key, gates [(qiskit name, qubits, nparams[, matrix bytes])], values, columns) for a
    tape. A MatrixGate's matrix is part of the structure (each matrix is its own template)."""
    index = {w: i for i, w in enumerate(wire_order)}
    gates: list[tuple] = []
    values: list[float] = []
    columns: list[int] = []
    amplitudes: list[float] = []
    col = 0
    for i, op in enumerate(tape.operations):
        name = op.name
        if name in DROPPED:
            columns.extend([-1] * op.num_params)
            continue
        is_slot, is_matrix, controlled = _op_flags(type(op))
        if is_slot:
            if i != 0:
                raise DeviceError("qsched.qubit: a state slot must be the tape's first operation")
            state = np.asarray(qml.math.toarray(qml.math.unwrap(op.data[0])), dtype=np.float64)
            if state.shape != (1 << len(op.wires),):
                raise DeviceError(f"qsched.qubit: state of shape {state.shape} on {len(op.wires)} wires "
                                  "(broadcast tapes are expanded before execution)")
            try:
                qubits = tuple(index[w] for w in op.wires)
            except KeyError as e:
                raise DeviceError(f"qsched.qubit: wire {e.args[0]!r} is not a device wire") from None
            amplitudes.extend(state.tolist())
            columns.append(STATE_COLUMN)
            gates.append((STATE_SLOT, qubits, 0))
            continue
        if is_matrix:
            try:
                qubits = tuple(index[w] for w in op.wires)
            except KeyError as e:
                raise DeviceError(f"qsched.qubit: wire {e.args[0]!r} is not a device wire") from None
            mat = np.asarray(qml.math.toarray(qml.math.unwrap(op.data[0])), dtype=np.complex128)
            if mat.shape != (1 << len(qubits), 1 << len(qubits)):
                raise DeviceError(f"qsched.qubit: {op.hyperparameters['source']} has a matrix of shape "
                                  f"{mat.shape} (broadcast tapes are expanded before execution)")
            columns.append(MATRIX_COLUMN)
            gates.append(("unitary", qubits, 0, mat.tobytes()))
            continue
        qname = GATES.get(name)
        if qname is None:
            raise DeviceError(f"qsched.qubit: operation {name} was not decomposed to a supported gate")
        try:
            qubits = tuple(index[w] for w in _wire_labels(op, controlled))
        except KeyError as e:
            raise DeviceError(f"qsched.qubit: wire {e.args[0]!r} is not a device wire") from None
        data = op.data
        npar = len(data)
        for x in data:
            tx = type(x)
            if tx is float or tx is np.float64:         # what convert_to_numpy leaves: no dispatch
                values.append(float(x))
            elif tx is np.ndarray and x.ndim == 0:
                values.append(float(x.real))
            else:
                if qml.math.ndim(x) != 0:
                    raise DeviceError(f"qsched.qubit: {name} has a non-scalar parameter "
                                      "(broadcast tapes are expanded before execution)")
                values.append(float(qml.math.toarray(qml.math.unwrap(x)).real))
            columns.append(col)
            col += 1
        gates.append((qname, qubits, npar))
    key = (len(wire_order), tuple(gates))
    # the template's parameters sort θ[...] before ψ[...]: the amplitudes are the last columns
    return key, gates, values + amplitudes, columns


def build_circuit(num_qubits: int, gates: list, metadata: dict | None = None):
    from qiskit.circuit import ParameterVector, QuantumCircuit
    from qiskit.circuit.library import UnitaryGate
    nparams = sum(g[2] for g in gates)
    theta = ParameterVector("θ", nparams)
    qc = QuantumCircuit(num_qubits, metadata=metadata)
    k = 0
    for qname, qubits, npar, *extra in gates:
        if qname == STATE_SLOT:
            from qiskit.circuit import Gate
            psi = ParameterVector("ψ", 1 << len(qubits))
            qc.append(Gate(STATE_SLOT, len(qubits), list(psi)), list(qubits))   # PennyLane wire order
            continue
        if qname == "unitary":
            dim = 1 << len(qubits)
            mat = np.frombuffer(extra[0], dtype=np.complex128).reshape(dim, dim)
            # PennyLane: wires[0] is the most significant bit; Qiskit: qargs[0] the least
            qc.append(UnitaryGate(mat, check_input=False), list(reversed(qubits)))
            continue
        getattr(qc, qname)(*theta[k:k + npar], *qubits)
        k += npar
    return qc


class TemplateCache:
    """Structure key -> Template, so each structure is built (and uploaded) once per process."""

    def __init__(self, maxsize: int = 512):
        self._items: dict[tuple, Template] = {}
        self.maxsize = maxsize

    def __len__(self):
        return len(self._items)

    def convert(self, tape, wire_order: Wires, want_state: bool = False) -> TapeCircuit:
        """`want_state`: a template whose estimate results also carry each row's state vector."""
        key, gates, values, columns = tape_structure(tape, wire_order)
        if want_state:
            key = (*key, "state")
        tpl = self._items.get(key)
        if tpl is None:
            if len(self._items) >= self.maxsize:
                self._items.pop(next(iter(self._items)))
            meta = {STATE_METADATA_KEY: True} if want_state else None
            tpl = Template(key=key, circuit=build_circuit(len(wire_order), gates, meta), num_params=len(values))
            self._items[key] = tpl
        return TapeCircuit(tpl, np.asarray(values, dtype=np.float64), np.asarray(columns, dtype=np.int64),
                           wire_order)


# --------------------------------------------------------------------------- observables
def pauli_rep(obs) -> PauliSentence:
    ps = obs.pauli_rep
    if ps is None:
        if not obs.has_matrix or len(obs.wires) > 8:
            raise DeviceError(f"qsched.qubit: observable {obs.name} has no Pauli decomposition")
        ps = qml.pauli_decompose(qml.matrix(obs), wire_order=obs.wires, pauli=True)
    return ps


def sentence_to_wire(ps: PauliSentence, wire_index: dict, n: int) -> list[list]:
    """PauliSentence -> [[Qiskit-order Pauli string (rightmost char = qubit 0), coeff], ...]."""
    terms = []
    for word, coeff in ps.items():
        c = complex(qml.math.toarray(qml.math.unwrap(coeff)))
        if abs(c) == 0:
            continue
        chars = ["I"] * n
        for w, p in word.items():
            chars[n - 1 - wire_index[w]] = p
        terms.append(["".join(chars), c.real])
    if not terms:
        terms.append(["I" * n, 0.0])
    return terms


def _obs_key(terms: list) -> tuple:
    return tuple((p, c) for p, c in terms)


def walsh_matrix(k: int) -> np.ndarray:
    """H[b, S] = (-1)^popcount(b & S): probs = H @ [1, <Z_S>...] / 2^k (b with wires[0] as MSB)."""
    size = 1 << k
    idx = np.arange(size)
    parity = np.bitwise_and(idx[:, None], idx[None, :])
    pc = np.zeros_like(parity)
    while parity.any():
        pc += parity & 1
        parity >>= 1
    return np.where(pc % 2 == 0, 1.0, -1.0)


@dataclass
class Readout:
    """One measurement read from evs (and their jacobian rows) of the task's observables."""
    rows: list[int]
    value: Callable[[np.ndarray], Any]
    deriv: Callable[[np.ndarray, np.ndarray], np.ndarray]   # (e, J[rows]) -> [*value_shape, P]
    dtype: Any = np.float64                                 # None: as the value comes (complex, ...)
    state: bool = False                                     # value(state vector) instead of value(e)


@dataclass
class AnalyticPlan:
    observables: list = field(default_factory=list)   # wire form, unique
    readouts: list = field(default_factory=list)
    _index: dict = field(default_factory=dict)
    state_for: list = field(default_factory=list)      # what reads the state vector, for messages
    needs_phase: bool = False                          # qml.state(): the state's global phase matters

    @property
    def needs_state(self) -> bool:
        return any(r.state for r in self.readouts)

    def add(self, terms: list) -> int:
        key = _obs_key(terms)
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self.observables)
            self.observables.append(terms)
        return i


def analytic_plan(tape, wire_order: Wires) -> AnalyticPlan:
    """Measurements of an analytic tape -> the Pauli sums to estimate and how to read each back."""
    n = len(wire_order)
    index = {w: i for i, w in enumerate(wire_order)}
    plan = AnalyticPlan()
    for mp in tape.measurements:
        if isinstance(mp, ExpectationMP) and mp.obs is not None:
            i = plan.add(sentence_to_wire(pauli_rep(mp.obs), index, n))
            plan.readouts.append(Readout([i], lambda e: e[0], lambda e, J: J[0]))
        elif isinstance(mp, VarianceMP) and mp.obs is not None:
            ps = pauli_rep(mp.obs)
            sq = ps @ ps
            sq.simplify()
            i = plan.add(sentence_to_wire(ps, index, n))
            j = plan.add(sentence_to_wire(sq, index, n))
            plan.readouts.append(Readout([i, j], lambda e: e[1] - e[0] ** 2,
                                         lambda e, J: J[1] - 2 * e[0] * J[0]))
        elif isinstance(mp, ProbabilityMP) and mp.obs is None and mp.mv is None:
            wires = mp.wires if len(mp.wires) else wire_order
            k = len(wires)
            if k > MAX_PROBS_WIRES:
                # 2^k - 1 Z-string estimates would cost more than the state itself: square its amplitudes
                plan.state_for.append(f"analytic qml.probs on more than {MAX_PROBS_WIRES} wires")
                plan.readouts.append(Readout([], partial(_state_vector, mp, wire_order), _no_state_derivative(mp),
                                             state=True))
                continue
            rows = []
            for s in range(1, 1 << k):
                chars = ["I"] * n
                for pos, w in enumerate(wires):
                    if s >> (k - 1 - pos) & 1:      # bit (k-1-pos) of s <-> wires[pos], as for b
                        chars[n - 1 - index[w]] = "Z"
                rows.append(plan.add([["".join(chars), 1.0]]))
            hm = walsh_matrix(k) / (1 << k)
            plan.readouts.append(Readout(rows, partial(_probs_value, hm), partial(_probs_deriv, hm)))
        elif isinstance(mp, StateMeasurement) and type(mp) is not StateMP:
            # density_matrix, vn_entropy, purity, mutual_info, custom state measurements: the
            # reduced density matrix from its Pauli expectation values, then PennyLane's own process
            wires = Wires(mp.wires if len(mp.wires) else wire_order)
            k = len(wires)
            if k > MAX_DENSITY_WIRES:
                raise DeviceError(f"qsched.qubit: {type(mp).__name__} is supported without shots on at most "
                                  f"{MAX_DENSITY_WIRES} wires (4^k - 1 Pauli estimates); got {k}")
            rows = []
            for s in range(1, 1 << (2 * k)):
                chars = ["I"] * n
                for pos, w in enumerate(wires):
                    chars[n - 1 - index[w]] = "IXYZ"[(s >> (2 * (k - 1 - pos))) & 3]
                rows.append(plan.add([["".join(chars), 1.0]]))
            # on wires 0..k-1: some processes (mutual_info) index wire labels as positions
            local = mp.map_wires({w: i for i, w in enumerate(wires)})
            plan.readouts.append(Readout(rows, partial(_state_value, local, k), _no_state_derivative(mp),
                                         dtype=None))
        elif isinstance(mp, StateMP):
            # qml.state(): the worker's own state vector (pools whose workers return states); the
            # device checks the pool and multiplies in the tape's GlobalPhase
            plan.state_for.append("qml.state()")
            plan.needs_phase = True
            plan.readouts.append(Readout([], partial(_state_vector, mp, wire_order), _no_state_derivative(mp),
                                         dtype=None, state=True))
        else:
            raise DeviceError(f"qsched.qubit: measurement {mp} is not supported without shots")
    return plan


def _probs_value(hm: np.ndarray, e: np.ndarray) -> np.ndarray:
    return hm[:, 0] + hm[:, 1:] @ e


def _probs_deriv(hm: np.ndarray, e: np.ndarray, J: np.ndarray) -> np.ndarray:
    return hm[:, 1:] @ J


def _state_vector(mp, wire_order: Wires, state: np.ndarray):
    return mp.process_state(state, wire_order)


def _state_value(mp, k: int, e: np.ndarray):
    return mp.process_density_matrix(density_from_paulis(e, k), Wires(range(k)))


def _no_state_derivative(mp):
    def deriv(e, J):
        raise DeviceError(f"qsched.qubit: device derivatives of {type(mp).__name__} are not supported; "
                          "use diff_method='parameter-shift'")
    return deriv


def density_from_paulis(e: np.ndarray, k: int) -> np.ndarray:
    """rho = (I + sum_S <P_S> P_S) / 2^k from the 4^k - 1 Pauli expectation values, S in base 4 with
    digits I, X, Y, Z and the first wire as the most significant digit (and bit of the index)."""
    dim = 1 << k
    coeff = np.concatenate([[1.0], np.asarray(e, dtype=np.float64)])
    rho = np.zeros((dim, dim), dtype=np.complex128)
    a = np.arange(dim)
    parity = np.array([bin(v).count("1") & 1 for v in range(dim)])
    for s in range(1 << (2 * k)):
        x = z = ny = 0
        for pos in range(k):
            d = (s >> (2 * (k - 1 - pos))) & 3
            bit = 1 << (k - 1 - pos)
            if d in (1, 2):
                x |= bit
            if d in (2, 3):
                z |= bit
            ny += d == 2
        b = a ^ x
        # P = i^nY X^x Z^z: <a|P|b> = i^nY (-1)^popcount(z & b) [a = b ^ x]
        sign = 1 - 2 * parity[z & b]
        rho[a, b] += coeff[s] * (1j ** ny) * sign
    return rho / dim


def read_analytic(plan: AnalyticPlan, evs_row: np.ndarray, cols: np.ndarray, state_row=None):
    """evs of this tape's task row, at the plan's observables (cols maps plan index -> task column);
    `state_row`: the row's state vector, for qml.state()."""
    out = []
    for r in plan.readouts:
        v = r.value(state_row) if r.state else r.value(evs_row[cols[r.rows]])
        out.append(np.asarray(v, dtype=r.dtype) if r.dtype is not None else v)
    return out[0] if len(out) == 1 else tuple(out)


def read_jacobian(plan: AnalyticPlan, evs_row: np.ndarray, jac_row: np.ndarray, cols: np.ndarray,
                  tape, tc: TapeCircuit):
    """Server jacobian d ev / d template column -> PennyLane's jacobian over tape.trainable_params.

    Layout as PennyLane expects from a device: per measurement a tuple over trainable parameters
    (unwrapped when there is one parameter), and a tuple over measurements when there are several.
    """
    nop = len(tc.columns)
    tcols = []
    for t in tape.trainable_params:
        if t >= nop:
            # as lightning.qubit (and PennyLane's adjoint validation): observable data is not
            # differentiated; its derivative is 0, with PennyLane's own warning
            _warn_trainable_observables(tape)
            tcols.append(-1)
            continue
        c = int(tc.columns[t])
        if c == STATE_COLUMN:
            raise DeviceError("qsched.qubit: differentiating with respect to the input state is not "
                              "supported with device derivatives (as lightning's adjoint method)")
        if c == MATRIX_COLUMN:
            op = _op_of_parameter(tape, t)
            raise DeviceError(f"qsched.qubit: {op.hyperparameters.get('source', op.name)} has no decomposition "
                              f"and runs as a matrix, which device derivatives do not differentiate; "
                              f"use diff_method='parameter-shift'")
        tcols.append(c)
    per_mp = []
    for r in plan.readouts:
        e = evs_row[cols[r.rows]]
        J = jac_row[cols[r.rows]]                         # [len(rows), P]
        d = np.asarray(r.deriv(e, J), dtype=np.float64)   # [*shape, P]
        parts = tuple(d[..., c] if c >= 0 else np.zeros(d.shape[:-1]) for c in tcols)
        per_mp.append(parts[0] if len(parts) == 1 else parts)
    if not tcols:     # as default.qubit: () per measurement (PennyLane's vjp indexes into it)
        return () if len(plan.readouts) == 1 else tuple(() for _ in plan.readouts)
    return per_mp[0] if len(per_mp) == 1 else tuple(per_mp)


def _op_of_parameter(tape, index: int):
    k = 0
    for op in tape.operations:
        if index < k + op.num_params:
            return op
        k += op.num_params
    raise IndexError(index)


def _warn_trainable_observables(tape) -> None:
    import warnings
    names = sorted({mp.obs.name for mp in tape.measurements if mp.obs is not None and mp.obs.num_params})
    warnings.warn(f"Differentiating with respect to the input parameters of {', '.join(names)} is not "
                  "supported with the adjoint differentiation method. Gradients are computed only with "
                  "regards to the trainable parameters of the circuit.\n\n Mark the parameters of the "
                  "measured observables as non-trainable to silence this warning.", UserWarning, stacklevel=3)


# --------------------------------------------------------------------------- samples
def unpack_register(array: np.ndarray, num_bits: int) -> np.ndarray:
    """BitArray bytes [..., shots, nbytes] (big-endian) -> int [..., shots, num_bits], column i = bit i."""
    bits = np.unpackbits(np.asarray(array, dtype=np.uint8), axis=-1, bitorder="big")
    return bits[..., -num_bits:][..., ::-1].astype(np.int64) if num_bits else bits[..., :0].astype(np.int64)


def read_samples(tape, samples: np.ndarray, wire_order: Wires):
    """PennyLane's own measurement processes over the sampled bitstrings, split per shot vector."""
    shots = tape.shots
    per_bin = []
    for lower, upper in shots.bins():
        chunk = samples[lower:upper]
        per_bin.append(tuple(mp.process_samples(chunk, wire_order) for mp in tape.measurements))
    if len(tape.measurements) == 1:
        per_bin = [r[0] for r in per_bin]
    return tuple(per_bin) if shots.has_partitioned_shots else per_bin[0]
