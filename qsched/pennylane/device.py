"""`qml.device("qsched.qubit", wires=..., pool=...)`: PennyLane circuits run as qsched tasks.

A batch of tapes becomes one request: tapes that share a structure (parameter-shift offsets,
broadcast rows, optimizer steps) stack into one task over one cached template. Analytic tapes are
estimate tasks; finite-shot tapes are sample tasks read by PennyLane's measurement processes;
diff_method="adjoint" (or "device") sends gradient tasks that the worker computes next to the state.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import numpy as np
import pennylane as qml
from pennylane.devices import Device, ExecutionConfig
from pennylane.devices.preprocess import (
    decompose,
    validate_device_wires,
    validate_measurements,
    validate_observables,
)
from pennylane.exceptions import DeviceError
from pennylane.measurements import ExpectationMP, ProbabilityMP, StateMeasurement, VarianceMP
from pennylane.transforms import broadcast_expand, defer_measurements
from pennylane.transforms.core import CompilePipeline, transform
from pennylane.wires import Wires

from ..errors import QschedError
from ..sdk import SessionHandle, pauli_basis, result_field
from ..wire import ROWS_METADATA_KEY
from . import convert
from .errors import as_device_error

_DEVICE_GRADIENTS = {"adjoint", "device", "best"}


def _derivable_ok(mp) -> bool:
    """Analytic measurements that device derivatives cover (probs(op=...) after its rotation)."""
    if isinstance(mp, (ExpectationMP, VarianceMP)):
        return mp.obs is not None
    return isinstance(mp, ProbabilityMP) and mp.mv is None


def _analytic_ok(mp) -> bool:
    """Analytic measurements the device estimates: expval/var/probs as Pauli sums; state measurements
    (density_matrix, vn_entropy, ...) from the reduced density matrix. qml.state() is let through
    here to be refused by name (convert.analytic_plan) rather than as 'not accepted'."""
    if isinstance(mp, ProbabilityMP):
        return mp.obs is None and mp.mv is None
    return _derivable_ok(mp) or isinstance(mp, StateMeasurement)


def _sample_ok(mp) -> bool:
    from pennylane.measurements import SampleMeasurement
    return isinstance(mp, SampleMeasurement)


def _observable_ok(obs) -> bool:
    return obs.pauli_rep is not None or (obs.has_matrix and len(obs.wires) <= 8)


@transform
def _drop_snapshots(tape):
    """Snapshots do nothing in an execution (qml.snapshots replaces them before the device sees
    the tape); their default state() measurement must not make validation refuse the tape."""
    if not any(isinstance(op, qml.Snapshot) for op in tape.operations):
        return (tape,), lambda res: res[0]
    ops, k, drop = [], 0, set[int]()
    for op in tape.operations:
        if isinstance(op, qml.Snapshot):
            drop.update(range(k, k + op.num_params))
        else:
            ops.append(op)
        k += op.num_params
    trainable = [t - sum(1 for d in drop if d < t) for t in tape.trainable_params if t not in drop]
    return (qml.tape.QuantumScript(ops, tape.measurements, shots=tape.shots, trainable_params=trainable),), \
        lambda res: res[0]


@transform
def _defer_mid_circuit_measurements(tape, wires=None):
    """Mid-circuit measurements run deferred (qml.defer_measurements): each takes a wire of its own,
    which a device of fixed wires must have spare, refused here by saying so (not as a WireError on a
    wire the user never wrote). Analytic measurements of measurement values are then measurements of
    those wires: probs(op=m) their probabilities, expval/var(f(m)) a diagonal observable on them."""
    n = sum(isinstance(op, qml.ops.MidMeasure) for op in tape.operations)
    if not n:
        return (tape,), lambda res: res[0]
    (deferred,), fn = defer_measurements(tape, allow_postselect=False)
    if wires is not None:
        extra = [w for w in deferred.wires if w not in wires]
        if extra:
            raise DeviceError(
                f"qsched.qubit runs mid-circuit measurements deferred: each needs a wire of its own, and "
                f"this circuit's {n} need {len(extra)} more than the device's {len(wires)} wires; create "
                f"the device with wires={len(wires) + len(extra)} or without wires (sized per circuit) "
                "(lightning.qubit's one-shot and tree-traversal methods are not offered)")
    if deferred.shots:
        return (deferred,), fn      # the samples path reads measurement values itself
    mps = [_on_wires(mp) if mp.mv is not None else mp for mp in deferred.measurements]
    return (_with(deferred, deferred.operations, mps),), fn


def _on_wires(mp):
    mvs = mp.mv if isinstance(mp.mv, list) else [mp.mv]
    if isinstance(mp, ProbabilityMP):
        return qml.probs(wires=Wires.all_wires([m.wires for m in mvs]))
    if isinstance(mp, (ExpectationMP, VarianceMP)) and len(mvs) == 1:
        values = [float(v) for _, v in mvs[0].items()]         # per basis state of its wires, in order
        obs = qml.pauli.pauli_decompose(np.diag(values), wire_order=mvs[0].wires)
        return type(mp)(obs=obs)
    return mp                                                  # refused by validation, by name


@transform
def _use_state_slot(tape):
    """A first StatePrep/AmplitudeEmbedding with non-trainable real amplitudes -> a StateSlot: the
    amplitudes travel as data and the worker prepares the state, where the pool's workers offer it
    (decided at execution, see QschedDevice._slot_fallback); a trainable one is decomposed as before
    (the RY tree, differentiable)."""
    ops = tape.operations
    if not ops or not isinstance(ops[0], qml.StatePrep) or qml.math.is_abstract(ops[0].data[0]):
        return (tape,), lambda res: res[0]
    op = ops[0]
    state = op.data[0]
    if qml.math.requires_grad(state):
        return (tape,), lambda res: res[0]
    if "complex" in qml.math.get_dtype_name(state):
        if not np.allclose(qml.math.imag(qml.math.toarray(state)), 0):
            return (tape,), lambda res: res[0]
        state = qml.math.real(state)
    if qml.math.shape(state)[-1] != 1 << len(op.wires):
        return (tape,), lambda res: res[0]
    slot = convert.StateSlot(qml.math.cast(qml.math.unwrap(state), "float64"), wires=op.wires)
    new = qml.tape.QuantumScript([slot, *ops[1:]], tape.measurements, shots=tape.shots,
                                 trainable_params=tape.trainable_params)
    return (new,), lambda res: res[0]


def _scalar_params_only(tape) -> bool:
    """Every operation parameter is a scalar (ndim 0: floats, 0-d numpy/autograd/torch values), so
    the tape is not broadcast. ~10x cheaper than tape.batch_size, which asks every op for its own."""
    for op in tape.operations:
        for x in op.data:
            if getattr(x, "ndim", 0) != 0:
                return False
    return True


@transform
def _broadcast_expand(tape):
    """broadcast_expand, after a cheap check that the tape has no broadcast parameter at all."""
    if _scalar_params_only(tape):
        return (tape,), lambda res: res[0]
    return broadcast_expand(tape)


_PLAIN_WIRE_TYPES = (int, str)


@transform
def _validate_device_wires(tape, wires=None, name: str = "device"):
    """validate_device_wires, answered without building tape.wires where nothing is to be done: every
    wire a plain int/str label of the device, no Snapshot, every measurement on wires or an observable.
    Anything else (or a wire off the device, for its error) goes to PennyLane's own transform."""
    if wires:
        allowed = set(wires.labels)
        ok = all(type(w) in _PLAIN_WIRE_TYPES for w in allowed)
        if ok:
            for op in tape.operations:
                tp = type(op)
                if tp is qml.Snapshot or not allowed.issuperset(convert._wire_labels(op, convert._op_flags(tp)[2])):
                    ok = False
                    break
        if ok:
            for mp in tape.measurements:
                if (not mp.obs and not mp.wires) or not allowed.issuperset(mp.wires.labels):
                    ok = False
                    break
        if ok:
            return (tape,), lambda res: res[0]
    return validate_device_wires(tape, wires, name=name)


