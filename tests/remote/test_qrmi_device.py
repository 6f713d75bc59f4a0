"""The qrmi device end to end: sample and estimate answers equal the reference (aer, exact)."""
import numpy as np
from remote_harness import credentials, qpu_device, redis_of
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp, Statevector

from qsched import keys


def _bell_x():
    qc = QuantumCircuit(3)
    qc.x(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


def _ry():
    a, b = Parameter("a"), Parameter("b")
    qc = QuantumCircuit(2)
    qc.ry(a, 0)
    qc.ry(b, 1)
    qc.cx(0, 1)
    return qc


def test_sample_and_estimate_through_qrmi_equal_the_reference(fresh_daemon, standin, tmp_path):
    d = fresh_daemon(devices=[qpu_device(standin, credentials(tmp_path))])
    c = d.client()
    s = c.open_session("qpu")
    res = s.run("sample", _bell_x(), shots=2000, timeout=120)
    counts = res.counts()
    assert set(counts) <= {"100", "111"} and sum(counts.values()) == 2000      # qubit 2 always 1
    assert 800 < counts.get("100", 0) < 1200
    qc = _ry()
    params = np.array([[0.3, 1.1], [2.0, -0.4], [0.0, 0.0]])
    obs = ["ZI", "IZ", "ZZ", "XX"]
    est = s.run("estimate", qc, params, observables=obs, shots=20000, timeout=120)
    ref = np.array([[Statevector(qc.assign_parameters(p)).expectation_value(SparsePauliOp(o)).real for o in obs]
                    for p in params])
    assert est.evs.shape == (3, 4)
    assert np.all(np.abs(est.evs - ref) < 5 * np.maximum(est.stds, 0.007) + 1e-9), (est.evs, ref)
    # one remote job per task, each submitted once; the journal holds nothing for answered tasks
    assert len(standin.submissions()) == 2 and standin.count("POST", "/jobs") == 2
    assert all(j.status == "Completed" for j in standin.submissions())
    r = redis_of(d)
    assert not list(r.scan_iter(keys.task_remote("*")))
    s.close()


def test_qschedbackend_target_is_built_from_the_devices_describe(fresh_daemon, standin, tmp_path):
    from qiskit import transpile
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    from qsched.qiskit import QschedBackend
    d = fresh_daemon(devices=[qpu_device(standin, credentials(tmp_path))])
    c = d.client()
    desc = next(x for x in c.devices() if x["name"] == "qpu0")["worker"]
    real = FakeManilaV2()
    assert desc["basis_gates"] == sorted(real.configuration().basis_gates)
    assert sorted(map(tuple, desc["coupling_map"])) == sorted(map(tuple, real.configuration().coupling_map))
    assert desc["num_qubits"] == 5 and desc["max_shots"] == real.configuration().max_shots
    assert desc["max_circuits"] == real.configuration().max_experiments
    backend = QschedBackend("qpu", client=c)
    t = backend.target
    assert t.num_qubits == 5 and "h" not in t.operation_names and {"cx", "rz", "sx"} <= set(t.operation_names)
    assert sorted(t.build_coupling_map().get_edges()) == sorted(map(tuple, desc["coupling_map"]))
    qc = QuantumCircuit(3)
    qc.h(0)
    qc.cx(0, 2)
    qc.measure_all()
    isa = transpile(qc, backend, seed_transpiler=1)
    edges = set(map(tuple, desc["coupling_map"]))
    assert all(tuple(isa.find_bit(q).index for q in inst.qubits) in edges
               for inst in isa.data if inst.operation.num_qubits == 2)
    res = backend.run(isa, shots=500).result()           # the ISA circuit runs through the remote device
    assert set(res.get_counts()) <= {"000", "101"} and sum(res.get_counts().values()) == 500
    backend.close()


def test_batches_of_several_sessions_share_one_remote_job(fresh_daemon, standin, tmp_path):
    """Cross-session batching on a remote QPU: tasks of sessions that wait while a job runs go to the
    service as one job (one per-job overhead), each session answered with its own rows and charged once."""
    from remote_harness import until
    standin.run_s = 2.0
    d = fresh_daemon(devices=[qpu_device(standin, credentials(tmp_path))])
    c = d.client()
    first = c.open_session("qpu")
    head = first.submit("sample", _bell_x(), shots=300)
    until(lambda: any(j.status == "Running" for j in standin.submissions()), what="first job running")
    sessions = [c.open_session("qpu") for _ in range(3)]
    qc = QuantumCircuit(2)
    qc.x(0)
    qc.measure_all()
    futs = [s.submit("sample", qc if i != 1 else _bell_x(), shots=300) for i, s in enumerate(sessions)]
    head.result(60)
    results = [f.result(60) for f in futs]
    assert results[0].counts() == {"01": 300} and results[2].counts() == {"01": 300}
    assert set(results[1].counts()) <= {"100", "111"}
    jobs = standin.submissions()
    # the three waiting batches in one job; the two over one template share a PUB (600 shots)
    assert len(jobs) == 2 and sorted(p[2] for p in jobs[1].params["pubs"]) == [300, 600]
    assert {r.meta["batches_merged"] for r in results} == {3}
    for s in [first, *sessions]:
        assert s.status()["usage"]["tasks"] == 1
        s.close()
