"""Differential test through a live daemon: the answers users get from qsched equal the ones their own
simulator gives, on every pool.

- PennyLane: every operation lightning.qubit declares (plus the ones qsched converts natively) and
  every observable it declares, through `qsched.qubit` on pools aer and lightning, against
  default.qubit in process: values, and jacobians by every diff method the device offers (adjoint /
  device on the server, parameter-shift and finite-diff by PennyLane), exactly without shots and
  within 5 sigma with shots. Operations without a decomposition travel as their matrix; what the
  device cannot do (device derivatives of such a matrix's parameter) is refused before anything is
  sent, with a DeviceError naming it.
- Qiskit: every standard gate through EstimatorV2 / SamplerV2 / gradient tasks on both pools against
  Statevector; estimator circuits with final measurements get aer's (the aer pool's reference)
  answer on every pool, mid-circuit measurements are refused at run().

Every check batches all operations into one `qml.execute` / `run()` call, so each is a handful of
daemon round trips. The in-process half (devices without a daemon) is tests/unit/
test_differential_devices.py.
"""
from __future__ import annotations

import warnings

import numpy as np
import pennylane as qml
import pytest
from pennylane.exceptions import DeviceError
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.primitives import StatevectorEstimator
from qiskit.quantum_info import SparsePauliOp, Statevector
from scipy.stats import unitary_group

from qsched.errors import BadRequest
from qsched.qiskit import EstimatorV2, SamplerV2

POOLS = ["aer", "lightning"]
WIRES = 4
SHOTS = 10_000

# ------------------------------------------------------------------------------------ PennyLane
_U4 = unitary_group.rvs(4, random_state=1)
_U2 = unitary_group.rvs(2, random_state=3)
# ops whose constructor is not (params..., wires=range(num_wires)); value: (factory, trainable count)
_SPECIAL = {
    "BlockEncode": (lambda p: qml.BlockEncode(np.array([[0.2, 0.1], [0.3, -0.4]]), wires=[0, 1]), 0),
    "DiagonalQubitUnitary": (lambda p: qml.DiagonalQubitUnitary(
        np.exp(1j * np.array([0.1, 0.7, -0.4, 1.2])), wires=[0, 1]), 0),
    "GlobalPhase": (lambda p: qml.GlobalPhase(p[0], wires=[0]), 1),
    "Identity": (lambda p: qml.Identity(0), 0),
    "MultiControlledX": (lambda p: qml.MultiControlledX(wires=[0, 1, 2]), 0),
    "MultiRZ": (lambda p: qml.MultiRZ(p[0], wires=[0, 1, 2]), 1),
    "PCPhase": (lambda p: qml.PCPhase(p[0], dim=3, wires=[0, 1]), 1),
    "PauliRot": (lambda p: qml.PauliRot(p[0], "XYZ", wires=[0, 1, 2]), 1),
    "QubitUnitary": (lambda p: qml.QubitUnitary(_U4, wires=[0, 1]), 0),
    "ControlledQubitUnitary": (lambda p: qml.ControlledQubitUnitary(_U2, wires=[0, 1]), 0),
    "Adjoint(S)": (lambda p: qml.adjoint(qml.S(0)), 0),
    "Adjoint(T)": (lambda p: qml.adjoint(qml.T(0)), 0),
    "Adjoint(SX)": (lambda p: qml.adjoint(qml.SX(0)), 0),
}
# matrix-only operations without a decomposition: sent as their matrix; their parameters cannot be
# differentiated by device derivatives (refused by name), parameter shift works
MATRIX_OPS = {"BlockEncode", "DoubleExcitationMinus", "DoubleExcitationPlus"}


def _op_names():
    declared = set(qml.device("lightning.qubit", wires=WIRES).capabilities.operations)
    from qsched.pennylane import convert
    return sorted(declared | set(convert.GATES) | {"U2", "CH", "CCZ", "ControlledQubitUnitary"})


OP_NAMES = _op_names()


def _factory(name):
    if name in _SPECIAL:
        return _SPECIAL[name]
    cls = getattr(qml, name)
    return (lambda p: cls(*p, wires=range(cls.num_wires))), cls.num_params


def _prep():
    rng = np.random.default_rng(7)
    ops = []
    for w in range(WIRES):
        ops += [qml.RY(rng.uniform(0.3, 2.8), w), qml.RZ(rng.uniform(0.3, 2.8), w)]
    ops += [qml.CNOT([w, w + 1]) for w in range(WIRES - 1)]
    return ops


def _mix():
    return [qml.RX(0.4 + 0.3 * w, w) for w in range(WIRES)]


def _gate_measurements():
    return [qml.expval(qml.Z(0)), qml.expval(qml.X(1) @ qml.Y(2)), qml.expval(qml.Z(2) + 0.5 * qml.X(3)),
            qml.var(qml.Y(0)), qml.probs(wires=[0, 1])]


