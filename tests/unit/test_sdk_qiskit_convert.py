"""Qiskit PUB <-> qsched task conversions, checked against StatevectorEstimator/StatevectorSampler.

Task results are built by hand in the shape docs/api.md gives (evs [bindings, observables], BitArray
bytes per register), from exact Statevector values; the live daemon runs the same paths in
tests/integration/test_sdk_qiskit.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import ClassicalRegister, Parameter, QuantumRegister
from qiskit.primitives import StatevectorEstimator, StatevectorSampler
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.primitives.containers.sampler_pub import SamplerPub
from qiskit.providers import JobError, JobTimeoutError
from qiskit.quantum_info import SparseObservable, SparsePauliOp, Statevector

from qsched.errors import QschedError, TaskFailed, Timeout
from qsched.qiskit import QschedJobError, QschedJobTimeoutError, build_target
from qsched.qiskit.backend import _experiment_result, target_for_pool
from qsched.qiskit.convert import (
    estimator_pub_to_task,
    estimator_result,
    memory_to_hex,
    observable_to_wire,
    precision_to_shots,
    registers_to_memory,
    sampler_pub_to_task,
    sampler_result,
)
from qsched.qiskit.session import as_sdk_error
from qsched.wire import encode_array


def ansatz(n=3):
    a, b, c = Parameter("a"), Parameter("b"), Parameter("c")
    qc = QuantumCircuit(n)
    qc.ry(a, 0)
    qc.rx(b, 1)
    qc.cx(0, 1)
    qc.rz(c, 1)
    qc.cx(1, 2)
    qc.ry(2 * a - b, 2)
    return qc


def exact_estimate(task) -> dict:
    """The estimate result the daemon returns: outer product evs[binding, observable]."""
    qc = task["circuit"]
    ops = [SparsePauliOp.from_list([(p, c) for p, c in o]) for o in task["observables"]]
    evs = np.array([[Statevector(qc.assign_parameters(row)).expectation_value(o).real for o in ops]
                    for row in task["params"]])
    return {"evs": evs, "stds": np.zeros_like(evs), "meta": {"device": "ref", "exec_s": 0.0}}


def test_observable_to_wire_matches_matrix_incl_projectors():
    for label in ["XIZ", "0+Y", "rlZ", "-1I"]:
        obs = SparseObservable.from_label(label) * 0.7
        wire = observable_to_wire(obs)
        spo = SparsePauliOp.from_list([(p, c) for p, c in wire])
        assert np.allclose(spo.to_matrix(), obs.to_matrix(), atol=1e-12), label


def test_pauli_order_is_qiskit_order():
    obs = SparseObservable.from_sparse_list([("X", [0], 1.0)], num_qubits=3)
    assert observable_to_wire(obs) == [["IIX", 1.0]]


@pytest.mark.parametrize("bshape,oshape", [((), ()), ((4,), ()), ((), (3,)), ((4, 1), (1, 3)),
                                           ((5,), (5,)), ((2, 3), (3,))])
def test_estimator_broadcasting_matches_reference(bshape, oshape):
    rng = np.random.default_rng(1)
    qc = ansatz()
    params = rng.uniform(-np.pi, np.pi, size=bshape + (3,))
    pool = [SparsePauliOp("ZZI"), SparsePauliOp.from_list([("XIX", 0.5), ("IYY", -1.5)]), "IIZ",
            {"ZIZ": 2.0}, SparsePauliOp("XXX")]
    obs = np.empty(oshape, dtype=object)
    for k, idx in enumerate(np.ndindex(*oshape)):
        obs[idx] = pool[k % len(pool)]
    obs = obs if oshape else pool[1]
    pub = EstimatorPub.coerce((qc, obs, params))
    plan = estimator_pub_to_task(pub)
    assert plan.task["params"].shape == (int(np.prod(bshape)), 3)
    assert len(plan.task["observables"]) == int(np.prod(oshape))
    got = estimator_result(plan, exact_estimate(plan.task))
    want = StatevectorEstimator().run([(qc, obs, params)]).result()[0]
    assert got.data.evs.shape == want.data.evs.shape == pub.shape
    assert np.allclose(got.data.evs, want.data.evs, atol=1e-10)
    assert got.metadata["target_precision"] == 0.0 and got.metadata["qsched"]["device"] == "ref"


@pytest.mark.parametrize("bshape,oshape", [((16,), (16,)), ((16, 1), (16,)), ((1, 16), (16, 1)),
                                           ((4, 4), (4,)), ((), (16,))])
def test_estimator_observables_over_shared_strings_send_the_strings(bshape, oshape):
    """One Hamiltonian per row over the same terms (a zipped PUB): the task measures the 3 strings at
    each binding, bindings x 3 values, not bindings x observables (quadratic when zipped); values,
    shapes as the reference's. With precision, the observables themselves (noise per observable)."""
    rng = np.random.default_rng(2)
    qc = ansatz()
    params = rng.uniform(-np.pi, np.pi, size=bshape + (3,))
    obs = np.empty(oshape, dtype=object)
    for idx in np.ndindex(*oshape):
        obs[idx] = SparsePauliOp(["ZZI", "XIX", "IYY"], rng.uniform(-1, 1, 3))
    plan = estimator_pub_to_task(EstimatorPub.coerce((qc, obs, params)))
    assert sorted(p for [[p, c]] in plan.task["observables"]) == ["IYY", "XIX", "ZZI"]
    got = estimator_result(plan, exact_estimate(plan.task))
    want = StatevectorEstimator().run([(qc, obs, params)]).result()[0]
    assert got.data.evs.shape == want.data.evs.shape
    assert np.allclose(got.data.evs, want.data.evs, atol=1e-10) and not got.data.stds.any()
    noisy = estimator_pub_to_task(EstimatorPub.coerce((qc, obs, params), precision=0.1))
    assert len(noisy.task["observables"]) == obs.size


