"""Devices in-process (the worker wraps them): results against Qiskit's reference primitives."""
from __future__ import annotations

import time

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.circuit.library import efficient_su2
from qiskit.primitives import StatevectorEstimator
from qiskit.quantum_info import SparsePauliOp

from qsched.devices import TaskError, TaskPayload, load_device
from qsched.models import DeviceLimits, DeviceSpec

OBS = [[["ZZI", 1.0], ["IXX", 0.5]], [["ZII", 1.0]]]


def device(typ, **options):
    return load_device(DeviceSpec(name=typ, type=typ, pool=typ, limits=DeviceLimits(max_qubits=5), options=options))


def reference(qc, params):
    ops = [SparsePauliOp.from_list([tuple(t) for t in o]) for o in OBS]
    return StatevectorEstimator().run([(qc, ops, params[:, None, :])]).result()[0].data.evs


def finite_difference(qc, params, eps=1e-6):
    out = np.zeros((params.shape[0], len(OBS), params.shape[1]))
    for j in range(params.shape[1]):
        e = np.zeros(params.shape[1])
        e[j] = eps
        out[:, :, j] = (reference(qc, params + e) - reference(qc, params - e)) / (2 * eps)
    return out


@pytest.fixture(scope="module")
def problem():
    qc = efficient_su2(3, reps=1)
    return qc, np.random.default_rng(5).uniform(-np.pi, np.pi, (3, qc.num_parameters))


@pytest.mark.parametrize("typ, method", [("aer", "parameter-shift"), ("lightning", "adjoint")])
def test_estimate_and_gradient(typ, method, problem):
    qc, params = problem
    d = device(typ)
    est, grad = d.run([TaskPayload("e", "estimate", "h", qc, params, None, OBS),
                       TaskPayload("g", "gradient", "h", qc, params, None, OBS, method)])
    np.testing.assert_allclose(est["evs"], reference(qc, params), atol=1e-10)
    np.testing.assert_allclose(grad["evs"], reference(qc, params), atol=1e-10)
    np.testing.assert_allclose(grad["jacobian"], finite_difference(qc, params), atol=1e-6)


@pytest.mark.parametrize("typ", ["aer", "lightning"])
def test_row_observables(typ, problem):
    """A template marked ROWS_METADATA_KEY: row i's value (and derivatives) at observable i alone,
    [rows, 1]; as many observables as rows, else the task fails naming the field."""
    from qsched.wire import ROWS_METADATA_KEY
    qc, params = problem
    rows = qc.copy()
    rows.metadata = {ROWS_METADATA_KEY: True}
    own = [OBS[1], OBS[0], OBS[1]]
    d = device(typ)
    assert d.describe()["row_observables"] == ROWS_METADATA_KEY
    est, grad, bad = d.run([TaskPayload("e", "estimate", "r", rows, params, None, own),
                            TaskPayload("g", "gradient", "r", rows, params, None, own, "adjoint"),
                            TaskPayload("b", "estimate", "r", rows, params, None, OBS)])
    pick = [1, 0, 1]
    want = reference(qc, params)[np.arange(3), pick][:, None]
    np.testing.assert_allclose(est["evs"], want, atol=1e-10)
    np.testing.assert_allclose(grad["evs"], want, atol=1e-10)
    np.testing.assert_allclose(grad["jacobian"], finite_difference(qc, params)[np.arange(3), pick][:, None], atol=1e-6)
    assert isinstance(bad, TaskError) and bad.field == "observables"
    # merged tasks of one template and observables; a template without parameters
    two = d.run([TaskPayload("m1", "estimate", "r", rows, params, None, own),
                 TaskPayload("m2", "estimate", "r", rows, params[::-1], None, own)])
    np.testing.assert_allclose(two[0]["evs"], want, atol=1e-10)
    np.testing.assert_allclose(two[1]["evs"], reference(qc, params[::-1])[np.arange(3), pick][:, None], atol=1e-10)
    fixed = qc.assign_parameters(params[0])
    fixed.metadata = {ROWS_METADATA_KEY: True}
    none = d.run([TaskPayload("f", "estimate", "f", fixed, np.zeros((3, 0)), None, own),
                  TaskPayload("fg", "gradient", "f", fixed, np.zeros((3, 0)), None, own, "adjoint")])
    np.testing.assert_allclose(none[0]["evs"], reference(qc, params[:1])[0, pick][:, None], atol=1e-10)
    np.testing.assert_allclose(none[1]["evs"], none[0]["evs"], atol=1e-10)


@pytest.mark.parametrize("typ", ["aer", "lightning"])
def test_gradient_through_linear_parameter_expressions(typ):
    """Gate angles like 2a - b + 0.3 are chained back to the template's parameters."""
    a, b = Parameter("a"), Parameter("b")
    qc = QuantumCircuit(3)
    qc.h(range(3))
    qc.rx(2 * a - b + 0.3, 0)
    qc.rzz(a, 0, 1)
    qc.ry(b, 2)
    qc.cx(1, 2)
    params = np.array([[0.4, -1.1], [1.3, 0.2]])
    g = device(typ).run([TaskPayload("g", "gradient", "h", qc, params, None, OBS)])[0]
    np.testing.assert_allclose(g["jacobian"], finite_difference(qc, params), atol=1e-6)


