"""PennyLane tape <-> qsched task conversions, checked against default.qubit.

Task results here are computed from the template with qiskit.quantum_info.Statevector (the exact
reference, shaped like docs/api.md results), so the conversions are tested without a daemon; the
same paths run against a live daemon in tests/integration/test_sdk_pennylane.py.
"""
from __future__ import annotations

import numpy as np
import pennylane as qml
import pytest
from pennylane.exceptions import DeviceError
from pennylane.wires import Wires
from qiskit.quantum_info import SparsePauliOp, Statevector

from qsched.pennylane import QschedDevice
from qsched.pennylane import convert
from qsched.pennylane.device import TaskGroup


def _state(circuit, row):
    return Statevector(circuit.assign_parameters(row) if circuit.num_parameters else circuit)


def reference_result(group: TaskGroup) -> dict:
    """An exact task result for a TaskGroup (estimate/gradient: evs, jacobian by central differences;
    sample: register 'meas' with bit i = qubit i, as the workers answer)."""
    qc = group.template.circuit
    params = np.array(group.rows, dtype=float).reshape(len(group.rows), group.template.num_params)
    if group.kind == "sample":
        rng = np.random.default_rng(7)
        n = qc.num_qubits
        arrs = []
        for row in params:
            probs = _state(qc, row).probabilities()
            outcomes = rng.choice(len(probs), size=group.shots, p=probs)
            bits = ((outcomes[:, None] >> np.arange(n)) & 1).astype(np.uint8)  # column i = qubit i
            nbytes = (n + 7) // 8
            padded = np.zeros((group.shots, nbytes * 8), dtype=np.uint8)
            padded[:, nbytes * 8 - n:] = bits[:, ::-1]
            arrs.append(np.packbits(padded, axis=1))
        return {"registers": {"meas": {"num_bits": n, "array": np.stack(arrs)}}, "meta": {"device": "ref"}}
    ops = [SparsePauliOp.from_list([(p, c) for p, c in o]) for o in group.task_observables()]

    def evs_at(row):
        sv = _state(qc, row)
        return np.array([sv.expectation_value(o).real for o in ops])

    evs = np.array([evs_at(r) for r in params])
    out = {"evs": evs, "stds": np.zeros_like(evs), "meta": {"device": "ref"}}
    if group.kind == "gradient":
        eps = 1e-6
        jac = np.zeros((len(params), len(ops), params.shape[1]))
        for b, row in enumerate(params):
            for j in range(params.shape[1]):
                d = np.zeros_like(row)
                d[j] = eps
                jac[b, :, j] = (evs_at(row + d) - evs_at(row - d)) / (2 * eps)
        out["jacobian"] = jac
    return out


def run_local(dev: QschedDevice, tapes, gradient=False):
    """The device's own planning and read-back, with reference results instead of a daemon."""
    groups, plans = dev._plan(tapes, gradient)
    for g in groups:
        g.result = reference_result(g)
    values = tuple(dev._value(p) for p in plans)
    if gradient:
        return values, tuple(dev._jacobian(p) for p in plans)
    return values


def preprocess(dev, tape, **cfg):
    config = dev.setup_execution_config(qml.devices.ExecutionConfig(**cfg), tape)
    program = dev.preprocess_transforms(config)
    tapes, fn = program((tape,))
    return tapes, fn


def random_real_state(n, rng):
    a = rng.normal(size=2 ** n)
    return a / np.linalg.norm(a)


# ------------------------------------------------------------------ state preparation
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_real_state_prep_matches_amplitudes(n):
    rng = np.random.default_rng(n)
    dq = qml.device("default.qubit")
    for a in [random_real_state(n, rng), -np.eye(2 ** n)[-1], np.eye(2 ** n)[0]]:
        tape = qml.tape.QuantumScript(convert.real_state_prep_ops(a, list(range(n))), [qml.state()])
        assert np.allclose(dq.execute(tape), a, atol=1e-10)