def _norms(mps):
    """An upper bound of each measurement's per-shot standard deviation (for the 5 sigma bounds)."""
    out = []
    for mp in mps:
        if isinstance(mp, qml.measurements.ProbabilityMP):
            out.append(np.full(1 << len(mp.wires), 0.5))
            continue
        norm = float(np.max(np.abs(np.linalg.eigvalsh(qml.matrix(mp.obs)))))
        out.append(np.array([2 * norm ** 2 if isinstance(mp, qml.measurements.VarianceMP) else norm]))
    return np.concatenate(out)


def _gate_tapes(names, x, shots=None):
    """One tape per operation; x holds all trainable parameters, consumed in order."""
    tapes, k = [], 0
    for name in names:
        make, npar = _factory(name)
        op = make([x[k + j] for j in range(npar)])
        k += npar
        tapes.append(qml.tape.QuantumScript(_prep() + [op] + _mix(), _gate_measurements(), shots=shots))
    return tapes


def _num_params(names):
    return sum(_factory(n)[1] for n in names)


def _flat(results):
    return qml.math.hstack([qml.math.reshape(v, (-1,)) for r in results
                            for v in ((r,) if hasattr(r, "shape") else r)])  # autograd boxes tuples


def _run(device, tapes_fn, diff_method, x0, jac=True):
    """Values (and the jacobian) of every tape, in one qml.execute per evaluation."""
    def f(x):
        return _flat(qml.execute(tapes_fn(x), device, diff_method=diff_method))
    x = qml.numpy.array(x0, requires_grad=True)
    value = np.asarray(f(x))
    return value, (np.asarray(qml.jacobian(f)(x)) if jac else None)


@pytest.fixture(scope="module")
def diff_client(qsched_daemon):
    c = qsched_daemon.client()
    yield c
    c.close()


@pytest.fixture(scope="module", params=POOLS)
def pl_device(request, diff_client):
    dev = qml.device("qsched.qubit", wires=WIRES, client=diff_client, pool=request.param)
    yield dev
    dev.close()


@pytest.fixture(scope="module")
def reference():
    return qml.device("default.qubit", wires=WIRES)


SUPPORTED_OPS = list(OP_NAMES)
# jacobians over the tapes with trainable parameters: PennyLane's own vjp cannot take a tape of
# several differently shaped measurements and no trainable parameter (lightning.qubit fails too),
# and its param_shift fails (UnboundLocalError, 0.45) on a tape whose every parameter has a zero
# gradient: GlobalPhase alone (its value is checked)
TRAINABLE_OPS = [n for n in SUPPORTED_OPS if _factory(n)[1] and n != "GlobalPhase" and n not in MATRIX_OPS]
X0 = np.random.default_rng(3).uniform(-np.pi, np.pi, _num_params(SUPPORTED_OPS))
TX0 = X0[:_num_params(TRAINABLE_OPS)]


@pytest.fixture(scope="module")
def gate_reference(reference):
    return _run(reference, lambda x: _gate_tapes(TRAINABLE_OPS, x), "backprop", TX0)


def test_every_operation_value(pl_device, reference):
    want, _ = _run(reference, lambda x: _gate_tapes(SUPPORTED_OPS, x), None, X0, jac=False)
    got, _ = _run(pl_device, lambda x: _gate_tapes(SUPPORTED_OPS, x), None, X0, jac=False)
    bad = _report(SUPPORTED_OPS, lambda x: _gate_tapes(SUPPORTED_OPS, x), got, want, 1e-9)
    assert not bad, f"{pl_device.pool}: values differ for {bad}"


def _report(names, tapes_fn, got, want, tol):
    """Which operation's tape differs (results are concatenated in tape order)."""
    sizes = [len(_flat([r])) for r in qml.execute(tapes_fn(X0), qml.device("default.qubit", wires=WIRES))]
    sizes = sizes[:len(names)]
    bad, start = [], 0
    for name, size in zip(names, sizes):
        sl = slice(start, start + size)
        if not np.all(np.abs(got[sl] - want[sl]) <= (tol[sl] if np.ndim(tol) else tol)):
            bad.append(name)
        start += size
    return bad


@pytest.mark.parametrize("diff_method", ["adjoint", "device", "parameter-shift", "finite-diff"])
def test_every_operation_value_and_jacobian(pl_device, gate_reference, diff_method):
    want_v, want_j = gate_reference
    got_v, got_j = _run(pl_device, lambda x: _gate_tapes(TRAINABLE_OPS, x), diff_method, TX0)
    bad = _report(TRAINABLE_OPS, lambda x: _gate_tapes(TRAINABLE_OPS, x), got_v, want_v, 1e-9)
    assert not bad, f"{pl_device.pool}: values differ for {bad}"
    tol = 1e-5 if diff_method == "finite-diff" else 1e-7
    rows = np.abs(got_j - want_j).max(axis=1)
    bad = _report(TRAINABLE_OPS, lambda x: _gate_tapes(TRAINABLE_OPS, x), rows, 0 * rows, tol)
    assert not bad, f"{pl_device.pool} {diff_method}: jacobians differ for {bad}, max {rows.max():.2g}"


