"""Template analysis shared by the simulator devices: gate angles as linear functions of the template's
parameters (so gradients by parameter shift or adjoint can be chained back to them), and conversion
of a Qiskit template to PennyLane operations."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .base import TaskError

# gates in which each angle a enters as exp(-i a G), G with eigenvalues +-1/2 (or 0 and 1): the
# two-term shift rule is exact for them. Not r(theta, phi): phi enters twice (RZ(phi) RX RZ(-phi)),
# so the rule is wrong for it; r is decomposed into u first.
SHIFTABLE = frozenset({"rx", "ry", "rz", "p", "u1", "rxx", "ryy", "rzz", "rzx", "u", "u3"})


@dataclass
class AngleMap:
    """angle_k = c0[k] + sum_j C[k, j] * theta_j for every parameterized gate argument k, except the
    angles in `nonlinear` (x*y, x**2, sin(x): their rows of C are zero), evaluated per row."""
    C: np.ndarray          # [K, P]
    c0: np.ndarray         # [K]
    where: list            # (instruction index, argument position) of each angle k
    names: list            # gate name of each angle k
    # angle k -> (numpy function of its parameters' columns, those columns, the expression's text)
    nonlinear: dict[int, tuple[Callable, list[int], str]] = field(default_factory=dict)

    def angles(self, params: np.ndarray) -> np.ndarray:
        out = params @ self.C.T + self.c0
        for k, (f, cols, _) in self.nonlinear.items():
            out[..., k] = np.real(f(*np.moveaxis(params[..., cols], -1, 0)))
        return out

    def require_linear(self) -> None:
        """Gradients chain d(angle)/d(parameter) through C: only linear angles have a constant one."""
        if self.nonlinear:
            k, (_, _, text) = next(iter(self.nonlinear.items()))
            raise TaskError(f"template: gate {self.names[k]} argument {text} is not linear in its parameters; "
                            f"gradients need linear angles (estimates and samples take any expression)",
                            field="template")


def _numpy_function(x, index: dict) -> tuple[Callable, list[int]]:
    """A parameter expression as a numpy function of its parameters (vectorized over rows)."""
    import sympy
    ps = list(x.parameters)
    expr = x.sympify()
    by_name = {s.name: s for s in expr.free_symbols}
    f = sympy.lambdify([by_name[p.name] for p in ps], expr, modules="numpy", dummify=True)
    return f, [index[p] for p in ps]


def analyse(circuit, parameters=None) -> AngleMap:
    """`parameters`: the template's own parameter order (a flattened copy may have lost some, e.g.
    one that only fed a dropped global phase); the default is the circuit's."""
    from qiskit.circuit import ParameterExpression
    index = {p: j for j, p in enumerate(circuit.parameters if parameters is None else parameters)}
    rows: list[np.ndarray] = []
    c0: list[float] = []
    where: list[tuple[int, int]] = []
    names: list[str] = []
    nonlinear: dict[int, tuple[Callable, list[int], str]] = {}
    for i, inst in enumerate(circuit.data):
        for pos, x in enumerate(inst.operation.params):
            if not (isinstance(x, ParameterExpression) and x.parameters):
                continue
            row = np.zeros(len(index))
            grads = [(p, x.gradient(p)) for p in x.parameters]
            if any(isinstance(g, ParameterExpression) and g.parameters for _, g in grads):
                nonlinear[len(rows)] = (*_numpy_function(x, index), str(x))
                c0.append(0.0)
            else:
                for p, g in grads:
                    row[index[p]] = float(np.real(complex(g)))
                c0.append(float(np.real(complex(x.bind({p: 0.0 for p in x.parameters})))))
            rows.append(row)
            where.append((i, pos))
            names.append(inst.operation.name)
    C = np.array(rows).reshape(len(rows), len(index))
    return AngleMap(C, np.array(c0), where, names, nonlinear)