def test_state_prep_structure_is_data_independent():
    rng = np.random.default_rng(0)
    keys = set()
    for a in [random_real_state(3, rng), np.eye(8)[0], np.abs(random_real_state(3, rng))]:
        ops = convert.decomposer(qml.AmplitudeEmbedding(a, wires=[0, 1, 2]))
        tape = qml.tape.QuantumScript(ops, [qml.expval(qml.Z(0))])
        keys.add(convert.tape_structure(tape, Wires([0, 1, 2]))[0])
    assert len(keys) == 1


def test_state_prep_is_differentiable_and_broadcast():
    x = qml.numpy.array([[0.3, -0.4, 0.5, 0.1], [0.9, 0.1, -0.2, 0.3]], requires_grad=True)

    def f(x):
        ops = convert.real_state_prep_ops(x / qml.math.linalg.norm(x, axis=-1)[:, None], [0, 1])
        tape = qml.tape.QuantumScript(ops, [qml.expval(qml.Z(0) @ qml.X(1))])
        return qml.execute([tape], qml.device("default.qubit"), diff_method="backprop")[0]

    def ref(x):
        @qml.qnode(qml.device("default.qubit"))
        def c(x):
            qml.AmplitudeEmbedding(x, wires=[0, 1], normalize=True)
            return qml.expval(qml.Z(0) @ qml.X(1))
        return c(x)

    assert np.allclose(f(x), ref(x))
    g1 = qml.jacobian(lambda x: qml.math.sum(f(x)))(x)
    g2 = qml.jacobian(lambda x: qml.math.sum(ref(x)))(x)
    assert np.allclose(g1, g2, atol=1e-8)


# ------------------------------------------------------------------ templates
ALL_GATES_OPS = [
    qml.Hadamard(0), qml.PauliX(1), qml.PauliY(2), qml.PauliZ(0), qml.S(1), qml.T(2), qml.SX(0),
    qml.adjoint(qml.S(1)), qml.adjoint(qml.T(2)), qml.adjoint(qml.SX(0)),
    qml.CNOT([0, 1]), qml.CZ([1, 2]), qml.CY([2, 0]), qml.SWAP([0, 2]), qml.Toffoli([0, 1, 2]),
    qml.CSWAP([1, 0, 2]), qml.RX(0.1, 0), qml.RY(0.2, 1), qml.RZ(0.3, 2), qml.PhaseShift(0.4, 0),
    qml.U1(0.5, 1), qml.U3(0.6, 0.7, 0.8, 2), qml.IsingXX(0.9, [0, 1]), qml.IsingYY(1.0, [1, 2]),
    qml.IsingZZ(1.1, [2, 0]), qml.CRX(1.2, [0, 1]), qml.CRY(1.3, [1, 2]), qml.CRZ(1.4, [2, 0]),
    qml.ControlledPhaseShift(1.5, [0, 2]), qml.GlobalPhase(0.3), qml.Identity(1),
]


def _qiskit_state_in_pl_order(circuit, values):
    sv = _state(circuit, values).data
    n = circuit.num_qubits
    # Qiskit indexes amplitudes little-endian (qubit 0 = least significant), PennyLane big-endian
    return sv.reshape([2] * n).transpose(list(range(n))[::-1]).reshape(-1)


def test_every_mapped_gate_matches_pennylane():
    rng = np.random.default_rng(3)
    prep = convert.real_state_prep_ops(random_real_state(3, rng), [0, 1, 2])   # a generic input state
    for op in ALL_GATES_OPS:
        tape = qml.tape.QuantumScript(prep + [op], [qml.state()])
        tc = convert.TemplateCache().convert(tape, Wires([0, 1, 2]))
        want = qml.device("default.qubit", wires=3).execute(tape)
        got = _qiskit_state_in_pl_order(tc.template.circuit, tc.values)
        phase = np.vdot(got, want)
        assert abs(abs(phase) - 1) < 1e-9, op.name
        if op.name != "GlobalPhase":
            assert np.allclose(got * phase, want, atol=1e-9), op.name