def test_every_operation_with_shots(pl_device, gate_reference):
    """Values and parameter-shift jacobians from samples, within 5 sigma (bounds from each
    observable's norm; a gradient adds at most 3 shift terms of weight <= 1 here)."""
    want_v, want_j = gate_reference
    tapes_fn = lambda x: _gate_tapes(TRAINABLE_OPS, x, shots=SHOTS)  # noqa: E731
    got_v, got_j = _run(pl_device, tapes_fn, "parameter-shift", TX0)
    sigma = np.concatenate([_norms(_gate_measurements())] * len(TRAINABLE_OPS)) / np.sqrt(SHOTS)
    bad = _report(TRAINABLE_OPS, tapes_fn, got_v, want_v, 5 * sigma)
    assert not bad, f"{pl_device.pool}: sampled values differ for {bad}"
    err = np.abs(got_j - want_j) - 5 * 3 * sigma[:, None]
    bad = _report(TRAINABLE_OPS, tapes_fn, np.maximum(err.max(axis=1), 0), 0 * sigma, 0.0)
    assert not bad, f"{pl_device.pool}: sampled jacobians differ for {bad}"


TRAINABLE_MATRIX_OPS = sorted(n for n in MATRIX_OPS if _factory(n)[1])


@pytest.mark.parametrize("name", TRAINABLE_MATRIX_OPS)
def test_matrix_operations_parameters(pl_device, reference, name):
    """Values are in test_every_operation_value; here: device derivatives refuse the matrix's
    parameter by name, parameter shift differentiates it exactly."""
    x0 = np.array([0.3, -0.7][:_factory(name)[1]])
    tapes_fn = lambda x: _gate_tapes([name], x)  # noqa: E731
    with pytest.raises(DeviceError, match=f"{name} has no decomposition and runs as a matrix"):
        _run(pl_device, tapes_fn, "adjoint", x0)
    got_v, got_j = _run(pl_device, tapes_fn, "parameter-shift", x0)
    want_v, want_j = _run(reference, tapes_fn, "backprop", x0)
    assert np.allclose(got_v, want_v, atol=1e-9) and np.allclose(got_j, want_j, atol=1e-7)