def _obs_param_offsets(tape) -> tuple[int, list[int]]:
    """(number of operation parameters, first parameter index of each measurement's observable)."""
    nop = sum(op.num_params for op in tape.operations)
    offsets, k = [], nop
    for mp in tape.measurements:
        offsets.append(k)
        k += mp.obs.num_params if mp.obs is not None else 0
    return nop, offsets


def _rotate_analytic_probs(tape):
    """Analytic probs(op=O): O's diagonalizing gates, then probs on O's wires (what default.qubit
    computes). With other measurements present each measurement gets a tape of its own."""
    mps = tape.measurements
    rot = {i for i, mp in enumerate(mps) if isinstance(mp, ProbabilityMP) and mp.obs is not None}
    if not rot:
        return [tape], lambda res: res[0]
    nop, offsets = _obs_param_offsets(tape)
    tapes = []
    for i, mp in enumerate(mps):
        if i in rot:
            diag = mp.obs.diagonalizing_gates()
            ops, new_mp = tape.operations + diag, qml.probs(wires=mp.obs.wires)
            own = []
        else:
            ops, new_mp = tape.operations, mp
            n = mp.obs.num_params if mp.obs is not None else 0
            own = [nop + t - offsets[i] for t in tape.trainable_params if offsets[i] <= t < offsets[i] + n]
        trainable = [t for t in tape.trainable_params if t < nop] + own
        tapes.append(qml.tape.QuantumScript(ops, [new_mp], shots=tape.shots, trainable_params=trainable))
    if len(tapes) == 1:
        return tapes, lambda res: res[0]
    return tapes, _stack_single_measurements(tape)