# instructions that are not unitary gates but that every device understands or ignores
NON_GATES = frozenset({"barrier", "measure", "delay", "id", "global_phase"})
# Qiskit's control-flow instructions (aer runs them; lightning does not)
CONTROL_FLOW = frozenset({"if_else", "for_loop", "while_loop", "switch_case"})


def flatten(circuit, keep, device: str):
    """The circuit with every instruction `keep(op)` refuses replaced by its definition, recursively,
    so composite instructions (`to_gate()`, appended circuits, library gates a simulator lacks) run
    everywhere. The definitions' global phases are dropped: they change no measurement statistics.

    U(theta, phi, lam) = e^{i(phi+lam)/2} RZ(phi) RY(theta) RZ(lam): each angle in a one-parameter
    rotation, which the adjoint method and the two-term shift rule need (lightning's own adjoint
    preprocessing decomposes U3 the same way). Returns the circuit itself when nothing changes."""
    if not _needs_flattening(circuit, keep):
        return circuit
    from qiskit.circuit.library import RYGate, RZGate
    out = circuit.copy_empty_like()
    out.global_phase = 0.0

    def emit(op, qubits, clbits, depth):
        if keep(op):
            blocks = getattr(op, "blocks", None)
            if blocks:        # control flow a device runs: flatten what its bodies hold
                op = op.replace_blocks([flatten(b, keep, device) for b in blocks])
            out.append(op, qubits, clbits, copy=False)
            return
        if op.name in ("u", "u3") and len(op.params) == 3:
            theta, phi, lam = op.params
            for g in (RZGate(lam), RYGate(theta), RZGate(phi)):
                emit(g, qubits, (), depth + 1)
            return
        if op.name == "box" and getattr(op, "blocks", None):      # a box is its body, inline
            body = op.blocks[0]
            qmap = dict(zip(body.qubits, qubits))
            cmap = dict(zip(body.clbits, clbits))
            for inst in body.data:
                emit(inst.operation, [qmap[q] for q in inst.qubits], [cmap[c] for c in inst.clbits], depth + 1)
            return
        definition = getattr(op, "definition", None)
        if definition is None or depth > 64:
            raise TaskError(f"template: instruction {op.name!r} is not supported on {device} and has "
                            f"no decomposition", field="template")
        qmap = dict(zip(definition.qubits, qubits))
        cmap = dict(zip(definition.clbits, clbits))
        for inst in definition.data:
            emit(inst.operation, [qmap[q] for q in inst.qubits], [cmap[c] for c in inst.clbits], depth + 1)

    for inst in circuit.data:
        emit(inst.operation, list(inst.qubits), list(inst.clbits), 0)
    return out


def _needs_flattening(circuit, keep) -> bool:
    if _has_params(circuit.global_phase):
        return True
    for inst in circuit.data:
        op = inst.operation
        if not keep(op) or any(_needs_flattening(b, keep) for b in getattr(op, "blocks", ()) or ()):
            return True
    return False


def _has_params(x) -> bool:
    return bool(getattr(x, "parameters", None))


def final_measurements(circuit) -> dict:
    """{qubit index: clbit index} of the circuit's measurements, which must all be final: no
    operation may follow a measurement on its qubit (a mid-circuit measurement would change the
    state that later gates act on, which neither the estimator nor lightning's sampler models)."""
    measured, out = set(), {}
    for inst in circuit.data:
        qs = [circuit.find_bit(q).index for q in inst.qubits]
        name = inst.operation.name
        if name == "measure":
            out[qs[0]] = circuit.find_bit(inst.clbits[0]).index
            measured.add(qs[0])
            continue
        if name == "barrier":
            continue
        after = measured.intersection(qs)
        if after:
            raise TaskError(f"template: {name!r} acts on qubit {min(after)} after it was measured; "
                            f"only final measurements are supported here", field="template")
    return out