def test_template_cache_reuses_structure_and_maps_columns():
    cache = convert.TemplateCache()
    w = Wires(["a", "b"])
    t1 = qml.tape.QuantumScript([qml.RX(0.1, "a"), qml.GlobalPhase(0.2), qml.CNOT(["a", "b"]),
                                 qml.U3(1, 2, 3, "b")], [qml.expval(qml.Z("b"))])
    t2 = qml.tape.QuantumScript([qml.RX(0.5, "a"), qml.GlobalPhase(0.7), qml.CNOT(["a", "b"]),
                                 qml.U3(4, 5, 6, "b")], [qml.expval(qml.X("a"))])
    c1, c2 = cache.convert(t1, w), cache.convert(t2, w)
    assert c1.template is c2.template and len(cache) == 1
    assert list(c1.columns) == [0, -1, 1, 2, 3]
    assert np.allclose(c2.values, [0.5, 4, 5, 6])
    assert [p.name for p in c1.template.circuit.parameters] == [f"θ[{i}]" for i in range(4)]
    t3 = qml.tape.QuantumScript([qml.RY(0.1, "a")], [])
    assert cache.convert(t3, w).template is not c1.template


def test_unknown_wire_and_gate_raise():
    with pytest.raises(qml.exceptions.DeviceError):
        convert.tape_structure(qml.tape.QuantumScript([qml.RX(0.1, 5)]), Wires([0]))
    with pytest.raises(qml.exceptions.DeviceError):
        convert.tape_structure(qml.tape.QuantumScript([qml.QFT(wires=[0, 1])]), Wires([0, 1]))


# ------------------------------------------------------------------ measurements, values and jacobians
def _circuit_ops(x):
    return [qml.RX(x[0], 0), qml.RY(x[1], 1), qml.CNOT([0, 1]), qml.CRZ(x[2], [1, 2]),
            qml.Rot(x[3], x[4], x[5], wires=2), qml.IsingXX(x[0] * 0.5, [0, 2])]


MEASUREMENTS = [
    lambda: [qml.expval(qml.Z(0))],
    lambda: [qml.expval(qml.Z(0) @ qml.X(2) + 0.3 * qml.Y(1)), qml.var(qml.X(1)), qml.probs(wires=[2, 0])],
    lambda: [qml.probs(wires=[0, 1, 2])],
    lambda: [qml.var(qml.X(0) + qml.Z(1)), qml.expval(qml.Hermitian(np.array([[1, 1j], [-1j, 2]]), wires=1))],
    lambda: [qml.expval(qml.Projector([1, 0], wires=[0, 2]))],
]


@pytest.mark.parametrize("mi", range(len(MEASUREMENTS)))
def test_analytic_values_match_default_qubit(mi):
    x = np.array([0.3, -1.1, 0.7, 0.2, 1.4, -0.6])
    tape = qml.tape.QuantumScript(_circuit_ops(x), MEASUREMENTS[mi]())
    dev = QschedDevice(wires=3)
    tapes, fn = preprocess(dev, tape)
    got = fn(run_local(dev, tapes))[0]
    want = qml.device("default.qubit").execute(tape)
    if len(tape.measurements) == 1:
        got, want = (got,), (want,)
    for g, w in zip(got, want):
        assert np.allclose(g, w, atol=1e-10)


class LocalQsched(QschedDevice):
    """The real device class with its transport replaced by exact reference results, so PennyLane's
    whole workflow (preprocess, ML boundary, device jacobians) runs without a daemon."""

    def _run(self, tapes, gradient):
        groups, plans = self._plan(list(tapes), gradient)
        for g in groups:
            g.result = reference_result(g)
        return plans


def _flat(res):
    res = res if isinstance(res, tuple) else (res,)
    return qml.math.hstack([qml.math.reshape(r, (-1,)) for r in res])


@pytest.mark.parametrize("mi", range(len(MEASUREMENTS)))
def test_device_jacobian_matches_default_qubit(mi):
    x = qml.numpy.array([0.3, -1.1, 0.7, 0.2, 1.4, -0.6], requires_grad=True)

    def qfunc(x):
        for op in _circuit_ops(x):
            qml.apply(op)
        m = MEASUREMENTS[mi]()
        return tuple(m) if len(m) > 1 else m[0]

    ours = qml.QNode(qfunc, LocalQsched(wires=3), diff_method="adjoint")
    ref = qml.QNode(qfunc, qml.device("default.qubit"), diff_method="backprop")
    got = qml.jacobian(lambda x: _flat(ours(x)))(x)
    want = qml.jacobian(lambda x: _flat(ref(x)))(x)
    assert np.allclose(got, want, atol=1e-6)
    assert np.allclose(_flat(ours(x)), _flat(ref(x)), atol=1e-10)