@transform
def _to_computational_basis(tape):
    """Finite-shot tapes: split non-commuting measurements and rotate them to Z, so one sample
    task per tape serves every measurement. Analytic tapes are estimated: only probs(op=...) is
    rotated (the diagonalizing gates, then probs on its wires)."""
    if not tape.shots:
        return _rotate_analytic_probs(tape)
    if all(mp.obs is None or isinstance(mp.obs, (qml.Z, qml.Identity))
                             for mp in tape.measurements):
        return (tape,), lambda res: res[0]
    tape = _pauli_expand_undiagonalizable(tape)
    try:
        split, split_fn = qml.transforms.split_non_commuting(tape)
    except RuntimeError:
        # it cannot split var(sum of terms): measure each measurement on a tape of its own, rotated
        # by the observable's own diagonalizing gates (PennyLane raises if it has none)
        split = [_with(tape, tape.operations, [mp]) for mp in tape.measurements]
        split_fn = _stack_single_measurements(tape)
    out, fns = [], []
    for t in split:
        (d,), fn = qml.transforms.diagonalize_measurements(t)
        tapes, join = _rotate_remaining(d)
        out.extend(tapes)
        fns.append((len(tapes), fn, join))

    def post(res):
        parts, i = [], 0
        for n, fn, join in fns:
            parts.append(fn([join(res[i:i + n])]))
            i += n
        return split_fn(parts)
    return out, post


def _pauli_expand_undiagonalizable(tape):
    """Observables without diagonalizing gates (Exp, ...) but with a small matrix are measured as
    their Pauli decomposition, which split_non_commuting then groups; the rest is refused by name."""
    mps = []
    for mp in tape.measurements:
        obs = mp.obs
        symbolic = isinstance(obs, qml.ops.op_math.SymbolicOp) and not isinstance(obs, qml.ops.SProd)
        if symbolic and obs.pauli_rep is not None:
            # Exp and other symbolic ops: diagonalize_measurements rebuilds them and fails (0.45)
            mps.append(type(mp)(obs.pauli_rep.operation(wire_order=obs.wires)))
            continue
        if symbolic and obs.has_matrix and len(obs.wires) <= 8:
            mps.append(type(mp)(qml.pauli_decompose(qml.matrix(obs), wire_order=obs.wires)))
            continue
        if obs is None or obs.has_diagonalizing_gates or obs.pauli_rep is not None:
            mps.append(mp)
            continue
        if not obs.has_matrix or len(obs.wires) > 8:
            raise DeviceError(f"qsched.qubit: observable {obs.name} cannot be measured with shots "
                              f"(no diagonalizing gates, no matrix on <= 8 wires)")
        mps.append(type(mp)(qml.pauli_decompose(qml.matrix(obs), wire_order=obs.wires)))
    return _with(tape, tape.operations, mps)