def dephase(observables, measured, num_qubits: int):
    """Observables after measuring `measured` qubits in the Z basis: a final measurement collapses the
    state, so every Pauli term with X or Y on a measured qubit has expectation 0 (the exact value
    that aer's estimator approaches by sampling); I/Z terms are unchanged."""
    if not measured:
        return observables
    pos = [num_qubits - 1 - q for q in measured]
    return [[[p, c if all(p[i] in "IZ" for i in pos) else 0.0] for p, c in o] for o in observables]


def unrolled(circuit, amap: AngleMap):
    """The template with one fresh parameter per gate angle (phi[k]), for shifting angles one by one."""
    from qiskit.circuit import ParameterVector
    phi = ParameterVector("phi", len(amap.where))
    slot = {w: k for k, w in enumerate(amap.where)}
    out = circuit.copy_empty_like()
    for i, inst in enumerate(circuit.data):
        op = inst.operation
        if any((i, pos) in slot for pos in range(len(op.params))):
            op = op.to_mutable() if hasattr(op, "to_mutable") else op.copy()
            op.params = [phi[slot[(i, pos)]] if (i, pos) in slot else v for pos, v in enumerate(op.params)]
        out.append(op, inst.qubits, inst.clbits)
    return out


def shift_bindings(angles: np.ndarray) -> np.ndarray:
    """[B, K] angles -> [B, 1 + 2K, K]: the point itself, then +pi/2 and -pi/2 on each angle."""
    B, K = angles.shape
    eye = np.eye(K) * (np.pi / 2)
    return np.concatenate([angles[:, None, :], angles[:, None, :] + eye, angles[:, None, :] - eye], axis=1)


def check_shiftable(amap: AngleMap) -> None:
    bad = sorted({n for n in amap.names if n not in SHIFTABLE})
    if bad:
        raise TaskError(f"method: parameter-shift supports gates {', '.join(sorted(SHIFTABLE))}; the "
                        f"template has {', '.join(bad)}: use method 'adjoint' on a lightning pool",
                        field="method")


def pauli_sum_pennylane(terms, num_qubits: int):
    """Qiskit-order Pauli strings (rightmost = qubit 0) -> a PennyLane operator on wires 0..n-1."""
    import pennylane as qml
    from pennylane.pauli import PauliSentence, PauliWord
    ps = PauliSentence()
    for label, coeff in terms:
        word = PauliWord({num_qubits - 1 - i: ch for i, ch in enumerate(label) if ch != "I"})
        ps[word] = ps.get(word, 0.0) + coeff
    return ps.operation(wire_order=range(num_qubits)) if ps else qml.Identity(0) * 0.0


_PL_GATES = {
    "h": "Hadamard", "x": "PauliX", "y": "PauliY", "z": "PauliZ", "s": "S", "t": "T", "sx": "SX",
    "cx": "CNOT", "cz": "CZ", "cy": "CY", "swap": "SWAP", "ccx": "Toffoli", "cswap": "CSWAP",
    "rx": "RX", "ry": "RY", "rz": "RZ", "p": "PhaseShift", "u1": "PhaseShift",
    "rxx": "IsingXX", "ryy": "IsingYY", "rzz": "IsingZZ", "crx": "CRX", "cry": "CRY", "crz": "CRZ",
    "cp": "ControlledPhaseShift", "u": "U3", "u3": "U3", "ecr": "ECR", "iswap": "ISWAP",
}
_PL_ADJOINT = {"sdg": "S", "tdg": "T", "sxdg": "SX"}
_SKIP = {"barrier", "id", "delay", "global_phase", "measure"}
# what PennyLaneProgram converts; anything else is flattened into these first
LIGHTNING_GATES = frozenset(_PL_GATES) | frozenset(_PL_ADJOINT) | frozenset(_SKIP)
# one-parameter gates with a generator: what lightning's adjoint method differentiates
ADJOINT_GATES = frozenset({"rx", "ry", "rz", "p", "u1", "rxx", "ryy", "rzz", "crx", "cry", "crz", "cp"})