def exact_rows(task) -> dict:
    """The estimate result of a task of row observables: row i at observable i, [rows, 1]."""
    qc = task["circuit"]
    evs = np.array([[Statevector(qc.assign_parameters(row)).expectation_value(
        SparsePauliOp.from_list([(p, c) for p, c in o])).real] for row, o in zip(task["params"], task["observables"])])
    return {"evs": evs, "stds": np.zeros_like(evs), "meta": {}}


def test_estimator_rows_where_the_pool_offers_them():
    """Row observables (asked of the pool only when they would be used): a zipped PUB without shared
    strings sends its 8 entries as 8 rows, not 8 x 8; a noisy PUB not laid out bindings-major too
    (its noise in the PUB's order); a laid-out or shared-strings PUB never asks."""
    from qsched.wire import ROWS_METADATA_KEY
    rng = np.random.default_rng(3)
    qc = ansatz()
    params = rng.uniform(-np.pi, np.pi, (8, 3))
    words = ["ZZI", "XIX", "IYY", "IIZ", "ZIZ", "XXX", "YIY", "IZX"]
    pub = EstimatorPub.coerce((qc, words, params))
    plan = estimator_pub_to_task(pub, lambda: True)
    assert plan.by_row and plan.task["circuit"].metadata[ROWS_METADATA_KEY] is True
    assert plan.task["params"].shape == (8, 3) and len(plan.task["observables"]) == 8
    got = estimator_result(plan, exact_rows(plan.task))
    np.testing.assert_allclose(got.data.evs, StatevectorEstimator().run([(qc, words, params)]).result()[0].data.evs,
                               atol=1e-10)
    assert not estimator_pub_to_task(pub, lambda: False).by_row

    def never():
        raise AssertionError("asked the pool without need")
    assert not estimator_pub_to_task(EstimatorPub.coerce((qc, words[:3], params[:, None, :]), 0.1), never).by_row
    shared = [SparsePauliOp(["ZZI", "XIX"], rng.uniform(-1, 1, 2)) for _ in range(8)]
    assert estimator_pub_to_task(EstimatorPub.coerce((qc, shared, params)), never).coef is not None
    noisy = estimator_pub_to_task(EstimatorPub.coerce((qc, [[w] for w in words[:3]], params), 0.1), lambda: True)
    assert noisy.by_row and noisy.task["params"].shape == (24, 3) and noisy.task["shots"] == 100