# every qubit state preparation and embedding PennyLane ships, then qml.state(): the state vector
# itself, global phase included (a BasisState once came back times (-i)^(number of 1 bits))
_RNG = np.random.default_rng(5)
_REAL16 = _RNG.normal(size=16)
_REAL16 /= np.linalg.norm(_REAL16)
_CPLX16 = _RNG.normal(size=16) + 1j * _RNG.normal(size=16)
_CPLX16 /= np.linalg.norm(_CPLX16)
_CPLX4 = _CPLX16[:4] / np.linalg.norm(_CPLX16[:4])
_U16 = unitary_group.rvs(16, random_state=4)
_ASP_W = _RNG.uniform(-2, 2, 2 ** (WIRES + 1) - 2)
_QAOA_W = _RNG.uniform(-1, 1, (2, 8))
_STATE_PREPS = {
    "BasisState": lambda: [qml.BasisState(np.array([1, 0, 1, 1]), wires=range(WIRES))],
    "BasisState(one)": lambda: [qml.BasisState(np.array([1]), wires=[2])],
    "BasisState(some wires)": lambda: [qml.BasisState(np.array([1, 1]), wires=[3, 0])],
    "BasisEmbedding": lambda: [qml.BasisEmbedding(13, wires=range(WIRES))],
    "BasisEmbedding(some wires)": lambda: [qml.BasisEmbedding(1, wires=[1, 2])],
    "StatePrep(real)": lambda: [qml.StatePrep(_REAL16, wires=range(WIRES))],
    "StatePrep(complex)": lambda: [qml.StatePrep(_CPLX16, wires=range(WIRES))],
    "StatePrep(complex, some wires)": lambda: [qml.StatePrep(_CPLX4, wires=[3, 1])],
    "StatePrep(pad, normalize)": lambda: [qml.StatePrep(np.arange(1.0, 12.0), wires=range(WIRES),
                                                        pad_with=0.5, normalize=True)],
    "AmplitudeEmbedding(real)": lambda: [qml.AmplitudeEmbedding(_REAL16, wires=range(WIRES))],
    "AmplitudeEmbedding(complex)": lambda: [qml.AmplitudeEmbedding(_CPLX16, wires=[2, 0, 3, 1])],
    "AmplitudeEmbedding(pad, some wires)": lambda: [
        qml.AmplitudeEmbedding(np.array([1.0, -2.0, 3.0]), wires=[1, 3], pad_with=0.0, normalize=True)],
    "MottonenStatePreparation(real)": lambda: [qml.MottonenStatePreparation(_REAL16, wires=range(WIRES))],
    "MottonenStatePreparation(complex)": lambda: [qml.MottonenStatePreparation(_CPLX16, wires=range(WIRES))],
    "MultiplexerStatePreparation": lambda: [qml.MultiplexerStatePreparation(_CPLX4, wires=[0, 2])],
    "QubitUnitary": lambda: [qml.QubitUnitary(_U16, wires=range(WIRES))],
    "QubitUnitary(some wires)": lambda: [qml.QubitUnitary(_U4, wires=[3, 1])],
    "ArbitraryStatePreparation": lambda: [qml.ArbitraryStatePreparation(_ASP_W, wires=range(WIRES))],
    "AngleEmbedding(X)": lambda: [qml.AngleEmbedding([0.3, 1.2, -0.7, 2.0], wires=range(WIRES))],
    "AngleEmbedding(Y)": lambda: [qml.AngleEmbedding([0.3, 1.2, -0.7], wires=range(3), rotation="Y")],
    "AngleEmbedding(Z)": lambda: [qml.Hadamard(0), qml.Hadamard(1),
                                  qml.AngleEmbedding([0.3, 1.2], wires=[0, 1], rotation="Z")],
    "IQPEmbedding": lambda: [qml.IQPEmbedding([0.3, 1.2, -0.7, 2.0], wires=range(WIRES), n_repeats=2)],
    "QAOAEmbedding": lambda: [qml.QAOAEmbedding([0.3, 1.2, -0.7, 2.0], _QAOA_W, wires=range(WIRES))],
    "CosineWindow": lambda: [qml.CosineWindow(wires=range(WIRES))],
    "Superposition": lambda: [qml.Superposition(np.sqrt([0.5, 0.3, 0.2]), [[1, 0, 1], [0, 1, 1], [1, 1, 0]],
                                                wires=[0, 1, 2], work_wire=3)],
    "BasisState then gates": lambda: [qml.BasisState(np.array([0, 1, 1, 0]), wires=range(WIRES)),
                                      qml.Hadamard(0), qml.CNOT([1, 3]), qml.RZ(0.4, 2)],
}
STATE_PREPS = sorted(_STATE_PREPS)


def _state_tapes():
    return [qml.tape.QuantumScript(_STATE_PREPS[n](), [qml.state()]) for n in STATE_PREPS]


def test_every_state_preparation_state_with_its_phase(diff_client):
    """qml.state() on pool lightning (the pool that returns state vectors) equals lightning.qubit's,
    compared as complex vectors: no phase normalisation."""
    dev = qml.device("qsched.qubit", wires=WIRES, client=diff_client, pool="lightning")
    got = qml.execute(_state_tapes(), dev)
    dev.close()
    want = qml.execute(_state_tapes(), qml.device("lightning.qubit", wires=WIRES))
    bad = [n for n, g, w in zip(STATE_PREPS, got, want) if not np.allclose(g, w, atol=1e-9)]
    assert not bad, f"states differ for {bad}"


# observables lightning.qubit declares, each measured by expval and var
_H2 = np.array([[1, 2 - 1j, 0, 0], [2 + 1j, 0, 0, 1], [0, 0, -1, 0.5], [0, 1, 0.5, 2]])


def _observables():
    psi = np.array([1, 1j, -1, 0.5]) / np.linalg.norm([1, 1j, -1, 0.5])
    return {
        "PauliX": qml.X(1), "PauliY": qml.Y(2), "PauliZ": qml.Z(3), "Hadamard": qml.Hadamard(0),
        "Identity": qml.Identity(2),
        "Hermitian": qml.Hermitian(_H2, wires=[1, 2]),
        "Projector(basis)": qml.Projector([1, 0], wires=[0, 2]),
        "Projector(state)": qml.Projector(psi, wires=[1, 3]),
        "Prod": qml.X(0) @ qml.Hermitian(np.array([[1, 0.3], [0.3, -2]]), wires=3),
        "SProd": 0.7 * qml.Y(1),
        "Sum": qml.Z(0) + 0.3 * qml.X(1) @ qml.X(2),
        "LinearCombination": qml.Hamiltonian([0.4, -1.2], [qml.Y(0) @ qml.Z(1), qml.X(3)]),
        "SparseHamiltonian": qml.SparseHamiltonian(
            qml.Hamiltonian([0.5, 0.25], [qml.X(0) @ qml.X(1), qml.Z(1)]).sparse_matrix(wire_order=[0, 1]),
            wires=[0, 1]),
        "Exp": qml.exp(qml.X(0) @ qml.Z(2), 0.4),
    }


