"""lightning.qubit's C++ state vector, measurements and adjoint method, driven without its Python device.

Per binding, lightning.qubit's Python device serializes every op of the tape again (isinstance checks,
Wires objects, per-op dispatch): most of a 12-qubit, 60-parameter adjoint gradient's time in the
worker (2.9 ms there, 1.0 ms here; `benchmarks/sdk_overhead.py`'s circuit). A template has the same
structure in every binding, so here it is serialized once, by lightning's own serializer, and each
binding only fills in its angles.

Used for analytic estimate and gradient tasks (with or without an input-state slot) whose every op
lightning applies by name or, for ops without angles, as a fixed matrix; anything else takes the
PennyLane path (`LightningDevice`). tests/unit/test_differential_devices.py checks it against Qiskit's Statevector
for every standard gate and against the PennyLane path to rounding."""
from __future__ import annotations

from typing import Any

import numpy as np

from .circuits import PennyLaneProgram


class NotNative(Exception):
    """The program needs lightning's Python layer (an angle-dependent matrix, a controlled op)."""


def _ops_module():
    import pennylane_lightning.lightning_qubit_ops as ops
    return ops


def serializer():
    from pennylane_lightning.lightning_base._serialize import QuantumScriptSerializer
    return QuantumScriptSerializer("lightning.qubit")


def state_vector(num_qubits: int) -> Any:
    return _ops_module().StateVectorC128(num_qubits)


class NativeObservables:
    """A task's expval measurements serialized once: C++ observables and the measurement each feeds."""

    def __init__(self, measurements: list):
        import pennylane as qml
        obs, index = serializer().serialize_observables(qml.tape.QuantumScript([], measurements))
        self.obs = obs
        self.index = np.asarray(index, dtype=np.int64)
        self.count = len(measurements)

    def reduce(self, rows: np.ndarray) -> np.ndarray:
        """[len(obs), ...] per serialized observable -> [count, ...] per measurement (summing splits)."""
        out = np.zeros((self.count, *rows.shape[1:]))
        np.add.at(out, self.index, rows)
        return out


class NativeProgram:
    """A PennyLaneProgram as lightning's C++ op lists: names, wires, inverse flags and fixed matrices
    once; parameters per binding."""

    def __init__(self, prog: PennyLaneProgram, slot_wires: list[int] | None = None):
        import pennylane as qml
        self.num_qubits = prog.num_qubits
        # the input-state slot's qubits (PennyLane order), its amplitudes given per binding to run()
        self.slot_wires = slot_wires
        self.slot_whole = slot_wires == list(range(prog.num_qubits))
        self.trainable = list(prog.trainable)
        self.order = list(prog.order)
        ops0, _, _ = prog.ops(np.zeros(max(self.order, default=-1) + 1))
        (names, params, wires, inverses, mats, cwires, cvals), uses_sp = \
            serializer().serialize_ops(qml.tape.QuantumScript(ops0))
        if uses_sp or len(names) != len(prog.steps):
            raise NotNative("state preparation or ops lightning decomposes")
        self.names, self.wires, self.inverses = names, wires, inverses
        self.mats, self.cwires, self.cvals = mats, cwires, cvals
        self.params = [list(p) for p in params]
        self.angle_slots: list[tuple[int, int, int]] = []     # (op, position in its params, angle k)
        self.apply: list[tuple[str, list, bool, np.ndarray | None]] = []
        sv_type = _ops_module().StateVectorC128
        for i, (cls, step_wires, args, _) in enumerate(prog.steps):
            angles = [(pos, k) for pos, (kind, k) in enumerate(args) if kind == "angle"]
            if cwires[i]:
                # serialized as a controlled base (Toffoli: PauliX on the target, two controls), which
                # the C++ adjoint pass takes as it is; the forward pass applies the gate by its name
                if angles or args or not hasattr(sv_type, cls.__name__):
                    raise NotNative(f"{names[i]}: a controlled op")
                self.apply.append((cls.__name__, list(step_wires), inverses[i], None))
                continue
            if len(params[i]) != len(args):
                # the C++ adjoint pass numbers parameters as serialized: they must be the tape's
                raise NotNative(f"{names[i]}: serialized with other parameters than the tape's")
            named = hasattr(sv_type, names[i]) and not np.asarray(mats[i]).size
            if not named and angles:
                raise NotNative(f"{names[i]}: an angle-dependent matrix")
            self.angle_slots += [(i, pos, k) for pos, k in angles]
            # forward pass: named ops by name; others as their (fixed) matrix, inverse folded in
            mat = None
            if not named:
                mat = np.asarray(mats[i], dtype=np.complex128)
                if inverses[i]:
                    mat = mat.conj().T
            self.apply.append((names[i], wires[i], inverses[i], mat))

    def _binding_params(self, angles: np.ndarray) -> list[list[float]]:
        params = [list(p) for p in self.params]
        for i, pos, k in self.angle_slots:
            params[i][pos] = float(angles[k])
        return params

    def _final_state(self, sv, params, state):
        sv.resetStateVector()
        if state is not None:                   # as lightning prepares a StatePrep
            if self.slot_whole:
                sv.updateData(state)
            else:
                sv.setStateVector(state, self.slot_wires)
        for (name, wires, inverse, mat), p in zip(self.apply, params):
            if mat is None:
                getattr(sv, name)(wires, inverse, p)
            else:
                sv.applyMatrix(mat, wires, False)

    def run(self, sv: Any, angles: np.ndarray, obs: NativeObservables, gradient: bool,
            states: np.ndarray | None = None):
        """evs [B, O] and, for gradients, d ev / d angle in tape order [B, O, K]. `sv`: a state vector of
        num_qubits (`state_vector(n)`), overwritten; `states`: the slot's amplitudes per binding
        [B, 2^k] (taken as given, as lightning's StatePrep takes them)."""
        ops = _ops_module()
        B, K = len(angles), len(self.trainable)
        evs = np.empty((B, obs.count))
        jac = np.zeros((B, obs.count, K)) if gradient else None
        adjoint = ops.algorithms.AdjointJacobianC128() if gradient and K else None
        for b in range(B):
            params = self._binding_params(angles[b])
            self._final_state(sv, params, None if states is None else states[b])
            measure = ops.MeasurementsC128(sv)
            evs[b] = obs.reduce(np.array([measure.expval(o) for o in obs.obs]))
            if adjoint is not None:
                struct = ops.algorithms.create_ops_listC128(self.names, params, self.wires, self.inverses,
                                                            self.mats, self.cwires, self.cvals)
                d = np.asarray(adjoint(sv, obs.obs, struct, self.trainable)).reshape(len(obs.obs), K)
                assert jac is not None
                jac[b] = obs.reduce(d)
        return evs, jac