def test_single_param_and_many_params_layouts():
    dev = QschedDevice(wires=1)
    t1 = qml.tape.QuantumScript([qml.RX(0.4, 0)], [qml.expval(qml.Z(0))])
    t1.trainable_params = [0]
    _, (j1,) = run_local(dev, [t1], gradient=True)
    assert np.ndim(j1) == 0 and np.isclose(j1, -np.sin(0.4), atol=1e-8)
    t2 = qml.tape.QuantumScript([qml.RX(0.4, 0), qml.RY(0.2, 0)], [qml.expval(qml.Z(0)), qml.probs(0)])
    t2.trainable_params = [1]
    _, (j2,) = run_local(dev, [t2], gradient=True)
    assert isinstance(j2, tuple) and len(j2) == 2 and np.shape(j2[1]) == (2,)


def test_tapes_of_one_structure_share_one_task():
    dev = QschedDevice(wires=2)
    tapes = [qml.tape.QuantumScript([qml.RX(a, 0), qml.CNOT([0, 1])], [qml.expval(qml.Z(1))])
             for a in np.linspace(0, 1, 5)]
    tapes.append(qml.tape.QuantumScript([qml.RX(0.3, 0), qml.CNOT([0, 1])], [qml.expval(qml.X(0))]))
    groups, plans = dev._plan(tapes, False)
    assert len(groups) == 1 and len(groups[0].rows) == 6 and len(groups[0].observables) == 2
    vals = run_local(dev, tapes)
    assert np.allclose(vals[:5], np.cos(np.linspace(0, 1, 5)))


def test_tapes_of_their_own_hamiltonians_measure_the_shared_strings_once():
    """A batch of tapes, each its own Hamiltonian over the same terms: the task measures the 3
    strings (rows x 3 values), not the 8 Hamiltonians at every row (rows x 8, quadratic in the batch)."""
    dev = QschedDevice(wires=2)
    rng = np.random.default_rng(3)
    terms = [qml.Z(0), qml.Z(0) @ qml.Z(1), qml.X(1)]
    tapes = [qml.tape.QuantumScript([qml.RX(a, 0), qml.RY(b, 1), qml.CNOT([0, 1])],
                                    [qml.expval(qml.Hamiltonian(list(rng.uniform(-1, 1, 3)), terms))],
                                    trainable_params=[0, 1])
             for a, b in rng.uniform(-np.pi, np.pi, (8, 2))]
    groups, _ = dev._plan(tapes, False)
    assert len(groups) == 1 and len(groups[0].observables) == 8
    assert sorted(p for [[p, c]] in groups[0].task_observables()) == ["IZ", "XI", "ZZ"]
    want = qml.device("default.qubit").execute(tapes)
    assert np.allclose(run_local(dev, tapes), want, atol=1e-10)
    assert len(dev._plan(tapes, True)[0][0].task_observables()) == 3     # derivatives too
    got_v, got_j = run_local(dev, tapes, gradient=True)
    want_v, want_j = qml.device("default.qubit").execute_and_compute_derivatives(
        tapes, qml.devices.ExecutionConfig(gradient_method="adjoint"))
    assert np.allclose(got_v, want_v, atol=1e-10) and np.allclose(got_j, want_j, atol=1e-6)


def test_parameter_shift_batch_is_one_task():
    dev = QschedDevice(wires=2)
    x = qml.numpy.array([0.1, 0.2, 0.3], requires_grad=True)
    tape = qml.tape.QuantumScript([qml.RX(x[0], 0), qml.RY(x[1], 1), qml.CNOT([0, 1]), qml.RZ(x[2], 1)],
                                  [qml.expval(qml.Z(1) @ qml.Z(0))])
    tapes, fn = qml.gradients.param_shift(tape)
    groups, _ = dev._plan(tapes, False)
    assert len(groups) == 1 and len(groups[0].rows) == len(tapes)
    got = fn(run_local(dev, tapes))
    want = fn(qml.device("default.qubit").execute(tapes))
    assert np.allclose(got, want, atol=1e-10)


