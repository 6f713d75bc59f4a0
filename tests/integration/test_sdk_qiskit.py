"""qsched.qiskit against a live daemon (aer and lightning workers): results equal Qiskit's reference
primitives exactly where exact, statistically with shots."""
from __future__ import annotations

import numpy as np
import pytest
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import ClassicalRegister, Parameter, QuantumRegister
from qiskit.circuit.library import efficient_su2
from qiskit.primitives import BackendEstimatorV2, BackendSamplerV2, StatevectorEstimator
from qiskit.providers import JobStatus
from qiskit.quantum_info import SparsePauliOp, Statevector

from qsched.errors import BadRequest
from qsched.qiskit import EstimatorV2, QschedBackend, QschedJobError, SamplerV2


@pytest.fixture
def ansatz():
    return efficient_su2(4, reps=1, entanglement="linear")


def test_estimator_broadcast_matches_statevector_estimator(client, ansatz):
    rng = np.random.default_rng(0)
    params = rng.uniform(-np.pi, np.pi, size=(3, 1, ansatz.num_parameters))
    obs = [[SparsePauliOp.from_list([("ZZII", 1.0), ("IIXX", -0.5)]), "YIIY", SparsePauliOp("IZIZ")]]
    zipped = rng.uniform(-np.pi, np.pi, size=(2, ansatz.num_parameters))
    pubs = [(ansatz, obs, params), (ansatz, ["XXXX", "ZIII"], zipped)]
    est = EstimatorV2(client=client)
    job = est.run(pubs)
    assert len(job.task_ids) == 2                     # one task per PUB, submitted together
    res = job.result(timeout=60)
    ref = StatevectorEstimator().run(pubs).result()
    for got, want in zip(res, ref):
        assert got.data.evs.shape == want.data.evs.shape
        assert np.allclose(got.data.evs, want.data.evs, atol=1e-9)
    assert job.status() == JobStatus.DONE and job.done() and job.in_final_state()
    assert res[0].metadata["qsched"]["device"] == "aer0"
    est.close()


def test_estimator_precision_is_statistical(client, ansatz):
    params = np.linspace(0, 1, ansatz.num_parameters)
    est = EstimatorV2(client=client, default_precision=0.02)
    res = est.run([(ansatz, ["ZZII", "XIIX"], params)]).result()[0]
    exact = StatevectorEstimator().run([(ansatz, ["ZZII", "XIIX"], params)]).result()[0].data.evs
    assert res.metadata["target_precision"] == 0.02 and res.metadata["shots"] == 2500
    assert np.all(np.abs(res.data.evs - exact) < 5 * 0.02 + 1e-9)
    assert np.all(res.data.stds > 0)


def test_estimator_on_lightning_pool(client, ansatz):
    params = np.linspace(-1, 1, ansatz.num_parameters)
    est = EstimatorV2(client=client, pool="lightning")
    got = est.run([(ansatz, "ZXYZ", params)]).result()[0].data.evs
    want = StatevectorEstimator().run([(ansatz, "ZXYZ", params)]).result()[0].data.evs
    assert np.allclose(got, want, atol=1e-9)
    assert est.session.pool == "lightning"


def _chi_ok(counts: dict, probs: dict, shots: int) -> bool:
    for k in set(counts) | set(probs):
        p = probs.get(k, 0.0)
        if abs(counts.get(k, 0) - shots * p) > 6 * np.sqrt(shots * p * (1 - p)) + 3:
            return False
    return True


def test_sampler_registers_and_statistics(client):
    t = Parameter("t")
    qc = QuantumCircuit(QuantumRegister(3), ClassicalRegister(1, "a"), ClassicalRegister(2, "b"))
    qc.ry(t, 0)
    qc.cx(0, 1)
    qc.h(2)
    qc.measure(2, 0)
    qc.measure([0, 1], [1, 2])
    thetas = np.array([[0.3], [1.2], [2.5]])
    res = SamplerV2(client=client, default_shots=3000).run([(qc, thetas)]).result()[0]
    assert res.data.a.shape == (3,) and res.data.a.num_shots == 3000 and res.data.b.num_bits == 2
    for i, (th,) in enumerate(thetas):
        p1 = np.sin(th / 2) ** 2
        assert _chi_ok(res.data.b.get_counts(i), {"00": 1 - p1, "11": p1}, 3000)
        assert _chi_ok(res.data.a.get_counts(i), {"0": 0.5, "1": 0.5}, 3000)