def _with(tape, ops, mps):
    # (tape.copy(measurements=...) re-creates observables through their constructors; Exp fails)
    return qml.tape.QuantumScript(ops, mps, shots=tape.shots, trainable_params=tape.trainable_params)


def _stack_single_measurements(tape):
    def join(res):
        if len(res) == 1:
            return res[0]
        if tape.shots.has_partitioned_shots:
            return tuple(tuple(r[b] for r in res) for b in range(tape.shots.num_copies))
        return tuple(res)
    return join


def _rotate_remaining(tape):
    """diagonalize_measurements rotates Pauli observables only; the rest (Hermitian, state-vector
    Projector, ...) were read from Z-basis samples, which is wrong. As default.qubit does, apply each
    observable's diagonalizing gates before sampling and keep the measurement: its process_samples
    reads the rotated bits with eigvals() in the same order. Measurements that overlap such an
    observable on a wire get a tape of their own."""
    for mp in tape.measurements:
        if mp.obs is not None and not mp.obs.has_diagonalizing_gates:
            raise DeviceError(f"qsched.qubit: {mp} cannot be measured with shots: its observable "
                              f"has no diagonalizing gates (measure its terms separately)")
    rotated = [i for i, mp in enumerate(tape.measurements)
               if mp.obs is not None and mp.diagonalizing_gates()]
    if not rotated:
        return [tape], lambda res: res[0]
    mps = tape.measurements
    clash = any(i != j and set(mps[i].wires) & set(mps[j].wires)
                for i in rotated for j in range(len(mps)))
    groups = [list(range(len(mps)))] if not clash else [[i] for i in range(len(mps))]
    tapes = []
    for g in groups:
        diag = [op for i in g for op in mps[i].diagonalizing_gates()]
        tapes.append(_with(tape, tape.operations + diag, [mps[i] for i in g]))
    if len(groups) == 1:
        return tapes, lambda res: res[0]

    return tapes, _stack_single_measurements(tape)