def test_estimator_parameter_order_follows_template_not_dict_order():
    qc = ansatz()
    a, b, c = sorted(qc.parameters, key=lambda p: p.name)
    pub = EstimatorPub.coerce((qc, "ZZZ", {(c, a): [0.3, 0.1], b: 0.2}))
    assert np.allclose(estimator_pub_to_task(pub).task["params"], [[0.1, 0.2, 0.3]])


def test_estimator_accepts_wire_encoded_result_and_precision():
    qc = ansatz()
    pub = EstimatorPub.coerce((qc, ["ZII", "IIZ"], [0.1, 0.2, 0.3]), precision=0.01)
    plan = estimator_pub_to_task(pub)
    assert plan.task["shots"] == precision_to_shots(0.01) == 10000
    res = exact_estimate(plan.task)
    res = {"evs": encode_array(res["evs"]), "stds": encode_array(res["stds"] + 0.01), "meta": {}}
    out = estimator_result(plan, res)
    assert out.data.evs.shape == (2,) and np.allclose(out.data.stds, 0.01)
    assert out.metadata["shots"] == 10000


def test_no_parameter_circuit():
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    plan = estimator_pub_to_task(EstimatorPub.coerce((qc, ["XX", "ZI"])))
    assert plan.task["params"].shape == (1, 0)
    out = estimator_result(plan, {"evs": np.array([[1.0, 0.0]]), "stds": None})
    assert np.allclose(out.data.evs, [1.0, 0.0])


def _bitarray_bytes(values: np.ndarray, num_bits: int) -> np.ndarray:
    nbytes = (num_bits + 7) // 8
    flat = values.reshape(-1)
    return np.array([np.frombuffer(int(v).to_bytes(nbytes, "big"), dtype=np.uint8) for v in flat]
                    ).reshape(values.shape + (nbytes,))


def test_sampler_result_shapes_registers_and_counts():
    qr = QuantumRegister(3)
    c1, c2 = ClassicalRegister(2, "alpha"), ClassicalRegister(9, "beta")
    qc = QuantumCircuit(qr, c1, c2)
    t = Parameter("t")
    qc.rx(t, 0)
    qc.measure([0, 1], c1)
    qc.measure([2, 2, 0, 1, 2, 0, 1, 2, 0], c2)
    pub = SamplerPub.coerce((qc, np.linspace(0, 1, 6).reshape(2, 3, 1)), shots=4)
    plan = sampler_pub_to_task(pub)
    assert plan.task["params"].shape == (6, 1) and plan.task["shots"] == 4
    rng = np.random.default_rng(0)
    v1 = rng.integers(0, 4, size=(6, 4))
    v2 = rng.integers(0, 512, size=(6, 4))
    result = {"registers": {"alpha": {"num_bits": 2, "array": encode_array(_bitarray_bytes(v1, 2))},
                            "beta": {"num_bits": 9, "array": _bitarray_bytes(v2, 9)}}}
    out = sampler_result(plan, result)
    assert out.data.alpha.shape == (2, 3) and out.data.alpha.num_shots == 4
    assert out.data.beta.num_bits == 9 and out.data.beta.array.shape == (2, 3, 4, 2)
    assert np.array_equal(out.data.beta.array.reshape(6, 4, 2), _bitarray_bytes(v2, 9))
    want = sum(np.bincount(v1[i], minlength=4) for i in range(6))
    got = out.data.alpha.get_int_counts()
    assert all(got.get(k, 0) == want[k] for k in range(4))
    assert out.metadata["shots"] == 4