def test_backend_target_and_backend_sampler(client, ansatz):
    backend = QschedBackend(client=client)
    assert backend.target.num_qubits == 16 and "cx" in backend.operation_names
    qc = ansatz.measure_all(inplace=False)
    isa = transpile(qc, backend, optimization_level=1)
    params = np.random.default_rng(2).uniform(size=(2, ansatz.num_parameters))
    res = BackendSamplerV2(backend=backend).run([(isa, params)], shots=2000).result()[0]
    for i in range(2):
        probs = Statevector(ansatz.assign_parameters(params[i])).probabilities_dict()
        assert _chi_ok(res.data.meas.get_counts(i), probs, 2000)
    be = BackendEstimatorV2(backend=backend, options={"default_precision": 0.03})
    ev = be.run([(ansatz, "ZZZZ", params[0])]).result()[0].data.evs
    exact = StatevectorEstimator().run([(ansatz, "ZZZZ", params[0])]).result()[0].data.evs
    assert abs(ev - exact) < 0.2


def test_backend_run_counts_and_memory(client):
    qc = QuantumCircuit(2, 2)
    qc.x(1)
    qc.measure([0, 1], [0, 1])
    other = QuantumCircuit(QuantumRegister(2), ClassicalRegister(1, "x"), ClassicalRegister(1, "y"))
    other.x(0)
    other.measure([0, 1], [0, 1])
    job = QschedBackend(client=client).run([qc, other], shots=17, memory=True)
    result = job.result(timeout=60)
    assert result.get_counts(0) == {"10": 17}
    assert result.get_memory(1) == ["0 1"] * 17
    assert job.status() == JobStatus.DONE


def test_same_bound_circuit_twice(client):
    qc = QuantumCircuit(2, 2)
    qc.x(1)
    qc.measure([0, 1], [0, 1])
    result = QschedBackend(client=client).run([qc, qc], shots=5, memory=True).result(timeout=60)
    assert result.get_memory(1) == ["10"] * 5


def test_errors(client):
    big = QuantumCircuit(17)
    big.h(range(17))
    with pytest.raises(BadRequest) as e:
        EstimatorV2(client=client).run([(big, "Z" * 17)])
    assert e.value.field and e.value.limit == 16
    # an instruction pool lightning cannot run (every gate decomposes; reset does not) is refused at
    # run(), not at result(): the daemon checks the template against what the pool's devices declare
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.reset(0)
    with pytest.raises(BadRequest) as e:
        EstimatorV2(client=client, pool="lightning").run([(qc, "ZZ")])
    assert e.value.field == "template" and "'reset'" in str(e.value) and "lightning" in str(e.value)
    qc.measure_all()
    with pytest.raises(BadRequest) as e:
        SamplerV2(client=client, pool="lightning").run([qc])
    assert e.value.field == "template" and "'reset'" in str(e.value)
    # pool aer runs it
    assert SamplerV2(client=client, pool="aer").run([qc], shots=10).result()[0].data.meas.num_shots == 10


def test_unrunnable_instruction_refused_at_run(client):
    """An instruction with no definition (an opaque gate) cannot run anywhere: refused at run(),
    before anything is sent, as a BadRequest that is also a QiskitError."""
    from qiskit.circuit import Gate
    from qiskit.exceptions import QiskitError
    qc = QuantumCircuit(1)
    qc.append(Gate("mystery", 1, []), [0])
    qc.measure_all()
    for prim, pub in ((SamplerV2(client=client), qc), (EstimatorV2(client=client), (qc.remove_final_measurements(
            inplace=False), "Z"))):
        with pytest.raises(BadRequest) as e:
            prim.run([pub])
        assert isinstance(e.value, QiskitError) and "'mystery'" in str(e.value) and e.value.field == "circuit"


def test_composite_instructions_run_on_every_pool(client):
    """real_amplitudes appended as one instruction, and a to_gate() composite: decomposed by each
    worker once per template, results equal the reference."""
    from qiskit.circuit.library import real_amplitudes
    inner = QuantumCircuit(2)
    inner.h(0)
    inner.cx(0, 1)
    qc = QuantumCircuit(2)
    qc.append(real_amplitudes(2, reps=1), [0, 1])
    qc.append(inner.to_gate(), [0, 1])
    params = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, -0.5, 0.25, 2.0]])
    want = StatevectorEstimator().run([(qc, ["ZZ", "XI"], params[:, None, :])]).result()[0].data.evs
    for pool in ("aer", "lightning"):
        got = EstimatorV2(client=client, pool=pool).run([(qc, ["ZZ", "XI"], params[:, None, :])]).result()[0]
        assert np.allclose(got.data.evs, want, atol=1e-9), pool