class TaskGroup:
    """Tapes of one template, kind and shot count: one task, one row of params per tape, and the
    union of their observables (the estimate result is the outer product rows x observables)."""

    def __init__(self, template: convert.Template, kind: str, shots: int | None):
        self.template = template
        self.kind = kind
        self.shots = shots
        self.rows: list[np.ndarray] = []
        self.observables: list = []
        self._obs_index: dict = {}
        self.result = None
        self._cache: dict = {}
        self._coef: np.ndarray | None = None       # see pauli_basis: the task measured Pauli strings
        self.row_cols: list[np.ndarray] = []        # per analytic row: its observables' indices
        self.by_row = False                         # the task measures row i at its own observable alone

    def add_row(self, values: np.ndarray) -> int:
        self.rows.append(values)
        return len(self.rows) - 1

    def add_observable(self, terms: list) -> int:
        key = tuple((p, c) for p, c in terms)
        i = self._obs_index.get(key)
        if i is None:
            i = self._obs_index[key] = len(self.observables)
            self.observables.append(terms)
        return i

    def one_per_row(self) -> bool:
        """Every row measures one observable, and not all the same one (a batch of tapes of their own
        Hamiltonians): what a task of row observables (ROWS_METADATA_KEY) answers without rows x
        observables."""
        return len(self.observables) > 1 and len(self.row_cols) == len(self.rows) and \
            all(len(c) == 1 for c in self.row_cols)

    def to_task(self, handle: SessionHandle, method: str | None = None, seed: int | None = None,
                by_row: bool = False) -> dict:
        """`seed`: the simulator's seed for this task's samples (a field of the task).
        `by_row`: the pool's workers offer row observables (see task_observables)."""
        params = np.array(self.rows, dtype=np.float64).reshape(len(self.rows), self.template.num_params)
        task: dict[str, Any] = {"kind": self.kind, "params": params, "shots": self.shots}
        if self.kind != "sample":
            # (a task for qml.state() alone still needs one observable)
            task["observables"] = self.task_observables(by_row)
        circuit, key = self.template.circuit, self.template.key
        if self.by_row:
            circuit, key = self.template.rows_circuit(), (key, "rows")
        task["template"] = handle.upload(circuit, key)
        if seed is not None:
            task["seed"] = seed
        if self.kind == "gradient":
            task["method"] = method
        return task

    def task_observables(self, by_row: bool = False) -> list:
        """The observables the task measures: the group's, evaluated at every row; or for a batch of
        tapes of their own Hamiltonians (each Hamiltonian at its own row, not rows x Hamiltonians):
        their shared Pauli strings (rows x strings values; exact, cheap where few strings), or, where
        the pool offers it (`by_row`) and for derivatives (the adjoint method costs per observable)
        or Hamiltonians without shared strings, each row's own observable alone."""
        n = self.template.circuit.num_qubits
        basis = pauli_basis(self.observables)
        if by_row and (basis is None or self.kind == "gradient") and self.one_per_row():
            self.by_row = True
            return [self.observables[int(c[0])] for c in self.row_cols]
        if basis is None:
            return self.observables or [[["I" * n, 1.0]]]
        observables, self._coef = basis
        return observables

    def _array(self, name):
        if name not in self._cache:
            self._cache[name] = np.asarray(result_field(self.result, name), dtype=np.float64)
        return self._cache[name]

    def evs(self) -> np.ndarray:
        if self._coef is not None and "evs" not in self._cache:
            self._cache["evs"] = np.asarray(result_field(self.result, "evs"), dtype=np.float64) @ self._coef.T
        return self._array("evs")

    def jacobian(self) -> np.ndarray:
        if self._coef is not None and "jacobian" not in self._cache:
            raw = np.asarray(result_field(self.result, "jacobian"), dtype=np.float64)
            self._cache["jacobian"] = np.einsum("btp,ot->bop", raw, self._coef)
        return self._array("jacobian")

    def state(self) -> np.ndarray:
        if "state" not in self._cache:
            v = result_field(self.result, "state")
            if v is None:
                raise DeviceError("qsched.qubit: the estimate result has no state vector (the pool's "
                                  "worker does not return states)")
            self._cache["state"] = np.asarray(v, dtype=np.complex128)
        return self._cache["state"]

    def register(self, name: str) -> np.ndarray:
        key = ("reg", name)
        if key not in self._cache:
            regs = result_field(self.result, "registers") or {}
            if name not in regs:
                raise DeviceError(f"qsched.qubit: the sample result has no register {name!r}")
            self._cache[key] = np.asarray(result_field(regs[name], "array"), dtype=np.uint8)
        return self._cache[key]