# ------------------------------------------------------------------ finite shots
def test_shots_path_diagonalizes_and_reads_samples():
    x = np.array([0.3, -1.1, 0.7, 0.2, 1.4, -0.6])
    meas = [qml.expval(qml.X(0) @ qml.Z(1)), qml.expval(qml.Y(2)), qml.probs(wires=[0, 1]),
            qml.var(qml.Z(2)), qml.counts(wires=[0])]
    tape = qml.tape.QuantumScript(_circuit_ops(x), meas, shots=20000)
    dev = QschedDevice(wires=3)
    tapes, fn = preprocess(dev, tape)
    assert all(t.shots for t in tapes)
    got = fn(run_local(dev, tapes))[0]
    exact = qml.device("default.qubit").execute(qml.tape.QuantumScript(_circuit_ops(x), meas[:4]))
    for g, w in zip(got[:4], exact):
        assert np.allclose(g, w, atol=0.03)
    assert sum(got[4].values()) == 20000


def test_shot_vector_and_samples():
    tape = qml.tape.QuantumScript([qml.PauliX(1)], [qml.sample(wires=[0, 1]), qml.expval(qml.Z(1))],
                                  shots=(5, 7))
    dev = QschedDevice(wires=2)
    tapes, fn = preprocess(dev, tape)
    res = fn(run_local(dev, tapes))[0]
    assert len(res) == 2
    s5, e5 = res[0]
    assert np.shape(s5) == (5, 2) and np.all(np.asarray(s5) == [0, 1]) and e5 == -1
    assert np.shape(res[1][0]) == (7, 2)


def test_unpack_register_bit_order():
    # one shot, 10 bits: bit i set for i in {0, 3, 9}; BitArray layout is big-endian bytes
    value = (1 << 0) | (1 << 3) | (1 << 9)
    arr = np.frombuffer(value.to_bytes(2, "big"), dtype=np.uint8).reshape(1, 2)
    bits = convert.unpack_register(arr, 10)
    assert list(np.nonzero(bits[0])[0]) == [0, 3, 9]


# ------------------------------------------------------------------ device structure
def test_device_is_registered_and_configures_derivatives():
    dev = qml.device("qsched.qubit", wires=2, pool="lightning")
    assert isinstance(dev, QschedDevice) and dev.pool == "lightning"
    cfg = dev.setup_execution_config(qml.devices.ExecutionConfig(gradient_method="adjoint"))
    assert cfg.use_device_gradient and cfg.grad_on_execution and not cfg.use_device_jacobian_product
    assert dev.supports_derivatives(cfg, qml.tape.QuantumScript([qml.RX(0.1, 0)], [qml.expval(qml.Z(0))]))
    assert not dev.supports_derivatives(cfg, qml.tape.QuantumScript([qml.RX(0.1, 0)], [qml.expval(qml.Z(0))],
                                                                     shots=10))
    ps = dev.setup_execution_config(qml.devices.ExecutionConfig(gradient_method="parameter-shift"))
    assert not ps.use_device_gradient


def test_broadcast_amplitude_embedding_becomes_rows_of_one_template():
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(4, 8))
    dev = QschedDevice(wires=3, state_slots=False)     # the RY tree (what pools without state slots get)
    ops = [qml.AmplitudeEmbedding(feats, wires=[0, 1, 2], normalize=True), qml.RY(0.3, 1), qml.CNOT([1, 2])]
    tape = qml.tape.QuantumScript(ops, [qml.expval(qml.Z(2)), qml.probs(wires=[0])])
    tapes, fn = preprocess(dev, tape, gradient_method="adjoint")
    assert len(tapes) == 4
    groups, _ = dev._plan(tapes, True)
    assert len(groups) == 1 and len(groups[0].rows) == 4
    got = fn(run_local(dev, tapes))[0]
    want = qml.device("default.qubit").execute(tape)
    for g, w in zip(got, want):
        assert np.allclose(g, w, atol=1e-10)