class PennyLaneProgram:
    """A template compiled once to a list of PennyLane op builders; angles come per binding."""

    def __init__(self, circuit, amap: AngleMap):
        import pennylane as qml
        qidx = {q: i for i, q in enumerate(circuit.qubits)}
        cidx = {c: i for i, c in enumerate(circuit.clbits)}
        slot = {w: k for k, w in enumerate(amap.where)}
        self.num_qubits = circuit.num_qubits
        self.steps: list[tuple] = []   # (op class, wires, [("angle", k) | ("const", value)], adjoint)
        self.measures: list[tuple[int, int]] = []   # (qubit, clbit)
        for i, inst in enumerate(circuit.data):
            name = inst.operation.name
            wires = [qidx[q] for q in inst.qubits]
            if name == "measure":
                self.measures.append((wires[0], cidx[inst.clbits[0]]))
                continue
            if name in _SKIP:
                continue
            if name in _PL_ADJOINT:
                self.steps.append((getattr(qml, _PL_ADJOINT[name]), wires, [], True))
                continue
            if name not in _PL_GATES:
                raise TaskError(f"template: gate {name!r} is not supported on lightning "
                                f"(supported: {', '.join(sorted(_PL_GATES) + sorted(_PL_ADJOINT))})",
                                field="template")
            args = [("angle", slot[(i, pos)]) if (i, pos) in slot else ("const", float(v))
                    for pos, v in enumerate(inst.operation.params)]
            self.steps.append((getattr(qml, _PL_GATES[name]), wires, args, False))

        # ops without template angles are the same in every binding: build them once (a CNOT costs
        # ~70 us to construct, more than lightning takes to apply it at 12 qubits)
        self.fixed = [None if any(k == "angle" for k, _ in args) else self._build(cls, wires, args, adj, None)
                      for cls, wires, args, adj in self.steps]
        # ops with angles whose state is their attributes and `data` alone (RX, RY, RZ, PhaseShift,
        # Ising*, U3): a prototype built once, copied per binding with the binding's data (~0.4 us
        # instead of ~4 us through the constructor's wire and parameter checks)
        self.protos = [self._prototype(cls, wires, args, adj) if fixed is None else None
                       for (cls, wires, args, adj), fixed in zip(self.steps, self.fixed)]
        # which tape parameters are template angles, in k order: the same for every binding
        self.trainable: list[int] = []
        self.order: list[int] = []
        n = 0
        for _, _, args, _ in self.steps:
            for kind, v in args:
                if kind == "angle":
                    self.trainable.append(n)
                    self.order.append(v)
                n += 1

    @staticmethod
    def _build(cls, wires, args, adj, angles):
        import pennylane as qml
        op = cls(*[angles[v] if kind == "angle" else v for kind, v in args], wires=wires)
        return qml.adjoint(op) if adj else op

    @staticmethod
    def _prototype(cls, wires, args, adj):
        if adj:
            return None
        op = cls(*[0.0 if kind == "angle" else v for kind, v in args], wires=wires)
        state = vars(op)
        if "data" not in state or "_hyperparameters" in state or state.get("_pauli_rep") is not None \
                or state.get("_batch_size", -1) != -1:
            return None           # data kept elsewhere (controlled ops: in their base), or derived state
        return op

    @staticmethod
    def _clone(proto, args, angles):
        op = object.__new__(type(proto))
        state = op.__dict__
        state.update(proto.__dict__)
        state["data"] = tuple([angles[v] if kind == "angle" else v for kind, v in args])
        return op

    def ops(self, angles: np.ndarray):
        """Ops for one binding, and the tape parameter indices that are template angles (in k order)."""
        ops = []
        for (cls, wires, args, adj), fixed, proto in zip(self.steps, self.fixed, self.protos):
            if fixed is not None:
                ops.append(fixed)
            elif proto is not None:
                ops.append(self._clone(proto, args, angles))
            else:
                ops.append(self._build(cls, wires, args, adj, angles))
        return ops, list(self.trainable), list(self.order)