OBSERVABLES = _observables()


def _obs_mps(name):
    o = OBSERVABLES[name]
    # default.qubit (the reference) has no analytic var of a SparseHamiltonian
    return [qml.expval(o)] if name == "SparseHamiltonian" else [qml.expval(o), qml.var(o)]


def _obs_tapes(x, shots=None):
    ops = _prep() + [qml.RX(x[0], 0), qml.RY(x[1], 1), qml.IsingXY(x[2], [2, 3]), qml.CRZ(x[3], [3, 0])] + _mix()
    return [qml.tape.QuantumScript(ops, _obs_mps(n), shots=shots) for n in OBSERVABLES]


def _obs_slices():
    out, start = {}, 0
    for n in OBSERVABLES:
        k = len(_obs_mps(n))
        out[n] = slice(start, start + k)
        start += k
    return out


OX0 = np.array([0.3, -1.1, 0.8, 1.7])


@pytest.fixture(scope="module")
def obs_reference(reference):
    """default.qubit by backprop, except where default.qubit itself disagrees with finite
    differences: backprop gives zero jacobians for SparseHamiltonian (taken by parameter shift), and
    PennyLane 0.45's parameter-shift rule for var of a non-involutory Sum/Exp is off (qsched's
    parameter-shift jacobians are compared with default.qubit's parameter shift)."""
    value, backprop = _run(reference, _obs_tapes, "backprop", OX0)
    _, shift = _run(reference, _obs_tapes, "parameter-shift", OX0)
    sparse = _obs_slices()["SparseHamiltonian"]
    backprop[sparse] = shift[sparse]
    return value, {"adjoint": backprop, "parameter-shift": shift}


@pytest.mark.parametrize("diff_method", ["adjoint", "parameter-shift"])
def test_every_observable_value_and_jacobian(pl_device, obs_reference, diff_method):
    want_v, want = obs_reference
    want_j = want[diff_method]
    got_v, got_j = _run(pl_device, _obs_tapes, diff_method, OX0)
    sl = _obs_slices()
    bad = [n for n, s in sl.items() if not np.allclose(got_v[s], want_v[s], atol=1e-9)]
    assert not bad, f"{pl_device.pool}: values differ for {bad}"
    bad = [n for n, s in sl.items() if not np.allclose(got_j[s], want_j[s], atol=1e-7)]
    assert not bad, f"{pl_device.pool} {diff_method}: jacobians differ for {bad}"


def test_every_observable_with_shots(pl_device, obs_reference):
    """(default.qubit refuses SparseHamiltonian with shots; qsched measures its Pauli terms, and the
    result is checked against the analytic value.)"""
    want_v, _ = obs_reference
    names = list(OBSERVABLES)
    got_v, _ = _run(pl_device, lambda x: [t for n, t in zip(OBSERVABLES, _obs_tapes(x, SHOTS)) if n in names],
                    None, OX0, jac=False)
    want_v = np.concatenate([want_v[s] for n, s in _obs_slices().items() if n in names])
    bad, start = [], 0
    for n in names:
        s = slice(start, start + len(_obs_mps(n)))
        start = s.stop
        norm = float(np.max(np.abs(np.linalg.eigvals(qml.matrix(OBSERVABLES[n])))))
        sigma = np.array([norm, 2 * norm ** 2])[:s.stop - s.start] / np.sqrt(SHOTS)
        if not np.all(np.abs(got_v[s] - want_v[s]) <= 5 * sigma):
            bad.append(n)
    assert not bad, f"{pl_device.pool}: sampled values differ for {bad}"


# ------------------------------------------------------------------------------------ Qiskit
QISKIT_GATES = sorted(n for n in get_standard_gate_name_mapping() if n not in {"measure", "delay", "reset"})


def _qiskit_case(name):
    proto = get_standard_gate_name_mapping()[name]
    ps = [Parameter(f"{name}_{j}") for j in range(len(proto.params))]
    n = max(proto.num_qubits, 1) + 1
    rng = np.random.default_rng(sum(map(ord, name)))
    qc = QuantumCircuit(n)
    for q in range(n):
        qc.ry(rng.uniform(0.3, 2.8), q)
        qc.rz(rng.uniform(0.3, 2.8), q)
    for q in range(n - 1):
        qc.cx(q, q + 1)
    qc.append(type(proto)(*ps), list(range(proto.num_qubits)))
    for q in range(n):
        qc.rx(rng.uniform(0.3, 2.8), q)
    obs = [SparsePauliOp("I" * (n - 1 - q) + p + "I" * q) for q in range(n) for p in "XYZ"]
    obs.append(SparsePauliOp.from_list([("Z" * n, 0.5), ("X" * n, -0.25)]))
    return qc, rng.uniform(-np.pi, np.pi, (2, len(ps))), obs