# --------------------------------------------------------------------------- issue 8 item 5 helpers
def test_density_from_paulis_equals_the_reduced_density_matrix():
    rng = np.random.default_rng(7)
    for k in (1, 2, 3):
        psi = rng.normal(size=2 ** k) + 1j * rng.normal(size=2 ** k)
        psi /= np.linalg.norm(psi)
        rho = np.outer(psi, psi.conj())
        evs = []
        for s in range(1, 4 ** k):
            word = [("I", "X", "Y", "Z")[(s >> (2 * (k - 1 - p))) & 3] for p in range(k)]
            op = qml.prod(*[getattr(qml, w)(p) if w != "I" else qml.Identity(p) for p, w in enumerate(word)])
            evs.append(np.real(np.trace(rho @ qml.matrix(op, wire_order=range(k)))))
        assert np.allclose(convert.density_from_paulis(np.array(evs), k), rho, atol=1e-12)


def test_operation_without_decomposition_is_a_unitary_template():
    op = qml.DoubleExcitationPlus(0.7, wires=[0, 1, 2, 3])
    (mg,) = convert.decomposer(op)
    assert isinstance(mg, convert.MatrixGate) and mg.hyperparameters["source"] == "DoubleExcitationPlus"
    tape = qml.tape.QuantumScript([qml.RX(0.2, 1), mg], [qml.expval(qml.Z(0))])
    tc = convert.TemplateCache().convert(tape, qml.wires.Wires(range(4)))
    assert [g.operation.name for g in tc.template.circuit.data] == ["rx", "unitary"]
    assert list(tc.columns) == [0, convert.MATRIX_COLUMN]
    from qiskit.quantum_info import Operator
    got = Operator(tc.template.circuit.assign_parameters(tc.values)).data
    want = qml.matrix(qml.tape.QuantumScript([qml.RX(0.2, 1), op]), wire_order=range(4))
    # Qiskit orders qubit 0 as the least significant bit: reverse PennyLane's wire order
    perm = qml.matrix(qml.tape.QuantumScript([qml.SWAP([0, 3]), qml.SWAP([1, 2])]), wire_order=range(4))
    assert np.allclose(perm @ got @ perm, want, atol=1e-12)


def test_state_is_read_from_the_worker_and_density_matrix_planned():
    wires = qml.wires.Wires(range(3))
    plan = convert.analytic_plan(qml.tape.QuantumScript([], [qml.state()]), wires)
    assert plan.needs_state and not plan.observables
    plan = convert.analytic_plan(qml.tape.QuantumScript([], [qml.density_matrix([2, 0])]), wires)
    assert len(plan.observables) == 15 and not plan.needs_state
    tpl = convert.TemplateCache().convert(qml.tape.QuantumScript([qml.RX(0.1, 0)], [qml.state()]), wires,
                                          want_state=True).template
    assert tpl.circuit.metadata == {convert.STATE_METADATA_KEY: True} and tpl.key[-1] == "state"


def test_state_is_refused_where_the_pool_cannot_return_it():
    dev = QschedDevice(wires=2, state_slots=False)
    dev._features["state_results"] = False            # as for a pool of aer workers
    tape = qml.tape.QuantumScript([qml.RX(0.1, 0)], [qml.state()])
    with pytest.raises(DeviceError, match=r"qml.state\(\) is not supported on pool"):
        dev._plan([tape], False)
    dev._features["state_results"] = True
    tape = qml.tape.QuantumScript([convert.MatrixGate(np.eye(2), wires=[0], source="BlockEncode")], [qml.state()])
    with pytest.raises(DeviceError, match="not supported with BlockEncode"):
        dev._plan([tape], False)


# --------------------------------------------------------------------------- input states as data
def _lightning_worker():
    from qsched.devices import load_device
    from qsched.models import DeviceLimits, DeviceSpec
    return load_device(DeviceSpec(name="l", type="lightning", pool="l", limits=DeviceLimits(max_qubits=6)))