def test_sampler_statistics_match_statevector_sampler():
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.ry(0.4, 1)
    qc.measure_all()
    plan = sampler_pub_to_task(SamplerPub.coerce(qc, shots=4000))
    probs = Statevector(qc.remove_final_measurements(inplace=False)).probabilities()
    rng = np.random.default_rng(3)
    outcomes = rng.choice(4, size=4000, p=probs)
    res = {"registers": {"meas": {"num_bits": 2, "array": _bitarray_bytes(outcomes[None, :], 2)}}}
    ours = sampler_result(plan, res).data.meas.get_counts()
    ref = StatevectorSampler(seed=5).run([qc], shots=4000).result()[0].data.meas.get_counts()
    for k in set(ours) | set(ref):
        assert abs(ours.get(k, 0) - ref.get(k, 0)) < 5 * np.sqrt(4000 * 0.25) + 1


def test_registers_to_memory_places_bits_by_clbit_index():
    qc = QuantumCircuit(QuantumRegister(1), ClassicalRegister(2, "lo"), ClassicalRegister(3, "hi"))
    lo = _bitarray_bytes(np.array([[0b10, 0b01]]), 2)
    hi = _bitarray_bytes(np.array([[0b101, 0b000]]), 3)
    bits = registers_to_memory(qc, {"lo": {"array": lo[0]}, "hi": {"array": hi[0]}}, 2)
    assert memory_to_hex(bits) == [hex(0b10110), hex(0b00001)]
    wide = np.zeros((1, 70), dtype=bool)
    wide[0, [0, 69]] = True
    assert memory_to_hex(wide) == [hex((1 << 69) | 1)]


def test_backend_experiment_result_counts_and_memory():
    qc = QuantumCircuit(QuantumRegister(2), ClassicalRegister(1, "a"), ClassicalRegister(1, "b"))
    arr_a = _bitarray_bytes(np.array([[1, 0, 1]]), 1)[0]
    arr_b = _bitarray_bytes(np.array([[1, 1, 0]]), 1)[0]
    exp = _experiment_result(qc, {"registers": {"a": {"array": arr_a}, "b": {"array": arr_b}}}, 3, True)
    from qiskit.result import Result
    r = Result(backend_name="x", backend_version="1", job_id="j", success=True, results=[exp])
    assert r.get_counts() == {"1 1": 1, "1 0": 1, "0 1": 1}
    assert r.get_memory() == ["1 1", "1 0", "0 1"]


def test_target_from_devices_and_transpile():
    devices = [{"name": "aer-0", "type": "aer", "pool": "aer", "num_qubits": 20},
               {"name": "aer-1", "type": "aer", "pool": "aer", "num_qubits": 14},
               {"name": "l-0", "type": "lightning", "pool": "lightning", "num_qubits": 24}]
    t = target_for_pool(devices, "aer")
    assert t.num_qubits == 14 and "rzz" in t.operation_names and "if_else" in t.operation_names
    tl = target_for_pool(devices, "lightning")
    assert tl.num_qubits == 24 and "rzx" not in tl.operation_names
    qc = QuantumCircuit(3)
    qc.h(0)
    qc.ccx(0, 1, 2)
    qc.append(__import__("qiskit").circuit.library.QFTGate(3), [0, 1, 2])
    out = transpile(qc, target=build_target(5), optimization_level=1)
    assert set(out.count_ops()) <= set(build_target(5).operation_names)


def test_errors_inherit_qiskit_and_qsched():
    e = as_sdk_error(TaskFailed("boom", field="template"))
    assert isinstance(e, QschedJobError) and isinstance(e, JobError) and isinstance(e, QschedError)
    assert e.field == "template" and "boom" in str(e)
    t = as_sdk_error(Timeout("slow"))
    assert isinstance(t, QschedJobTimeoutError) and isinstance(t, JobTimeoutError)