QISKIT_CASES = {n: _qiskit_case(n) for n in QISKIT_GATES}


def _estimator_pubs():
    return [(qc, [obs], v[:, None, :]) for qc, v, obs in QISKIT_CASES.values()]


@pytest.fixture(scope="module")
def qiskit_reference():
    return StatevectorEstimator().run(_estimator_pubs()).result()


@pytest.mark.parametrize("pool", POOLS)
def test_every_standard_gate_through_the_estimator(diff_client, pool, qiskit_reference):
    est = EstimatorV2(client=diff_client, pool=pool)
    got = est.run(_estimator_pubs()).result(timeout=120)
    bad = [n for n, g, w in zip(QISKIT_GATES, got, qiskit_reference)
           if not np.allclose(g.data.evs, w.data.evs, atol=1e-9)]
    assert not bad, f"{pool}: EstimatorV2 differs for {bad}"
    shots = est.run(_estimator_pubs(), precision=0.01).result(timeout=120)
    bad = [n for n, g, w in zip(QISKIT_GATES, shots, qiskit_reference)
           if not np.all(np.abs(g.data.evs - w.data.evs) <= 5 * 0.01 * 1.25 + 1e-9)]
    assert not bad, f"{pool}: EstimatorV2 with precision 0.01 differs for {bad}"
    est.close()


def _finite_difference(qc, v, obs, eps=1e-6):
    def evs(vals):
        return StatevectorEstimator().run([(qc, [obs], vals[:, None, :])]).result()[0].data.evs
    out = np.zeros((v.shape[0], len(obs), v.shape[1]))
    for j in range(v.shape[1]):
        e = np.zeros(v.shape[1])
        e[j] = eps
        out[:, :, j] = (evs(v + e) - evs(v - e)) / (2 * eps)
    return out


@pytest.mark.parametrize("pool", POOLS)
def test_every_standard_gate_through_gradient_tasks(diff_client, pool):
    from qsched.qiskit.convert import observable_to_wire
    from qiskit.quantum_info import SparseObservable
    session = diff_client.open_session(pool)
    try:
        tasks = [dict(kind="gradient", circuit=qc, params=v,
                      observables=[observable_to_wire(SparseObservable.from_sparse_pauli_op(o)) for o in obs],
                      method="adjoint" if pool == "lightning" else "parameter-shift")
                 for qc, v, obs in QISKIT_CASES.values() if v.shape[1]]
        names = [n for n, (_, v, _) in QISKIT_CASES.items() if v.shape[1]]
        results = session.wait(session.submit_many(tasks), 120)
        bad = [n for n, r in zip(names, results)
               if not np.allclose(r.jacobian, _finite_difference(*QISKIT_CASES[n]), atol=1e-6)]
        assert not bad, f"{pool}: gradients differ for {bad}"
    finally:
        session.close()


@pytest.mark.parametrize("pool", POOLS)
def test_every_standard_gate_through_the_sampler(diff_client, pool):
    shots = 4000
    pubs = [(qc.measure_all(inplace=False), v) for qc, v, _ in QISKIT_CASES.values()]
    smp = SamplerV2(client=diff_client, pool=pool)
    got = smp.run(pubs, shots=shots).result(timeout=120)
    bad = []
    for (name, (qc, v, _)), res in zip(QISKIT_CASES.items(), got):
        for b in range(len(v)):
            p = Statevector(qc.assign_parameters(v[b]) if qc.num_parameters else qc).probabilities()
            meas = res.data.meas
            counts = (meas[b] if meas.shape else meas).get_int_counts()
            freq = np.zeros_like(p)
            for k, c in counts.items():
                freq[k] = c / shots
            if not np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / shots) + 2e-3):
                bad.append(name)
    assert not bad, f"{pool}: SamplerV2 differs for {bad}"
    smp.close()


@pytest.mark.parametrize("pool", POOLS)
def test_estimator_final_measurement_is_aers_answer(diff_client, pool):
    """After H and a measurement <X> = 0 (aer's value; StatevectorEstimator raises instead), on
    every pool; a gate after a measurement is refused at run(), before anything is sent."""
    from qiskit_aer.primitives import EstimatorV2 as AerEstimator
    qc = QuantumCircuit(2, 1)
    qc.h([0, 1])
    qc.measure(0, 0)
    est = EstimatorV2(client=diff_client, pool=pool)
    got = est.run([(qc, ["IX", "XI", "IZ"])]).result(timeout=60)[0].data.evs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aer = AerEstimator().run([(qc, ["IX", "XI", "IZ"])], precision=0.005).result()[0].data.evs
    np.testing.assert_allclose(got, [0.0, 1.0, 0.0], atol=1e-9)
    # aer samples a measured circuit (1024 shots) whatever the precision
    np.testing.assert_allclose(got, aer, atol=5 / np.sqrt(1024))
    qc.h(0)
    with pytest.raises(BadRequest, match="after it was measured"):
        est.run([(qc, ["IX"])])
    est.close()