@pytest.mark.parametrize("pool", ["aer", "lightning"])
def test_seed_makes_samples_reproducible(client, pool):
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.ry(0.7, 1)
    qc.measure_all()
    s = SamplerV2(client=client, seed=7, pool=pool)
    a, b = (s.run([qc, qc], shots=500).result() for _ in range(2))
    assert a[0].data.meas == b[0].data.meas and a[1].data.meas == b[1].data.meas
    assert a[0].data.meas != a[1].data.meas            # PUBs of one run draw distinct streams
    assert SamplerV2(client=client, seed=7).seed == 7
    unseeded = SamplerV2(client=client, pool=pool).run([qc], shots=500).result()[0].data.meas
    assert unseeded != a[0].data.meas


def test_parameters_inside_control_flow_bodies_on_aer(client):
    """An angle inside if_test / for_loop bodies: pool aer answers what aer's own SamplerV2 answers."""
    from qiskit_aer.primitives import SamplerV2 as AerSampler
    x = Parameter("x")
    qc = QuantumCircuit(2, 2)
    qc.h(0)
    qc.measure(0, 0)
    with qc.if_test((qc.clbits[0], 1)):
        qc.rx(x, 1)
    with qc.for_loop(range(2)):
        qc.ry(x, 0)
    qc.measure(1, 1)
    rows = np.array([[0.3], [1.9]])
    got = SamplerV2(client=client, pool="aer", seed=5).run([(qc, rows, 400)]).result()[0].data.c
    want = AerSampler(seed=5).run([(qc, rows, 400)]).result()[0].data.c
    assert got == want


def test_empty_classical_register_and_no_registers(client):
    qc = QuantumCircuit(QuantumRegister(1, "q"), ClassicalRegister(0, "c1"), ClassicalRegister(1, "c2"))
    qc.h(0)
    qc.measure(0, 0)
    for pool in ("aer", "lightning"):
        res = SamplerV2(client=client, pool=pool).run([qc], shots=50).result()[0]
        assert res.data.c1.array.shape == (50, 0) and res.data.c2.num_shots == 50
    with pytest.warns(UserWarning, match="no output classical registers"):
        res = SamplerV2(client=client).run([QuantumCircuit(2)]).result()
    assert len(res[0].data) == 0


def test_cancel_queued_job(client):
    heavy = efficient_su2(12, reps=2)
    params = np.random.default_rng(0).uniform(size=(150, heavy.num_parameters))
    est = EstimatorV2(client=client)
    busy = [est.run([(heavy, "Z" * 12, params)]) for _ in range(2)]   # keep the aer device busy
    small = QuantumCircuit(2)
    small.h(0)
    job = est.run([(small, "ZZ")])
    assert job.cancel() is True
    assert job.status() == JobStatus.CANCELLED and job.cancelled() and job.in_final_state()
    with pytest.raises(QschedJobError):
        job.result(timeout=30)
    for b in busy:
        assert b.result(timeout=120)[0].data.evs.shape == (150,)


def test_non_linear_parameter_expressions_on_lightning(client):
    """x*y, x**2 as angles: estimates equal StatevectorEstimator's and samples run on pool lightning;
    a gradient task over them is refused at run() (its chain rule needs linear angles)."""
    x, y = Parameter("x"), Parameter("y")
    qc = QuantumCircuit(2)
    qc.rx(x * y, 0)
    qc.ry(x ** 2, 1)
    qc.cx(0, 1)
    rows = np.array([[0.4, 1.3], [-1.1, 0.7]])
    pub = (qc, ["ZZ", "XI"], rows[:, None, :])
    got = EstimatorV2(client=client, pool="lightning").run([pub]).result()[0].data.evs
    assert np.allclose(got, StatevectorEstimator().run([pub]).result()[0].data.evs, atol=1e-10)
    counts = SamplerV2(client=client, pool="lightning").run(
        [(qc.measure_all(inplace=False), rows, 100)]).result()[0].data.meas.get_counts()
    assert sum(counts.values()) == 200
    with client.session(pool="lightning") as s, pytest.raises(BadRequest, match="not linear") as info:
        s.submit("gradient", qc, rows, observables=["ZZ"])
    assert info.value.field == "tasks[0].template"