def _slot_tapes(batch=4, seed=5):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 8)) - 0.3
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = [0.3, -0.4, 0.9]

    def ops(state):
        return [convert.StateSlot(state, wires=[1, 2, 0]), qml.RY(w[0], 0), qml.CNOT([0, 3]),
                qml.RX(w[1], 3), qml.CRZ(w[2], [1, 3])]

    def ref_ops(state):
        return [qml.StatePrep(state, wires=[1, 2, 0])] + ops(state)[1:]
    mps = [qml.expval(qml.Z(3)), qml.expval(qml.X(0) @ qml.Z(2))]
    return ([qml.tape.QuantumScript(ops(s), mps) for s in x], [qml.tape.QuantumScript(ref_ops(s), mps) for s in x])


def test_state_slot_template_runs_on_the_lightning_worker():
    """A StateSlot becomes one `qsched_state` instruction whose parameters (after the angles) are the
    amplitudes; all inputs share one template; the worker prepares the state: values and angle
    derivatives equal lightning.qubit's with StatePrep."""
    from qsched.devices import TaskPayload
    tapes, refs = _slot_tapes()
    wires = Wires(range(4))
    cache = convert.TemplateCache()
    tcs = [cache.convert(t, wires) for t in tapes]
    assert len(cache) == 1
    qc = tcs[0].template.circuit
    assert qc.data[0].operation.name == convert.STATE_SLOT and len(qc.data) == 5
    assert [p.name for p in qc.parameters][:3] == ["θ[0]", "θ[1]", "θ[2]"] and qc.num_parameters == 3 + 8
    assert list(tcs[0].columns) == [convert.STATE_COLUMN, 0, 1, 2]
    params = np.array([tc.values for tc in tcs])
    obs = [convert.sentence_to_wire(convert.pauli_rep(mp.obs), {w: i for i, w in enumerate(wires)}, 4)
           for mp in tapes[0].measurements]
    out = _lightning_worker().run([TaskPayload("g", "gradient", "h", qc, params, None, obs, "adjoint")])[0]
    assert not isinstance(out, Exception), out
    ref = qml.device("lightning.qubit", wires=4)
    for b, r in enumerate(refs):
        r.trainable_params = [1, 2, 3]
        val, jac = ref.execute_and_compute_derivatives(r, qml.devices.ExecutionConfig(gradient_method="adjoint"))
        assert np.allclose(out["evs"][b], np.asarray(val).ravel(), atol=1e-10)
        assert np.allclose(out["jacobian"][b][:, :3], np.asarray(jac).reshape(2, 3), atol=1e-10)
        assert np.allclose(out["jacobian"][b][:, 3:], 0)                  # no gradient w.r.t. the input


def test_state_slot_is_not_differentiated():
    tapes, _ = _slot_tapes(batch=1)
    tc = convert.TemplateCache().convert(tapes[0], Wires(range(4)))
    plan = convert.analytic_plan(tapes[0], Wires(range(4)))
    t = tapes[0].copy()
    t.trainable_params = [0, 1]
    with pytest.raises(DeviceError, match="input state"):
        convert.read_jacobian(plan, np.zeros(2), np.zeros((2, 11)), np.arange(2), t, tc)


def test_split_state_slot_refuses_a_misplaced_slot():
    from qiskit import QuantumCircuit
    from qiskit.circuit import Gate, ParameterVector

    from qsched.devices import TaskError
    from qsched.devices.lightning import split_state_slot
    psi = ParameterVector("ψ", 4)
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.append(Gate(convert.STATE_SLOT, 2, list(psi)), [0, 1])
    with pytest.raises(TaskError, match="first instruction"):
        split_state_slot(qc)


def test_state_slot_falls_back_to_the_tree_for_other_pools():
    """A pool without state slots: the same tapes as the RY tree, with the jacobian layout kept."""
    tapes, refs = _slot_tapes(batch=3)
    dev = QschedDevice(wires=4, state_slots=False)
    for t in tapes:
        t.trainable_params = [1, 3]
    (vals, jacs) = run_local(dev, tapes, gradient=True)
    ref = qml.device("default.qubit", wires=4)
    for v, j, r in zip(vals, jacs, refs):
        r.trainable_params = [1, 3]
        rv, rj = ref.execute_and_compute_derivatives(r, qml.devices.ExecutionConfig(gradient_method="adjoint"))
        assert np.allclose(np.ravel(v), np.ravel(rv), atol=1e-10)
        assert np.allclose(np.ravel(j), np.ravel(rj), atol=1e-10)