@pytest.mark.parametrize("pool", POOLS)
def test_one_hamiltonian_per_row_zipped_and_broadcast(diff_client, pool):
    """A zipped PUB (one Hamiltonian per parameter row, over shared terms) and broadcasts of it
    measure the shared Pauli strings once per row; the values are the reference's, the shapes too.
    The PennyLane batch of tapes of their own Hamiltonians: lightning.qubit's values."""
    rng = np.random.default_rng(9)
    qc = QuantumCircuit(3)
    a, b = Parameter("a"), Parameter("b")
    qc.ry(a, 0)
    qc.rx(b, 1)
    qc.cx(0, 2)
    qc.rz(a - b, 2)
    qc.h(1)
    labels = ["ZZI", "XIX", "IYZ", "IIX"]
    obs = np.empty(12, dtype=object)
    for i in range(12):
        obs[i] = SparsePauliOp(labels, rng.uniform(-1, 1, 4))
    params = rng.uniform(-np.pi, np.pi, (12, 2))
    pubs = [(qc, obs, params), (qc, obs.reshape(3, 4), params.reshape(3, 4, 2)),
            (qc, obs[:4], params[:, None, :]), (qc, obs[:3].reshape(3, 1), params[:5])]
    est = EstimatorV2(client=diff_client, pool=pool)
    got = est.run(pubs).result(timeout=120)
    want = StatevectorEstimator().run(pubs).result()
    for g, w in zip(got, want):
        assert g.data.evs.shape == w.data.evs.shape
        np.testing.assert_allclose(g.data.evs, w.data.evs, atol=1e-9)
    est.close()

    terms = [qml.Z(0) @ qml.Z(1), qml.X(0) @ qml.X(2), qml.Z(0) @ qml.Y(1), qml.X(0)]
    tapes = [qml.tape.QuantumScript([qml.RY(x, 0), qml.RX(y, 1), qml.CNOT([0, 2]), qml.H(1)],
                                    [qml.expval(qml.Hamiltonian(list(rng.uniform(-1, 1, 4)), terms))],
                                    trainable_params=[0, 1])
             for x, y in params]
    dev = qml.device("qsched.qubit", wires=3, pool=pool, client=diff_client)
    lq = qml.device("lightning.qubit", wires=3)
    np.testing.assert_allclose(qml.execute(tapes, dev), qml.execute(tapes, lq), atol=1e-9)
    config = qml.devices.ExecutionConfig(gradient_method="adjoint")
    got_v, got_j = dev.execute_and_compute_derivatives(tapes, dev.setup_execution_config(config))
    want_v, want_j = lq.execute_and_compute_derivatives(tapes, config)
    np.testing.assert_allclose(got_v, want_v, atol=1e-9)
    np.testing.assert_allclose(np.array(got_j), np.array(want_j), atol=1e-8)
    # the workers of both pools measure each row at its own observable alone (derivatives; and values
    # of observables without shared strings, as these: a Pauli word of its own per tape)
    assert dev._features.get("row_observables") is True
    words = [qml.Z(0) @ qml.X(1), qml.Y(0) @ qml.Z(2), qml.X(0) @ qml.X(1) @ qml.Z(2), qml.Y(1), qml.Z(2)]
    own = [qml.tape.QuantumScript(t.operations, [qml.expval(words[i % len(words)] + 0.5 * qml.Z(1))],
                                  trainable_params=[0, 1]) for i, t in enumerate(tapes)]
    np.testing.assert_allclose(qml.execute(own, dev), qml.execute(own, lq), atol=1e-9)
    got_v, got_j = dev.execute_and_compute_derivatives(own, dev.setup_execution_config(config))
    want_v, want_j = lq.execute_and_compute_derivatives(own, config)
    np.testing.assert_allclose(got_v, want_v, atol=1e-9)
    np.testing.assert_allclose(np.array(got_j), np.array(want_j), atol=1e-8)
    dev.close()