def test_check_runnable_refuses_only_what_nothing_can_run():
    from qiskit.circuit import Gate
    from qiskit.circuit.library import real_amplitudes
    from qiskit.exceptions import QiskitError

    from qsched.qiskit.convert import CircuitError, check_runnable
    inner = QuantumCircuit(1)
    inner.h(0)
    ok = QuantumCircuit(2, 1)
    ok.append(real_amplitudes(2, reps=1), [0, 1])
    ok.append(inner.to_gate(), [1])
    ok.reset(0)
    with ok.for_loop(range(2)):
        ok.append(inner.to_gate(), [0])
    ok.measure(0, 0)
    check_runnable(ok)
    for where in ("top", "nested", "loop body"):
        bad = QuantumCircuit(1, 1)
        mystery = Gate("mystery", 1, [])
        if where == "top":
            bad.append(mystery, [0])
        elif where == "nested":
            wrap = QuantumCircuit(1)
            wrap.append(mystery, [0])
            bad.append(wrap.to_gate(), [0])
        else:
            with bad.for_loop(range(2)):
                bad.append(mystery, [0])
        with pytest.raises(CircuitError) as e:
            check_runnable(bad)
        assert isinstance(e.value, QiskitError) and e.value.field == "circuit" and "'mystery'" in str(e.value)


def test_empty_registers_are_not_sent_and_come_back_empty():
    qc = QuantumCircuit(QuantumRegister(1, "q"), ClassicalRegister(0, "c1"), ClassicalRegister(1, "c2"))
    qc.measure(0, 0)
    plan = sampler_pub_to_task(SamplerPub.coerce(qc, 4))
    assert [c.name for c in plan.task["circuit"].cregs] == ["c2"] and [c.name for c in qc.cregs] == ["c1", "c2"]
    res = sampler_result(plan, {"registers": {"c2": {"num_bits": 1, "array": np.ones((1, 4, 1), np.uint8)}}})
    assert res.data.c1.array.shape == (4, 0) and res.data.c2.get_counts() == {"1": 4}


def test_pub_seeds():
    from types import SimpleNamespace

    from qsched.qiskit.primitives import _submit, pub_seeds
    assert pub_seeds(None, 3) == [None] * 3
    a = pub_seeds(5, 3)
    assert a == pub_seeds(5, 3) and a[0] == 5 and len(set(a)) == 3
    assert pub_seeds(5, 3, distinct=False) == [5, 5, 5]
    g1, g2 = np.random.default_rng(1), np.random.default_rng(1)
    assert pub_seeds(g1, 2) == pub_seeds(g2, 2) and pub_seeds(g1, 2) != pub_seeds(np.random.default_rng(1), 2)
    with pytest.raises(ValueError):
        pub_seeds(-1, 1)
    # each PUB's seed is a field of its task; the template is the user's circuit whatever the seed, so a
    # Generator seed (a new seed every run) uploads nothing new
    qc = QuantumCircuit(1)

    class Handle:
        uploads: list = []
        tasks: list = []

        def upload(self, circuit):
            self.uploads.append(circuit)
            return "h"

        def get(self):
            return self

        def submit_many(self, tasks):
            self.tasks.extend(tasks)
            return []
    h = Handle()
    plans = [SimpleNamespace(task={"kind": "sample", "circuit": qc, "shots": 10})] * 3
    _submit(h, plans, [9, None, pub_seeds(np.random.default_rng(2), 1)[0]])
    assert all(c is qc for c in h.uploads) and qc.metadata == {}
    assert [t.get("seed") for t in h.tasks][:2] == [9, None] and isinstance(h.tasks[2]["seed"], int)
    assert all(t["template"] == "h" and "circuit" not in t for t in h.tasks)


def test_a_circuit_of_no_gates_keeps_one_qubit():
    # Qiskit's own estimator suite runs QuantumCircuit(n) with no gates: dropping every qubit left
    # the observable '' and aer failed it (KeyError: '')
    from qsched.qiskit.convert import without_idle_qubits
    out, active = without_idle_qubits(QuantumCircuit(3))
    assert out.num_qubits == 1 and active == [0]
    one = QuantumCircuit(1)
    assert without_idle_qubits(one) == (one, None)