class QschedDevice(Device):
    """PennyLane device that sends circuits to a qsched daemon.

    Args:
        wires: number or labels of wires.
        shots: default shots (PennyLane prefers ``qml.set_shots`` on the QNode).
        pool: the device pool to ask the daemon for (default: the Slurm job's session pool, else
            "lightning", whose worker computes adjoint gradients).
        client / session: an existing ``qsched.Client`` or session to use instead of connecting
            from the environment (``QSCHED_URL``, ``QSCHED_SESSION``, or the local daemon socket); the
            session's token is obtained by attaching (peer uid on a socket, MUNGE over TCP).
        timeout: seconds to wait for one batch of results.
        state_slots: send a non-trainable initial AmplitudeEmbedding/StatePrep as data (the worker
            prepares the state) instead of as a 2^k-gate RY/CNOT tree. None (default): where every
            device of the pool offers it (lightning), asked once; False: never.
        seed: as lightning.qubit's: an int, a numpy Generator (or anything numpy.random.default_rng
            takes) makes shot results reproducible: two devices with the same seed give the same
            samples for the same calls. "global": a seed drawn from numpy's global generator. None
            (default): unseeded (seeded tasks run alone on the worker; unseeded ones may merge).

    Errors from the daemon or its tasks (a refused request, a failed or cancelled task, a timeout,
    an unreachable daemon) are raised as :class:`qsched.pennylane.errors.QschedDeviceError`
    subclasses: PennyLane ``DeviceError`` s that are also the qsched error they were.
    """

    name = "qsched.qubit"
    short_name = "qsched.qubit"
    pennylane_requires = ">=0.38"
    author = "qsched"

    def __init__(self, wires=None, shots=None, *, pool: str | None = None, client=None, session=None,
                 timeout: float = 600.0, name: str | None = None, state_slots: bool | None = None,
                 seed=None):
        super().__init__(wires=wires, shots=shots)
        if isinstance(seed, str) and seed == "global":
            seed = np.random.randint(0, 2**31 - 1)
        # each sample task's seed is drawn from this, in submission order
        self._rng = None if seed is None else np.random.default_rng(seed)
        self._handle = SessionHandle(pool=pool, client=client, session=session, default_pool="lightning",
                                     name=name or "pennylane")
        self.timeout = timeout
        self._templates = convert.TemplateCache()
        self._lock = threading.Lock()
        self._state_slot: bool | None = state_slots
        self._features = self._handle.features       # what the pool's workers offer, as asked

    @property
    def pool(self) -> str | None:
        return self._handle.pool

    def _state_slot_supported(self) -> bool:
        """Whether every device of the pool prepares input states from data (its workers describe
        `state_prep_slot`), unless `state_slots` decided it."""
        if self._state_slot is not None:
            return self._state_slot
        return self._offers("state_prep_slot", convert.STATE_SLOT)

    def _offers(self, feature: str, value) -> bool:
        return self._handle.offers(feature, value)

    def close(self):
        """Close the session this device opened (a session passed in or attached stays open)."""
        self._handle.close()

    # ------------------------------------------------------------------ configuration
    def supports_derivatives(self, execution_config=None, circuit=None) -> bool:
        if execution_config is None:
            return True
        if execution_config.gradient_method not in _DEVICE_GRADIENTS:
            return False
        if circuit is None:
            return True
        return not circuit.shots and all(_derivable_ok(mp) for mp in circuit.measurements)

    def setup_execution_config(self, config: ExecutionConfig | None = None, circuit=None) -> ExecutionConfig:
        config = config or ExecutionConfig()
        updates: dict[str, Any] = {}
        method = config.gradient_method
        if method == "best":
            # server-side derivatives when exact; parameter shift (batched into one task) with shots
            method = "parameter-shift" if circuit is not None and circuit.shots else "adjoint"
            updates["gradient_method"] = method
        device_grad = method in ("adjoint", "device")
        if config.use_device_gradient is None:
            updates["use_device_gradient"] = device_grad
        if config.use_device_jacobian_product is None:
            updates["use_device_jacobian_product"] = False
        if config.grad_on_execution is None:
            # values and jacobian come back from one gradient task: one round trip per step
            updates["grad_on_execution"] = device_grad
        mcm = config.mcm_config
        if mcm.mcm_method in (None, "deferred"):
            updates["mcm_config"] = replace(mcm, mcm_method="deferred")
        elif mcm.mcm_method != "deferred":
            raise DeviceError(f"qsched.qubit supports mid-circuit measurements only with "
                              f"mcm_method='deferred', got {mcm.mcm_method!r}")
        updates["convert_to_numpy"] = True
        return replace(config, **updates)

    def preprocess_transforms(self, execution_config: ExecutionConfig | None = None) -> CompilePipeline:
        program = CompilePipeline()
        program.add_transform(_drop_snapshots)
        program.add_transform(_defer_mid_circuit_measurements, self.wires)
        program.add_transform(_use_state_slot)
        program.add_transform(decompose, stopping_condition=convert.stopping_condition,
                              skip_initial_state_prep=False, decomposer=convert.decomposer,
                              name=self.name)
        program.add_transform(_to_computational_basis)
        program.add_transform(decompose, stopping_condition=convert.stopping_condition,
                              skip_initial_state_prep=False, decomposer=convert.decomposer,
                              name=self.name)
        program.add_transform(_validate_device_wires, self.wires, name=self.name)
        program.add_transform(validate_measurements, analytic_measurements=_analytic_ok,
                              sample_measurements=_sample_ok, name=self.name)
        program.add_transform(validate_observables, stopping_condition=_observable_ok, name=self.name)
        program.add_transform(_broadcast_expand)
        return program

    # ------------------------------------------------------------------ execution
    def _wire_order(self, tape) -> Wires:
        return self.wires if self.wires is not None else tape.wires

    def _plan(self, tapes, gradient: bool):
        """Tapes -> TaskGroups (one per template/kind/shots) and, per tape, where to read its result."""
        groups: dict[tuple, TaskGroup] = {}
        plans: list[tuple] = []
        for tape in tapes:
            wires = self._wire_order(tape)
            if tape.operations and isinstance(tape.operations[0], convert.StateSlot) and \
                    not self._state_slot_supported():
                tape = convert.expand_state_slot(tape)
            if tape.shots:
                tc = self._templates.convert(tape, wires)
                if gradient:
                    raise DeviceError("qsched.qubit: device derivatives need shots=None; use "
                                      "diff_method='parameter-shift' with shots")
                total = tape.shots.total_shots
                key = (tc.template.key, "sample", total)
                g = groups.get(key) or groups.setdefault(key, TaskGroup(tc.template, "sample", total))
                row = g.add_row(tc.values)
                plans.append(("sample", tape, tc, g, row, None))
            else:
                ap = convert.analytic_plan(tape, wires)
                if ap.needs_state:
                    self._check_state(tape, gradient, ap)
                tc = self._templates.convert(tape, wires, want_state=ap.needs_state)
                kind = "gradient" if gradient else "estimate"
                key = (tc.template.key, kind, None)
                g = groups.get(key) or groups.setdefault(key, TaskGroup(tc.template, kind, None))
                row = g.add_row(tc.values)
                cols = np.array([g.add_observable(o) for o in ap.observables], dtype=np.int64)
                g.row_cols.append(cols)
                plans.append(("analytic", tape, tc, g, row, (ap, cols)))
        return list(groups.values()), plans

    def _check_state(self, tape, gradient: bool, ap: convert.AnalyticPlan) -> None:
        """qml.state() (and analytic probs on many wires) come from the worker's own state vector: pools
        whose workers return states with their global phase (lightning), templates that keep it (for
        qml.state()), no device derivatives."""
        what = " and ".join(ap.state_for)
        if gradient:
            raise DeviceError(f"qsched.qubit: device derivatives of {what} are not supported; "
                              "use diff_method='parameter-shift'")
        if not self._offers("state_results", convert.STATE_METADATA_KEY):
            raise DeviceError(f"qsched.qubit: {what} is not supported on pool {self.pool!r} (it is read from "
                              "the state vector, which this pool's workers do not return; lightning pools do); "
                              f"use qml.density_matrix(wires) (up to {convert.MAX_DENSITY_WIRES} wires), "
                              f"probs on at most {convert.MAX_PROBS_WIRES} wires (2^k - 1 expectation values), "
                              "expectation values or shots")
        if not ap.needs_phase:
            return
        for op in tape.operations:
            if isinstance(op, convert.MatrixGate):
                raise DeviceError(f"qsched.qubit: qml.state() is not supported with "
                                  f"{op.hyperparameters['source']} (it runs as a matrix that the worker "
                                  "decomposes up to a global phase); use qml.density_matrix(wires)")

    def _run(self, tapes, gradient: bool):
        tapes = list(tapes)
        try:
            groups, plans = self._plan(tapes, gradient)
        except QschedError as e:         # asking the pool about state slots reaches the daemon
            raise as_device_error(e) from e
        if groups:
            try:
                session = self._handle.get()
                tasks = [g.to_task(self._handle, method="adjoint" if gradient else None, seed=self._task_seed(g),
                                   by_row=g.one_per_row() and self._offers("row_observables", ROWS_METADATA_KEY))
                         for g in groups]
                submit_wait = getattr(session, "submit_wait", None)
                if callable(submit_wait):
                    # one request that submits and waits: a small tape pays one round trip, not two
                    results = submit_wait(tasks, self.timeout)
                else:
                    futures = session.submit_many(tasks)
                    waiter = getattr(session, "wait", None)    # one long-poll for all of them
                    if callable(waiter) and len(futures) > 1:
                        results = waiter(futures, self.timeout)
                    else:
                        results = [f.result(timeout=self.timeout) for f in futures]
            except QschedError as e:
                # refusals, task failures, timeouts, an unreachable daemon: PennyLane's DeviceError
                # (and still the qsched error it was), never the Qiskit layer's JobError
                raise as_device_error(e) from e
            for g, r in zip(groups, results):
                g.result = r
        if self.tracker.active:
            self.tracker.update(batches=1, executions=len(tapes), tasks=len(groups))
            self.tracker.record()
        return plans

    def _task_seed(self, group: TaskGroup) -> int | None:
        if self._rng is None or group.kind != "sample":
            return None
        return int(self._rng.integers(0, 2**31 - 1))

    @staticmethod
    def _value(plan):
        kind, tape, tc, g, row, extra = plan
        if kind == "sample":
            reg = g.register("meas")
            samples = convert.unpack_register(reg[row], len(tc.wire_order))
            return convert.read_samples(tape, samples, tc.wire_order)
        ap, cols = extra
        if g.by_row:                      # the row's result holds its own observable alone
            cols = np.zeros_like(cols)
        state = None
        if ap.needs_state:
            # the template drops GlobalPhase ops (no effect on measured values): multiply it back in
            phi = sum(float(qml.math.toarray(qml.math.unwrap(op.data[0]))) for op in tape.operations
                      if isinstance(op, qml.GlobalPhase))
            state = g.state()[row] * np.exp(-1j * phi)
        return convert.read_analytic(ap, g.evs()[row], cols, state)

    @staticmethod
    def _jacobian(plan):
        kind, tape, tc, g, row, extra = plan
        ap, cols = extra
        if g.by_row:
            cols = np.zeros_like(cols)
        return convert.read_jacobian(ap, g.evs()[row], g.jacobian()[row], cols, tape, tc)

    def execute(self, circuits, execution_config=None):
        single = isinstance(circuits, qml.tape.QuantumScript)
        tapes = [circuits] if single else circuits
        with self._lock:
            plans = self._run(tapes, gradient=False)
        results = tuple(self._value(p) for p in plans)
        return results[0] if single else results

    def compute_derivatives(self, circuits, execution_config=None):
        return self.execute_and_compute_derivatives(circuits, execution_config)[1]

    def execute_and_compute_derivatives(self, circuits, execution_config=None):
        single = isinstance(circuits, qml.tape.QuantumScript)
        tapes = [circuits] if single else circuits
        with self._lock:
            plans = self._run(tapes, gradient=True)
        results = tuple(self._value(p) for p in plans)
        jacs = tuple(self._jacobian(p) for p in plans)
        if single:
            return results[0], jacs[0]
        return results, jacs