@pytest.mark.parametrize("pool", POOLS)
def test_isa_circuit_on_a_large_backend_runs_on_its_used_qubits(diff_client, pool):
    """A 3-qubit ansatz transpiled for a 20-qubit backend: the idle qubits are dropped (the task's
    template has 3), the values are the reference's on the laid-out observables, X/Y on an idle qubit
    included (0), and samples are in the user's bit order."""
    from qiskit import transpile
    from qiskit.circuit.library import efficient_su2
    from qiskit.providers.fake_provider import GenericBackendV2
    from qiskit.primitives.containers.estimator_pub import EstimatorPub

    from qsched.qiskit.convert import estimator_pub_to_task
    backend = GenericBackendV2(20, seed=11)
    ansatz = efficient_su2(3, reps=1)
    qc = transpile(ansatz, backend, optimization_level=1, seed_transpiler=11)
    obs = [SparsePauliOp(["ZZI", "IXY", "XII"], [1.0, 0.5, -0.3]).apply_layout(qc.layout),
           SparsePauliOp("X" * 20), SparsePauliOp("Z" * 20)]
    params = np.random.default_rng(2).uniform(-np.pi, np.pi, (3, 1, qc.num_parameters))
    assert estimator_pub_to_task(EstimatorPub.coerce((qc, obs, params))).task["circuit"].num_qubits == 3
    est = EstimatorV2(client=diff_client, pool=pool)
    got = est.run([(qc, obs, params)]).result(timeout=120)[0].data.evs
    want = StatevectorEstimator().run([(qc, obs, params)]).result()[0].data.evs
    np.testing.assert_allclose(got, want, atol=1e-9)
    est.close()

    measured = transpile(ansatz.measure_all(inplace=False), backend, optimization_level=1, seed_transpiler=11)
    row = params[0, 0]
    shots = 4000
    smp = SamplerV2(client=diff_client, pool=pool, seed=3)
    counts = smp.run([(measured, row)], shots=shots).result(timeout=120)[0].data.meas.get_int_counts()
    smp.close()
    p = Statevector(ansatz.assign_parameters(row)).probabilities()
    freq = np.zeros_like(p)
    for k, c in counts.items():
        freq[k] = c / shots
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / shots) + 2e-3), (freq, p)


def test_seeded_estimator_noise_is_aers_for_every_broadcast(diff_client):
    """docs/user-guide.md: on pool aer a seeded estimator's noise (normal(ev, p)) is aer's
    EstimatorV2's with that seed_simulator, draw for draw, whatever the PUB's broadcast: 1-D, bindings
    x observables, observables x bindings, zipped (row observables keep the PUB's own order)."""
    from qiskit_aer.primitives import EstimatorV2 as AerEstimator
    rng = np.random.default_rng(4)
    qc = QuantumCircuit(2)
    a, b = Parameter("a"), Parameter("b")
    qc.ry(a, 0)
    qc.rx(b, 1)
    qc.cx(0, 1)
    obs = ["ZZ", "XI", "IY"]
    rows = rng.uniform(-np.pi, np.pi, (3, 2))
    pubs = [(qc, "ZZ", rows), (qc, obs, rows[0]), (qc, obs, rows[:, None, :]), (qc, [[o] for o in obs], rows),
            (qc, obs, rows), (qc, [obs, obs[::-1]], rows[:2, None, :])]
    aer = AerEstimator(options={"default_precision": 0.1, "run_options": {"seed_simulator": 5}})
    ours = EstimatorV2(client=diff_client, pool="aer", seed=5, default_precision=0.1)
    for pub in pubs:
        got = ours.run([pub]).result(timeout=60)[0].data.evs
        np.testing.assert_array_equal(got, aer.run([pub]).result()[0].data.evs)
        exact = StatevectorEstimator().run([pub]).result()[0].data.evs
        assert np.all(np.abs(got - exact) <= 5 * 0.1)
    ours.close()


def _mcm_circuit(x):
    qml.RX(x, 0)
    m = qml.measure(0)
    qml.cond(m, qml.RY)(0.4, 1)
    m1 = qml.measure(1)
    return (qml.expval(qml.Z(1)), qml.probs(op=m), qml.expval(2 * m + m1), qml.var(m),
            qml.probs(op=[m, m1]))


@pytest.mark.parametrize("pool", POOLS)
def test_mid_circuit_measurements_analytic_and_with_shots(diff_client, pool):
    """Mid-circuit measurements (deferred, a wire each): analytic probs(op=m), expval/var of
    measurement values are default.qubit's; with shots within 5 sigma; a device of fixed wires without
    a spare wire per measurement is refused at preprocess, saying so and what to do."""
    want = qml.QNode(_mcm_circuit, qml.device("default.qubit"))(0.7)
    dev = qml.device("qsched.qubit", wires=4, pool=pool, client=diff_client)
    got = qml.QNode(_mcm_circuit, dev)(0.7)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-9)
    shots = qml.set_shots(qml.QNode(_mcm_circuit, dev), shots=SHOTS)(0.7)
    for g, w in zip(shots, want):
        assert np.all(np.abs(np.asarray(g) - w) <= 5 * 1.5 / np.sqrt(SHOTS) + 1e-3), (g, w)
    dev.close()
    small = qml.device("qsched.qubit", wires=2, pool=pool, client=diff_client)
    for n in (None, 100):
        with pytest.raises(DeviceError, match=r"deferred: each needs a wire of its own.*wires=4"):
            qml.set_shots(qml.QNode(_mcm_circuit, small), shots=n)(0.7)
    small.close()