@pytest.mark.parametrize("typ", ["aer", "lightning"])
def test_gates_without_a_shift_rule_are_decomposed_first(typ):
    """crx has three generator eigenvalues (no two-term rule) and u3 three angles (no adjoint on
    lightning): both are decomposed into one-parameter rotations before differentiating."""
    t, u = Parameter("t"), Parameter("u")
    qc = QuantumCircuit(3)
    qc.h(range(3))
    qc.crx(t, 0, 1)
    qc.u(u, 2 * t, 0.3 - u, 2)
    qc.r(t, u, 0)
    params = np.array([[0.1, 0.7], [-1.2, 0.4]])
    g = device(typ).run([TaskPayload("g", "gradient", "h", qc, params, None, OBS)])[0]
    np.testing.assert_allclose(g["evs"], reference(qc, params), atol=1e-10)
    np.testing.assert_allclose(g["jacobian"], finite_difference(qc, params), atol=1e-6)
    assert np.abs(g["jacobian"]).max() > 0.1


@pytest.mark.parametrize("typ", ["aer", "lightning"])
def test_gradients_refuse_non_linear_angles(typ):
    t = Parameter("t")
    qc = QuantumCircuit(3)
    qc.rx(t * t, 0)
    out = device(typ).run([TaskPayload("g", "gradient", "h", qc, np.array([[0.1]]), None, OBS)])[0]
    assert isinstance(out, TaskError) and out.field == "template" and "not linear" in out.message


@pytest.mark.parametrize("typ", ["aer", "lightning"])
def test_non_linear_angles_are_estimated_and_sampled(typ):
    """x*y, x**2, sin(x) + y as gate angles: estimates equal the reference's per row, samples follow
    the same state (only gradients need linear angles)."""
    x, y = Parameter("x"), Parameter("y")
    qc = QuantumCircuit(3)
    qc.rx(x * y, 0)
    qc.ry(x ** 2, 1)
    qc.cx(0, 2)
    qc.rz(x.sin() + y, 2)
    qc.h(2)
    params = np.array([[0.4, 1.3], [-1.1, 0.7], [2.0, -0.5]])
    dev = device(typ)
    est = dev.run([TaskPayload("e", "estimate", "nl", qc, params, None, OBS)])[0]
    assert not isinstance(est, Exception), est
    np.testing.assert_allclose(est["evs"], reference(qc, params), atol=1e-10)
    measured = qc.measure_all(inplace=False)
    smp = dev.run([TaskPayload("s", "sample", "nls", measured, params[:1], 4000)])[0]
    assert not isinstance(smp, Exception), smp
    bits = np.unpackbits(np.asarray(smp["registers"]["meas"]["array"][0]), axis=-1)
    p1 = np.sin(params[0, 0] * params[0, 1] / 2) ** 2          # qubit 0 (the last bit) after rx(x*y)
    assert abs(bits[:, -1].mean() - p1) < 5 * np.sqrt(p1 * (1 - p1) / 4000)


def test_a_failing_group_does_not_fail_the_others(problem):
    qc, params = problem
    t = Parameter("t")
    bad = QuantumCircuit(3)
    bad.rx(t * t, 0)
    out = device("aer").run([TaskPayload("g", "gradient", "bad", bad, np.array([[0.1]]), None, OBS),
                             TaskPayload("e", "estimate", "h", qc, params, None, OBS)])
    assert isinstance(out[0], TaskError)
    np.testing.assert_allclose(out[1]["evs"], reference(qc, params), atol=1e-10)


def test_merged_tasks_are_split_back_in_order(problem):
    qc, params = problem
    out = device("aer").run([TaskPayload(str(i), "estimate", "h", qc, params[i:i + 1], None, OBS) for i in range(3)])
    for i in range(3):
        np.testing.assert_allclose(out[i]["evs"], reference(qc, params[i:i + 1]), atol=1e-10)


def test_sample_layout_is_qiskit_bitarray():
    qc = QuantumCircuit(10)
    qc.x([0, 9])
    qc.measure_all()
    for typ in ("aer", "lightning"):
        r = device(typ).run([TaskPayload("s", "sample", "h", qc, np.zeros((2, 0)), 7)])[0]
        arr = r["registers"]["meas"]["array"]
        assert arr.shape == (2, 7, 2)
        assert (arr[:, :, 0] == 0b10).all() and (arr[:, :, 1] == 0b1).all(), typ   # bit 9 and bit 0


def test_emulated_qpu_holds_the_device_for_the_modelled_time():
    d = device("emulated-qpu", setup_s=0.2, rep_s=1e-4, seed=3)
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    t0 = time.perf_counter()
    r = d.run([TaskPayload("s", "sample", "h", qc, np.zeros((2, 0)), 1000)])[0]
    elapsed = time.perf_counter() - t0
    assert elapsed >= 0.2 + 2 * 1000 * 1e-4
    counts = np.unique(r["registers"]["meas"]["array"][0, :, 0], return_counts=True)
    frac = dict(zip(counts[0].tolist(), counts[1].tolist()))
    assert frac.get(0, 0) + frac.get(3, 0) > 900        # Bell state, with a little noise


def test_null_device_shapes(problem):
    qc, params = problem
    r = device("null").run([TaskPayload("g", "gradient", "h", qc, params, None, OBS)])[0]
    assert r["jacobian"].shape == (3, 2, qc.num_parameters) and not r["jacobian"].any()
