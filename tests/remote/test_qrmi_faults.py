"""Faults of the vendor's service, injected in the stand-in: every one survived with no double
submission, no double charge, and cancels that reach the service."""
import os
import signal
import time

import numpy as np
import pytest
from remote_harness import credentials, hung, qpu_device, redis_of, until, worker_pid
from qiskit import QuantumCircuit

from qsched import errors, keys


def _x_circuit():
    qc = QuantumCircuit(2)
    qc.x(1)
    qc.measure_all()
    return qc


def _daemon(fresh_daemon, standin, tmp_path, **options):
    return fresh_daemon(devices=[qpu_device(standin, credentials(tmp_path), **options)])


def _assert_answer(res, shots=100):
    assert res.counts() == {"10": shots}


def _usage(s):
    return s.status()["usage"]


def test_429_and_5xx_on_submit_are_retried_and_the_job_is_created_once(fresh_daemon, standin, tmp_path):
    d = _daemon(fresh_daemon, standin, tmp_path)
    standin.fault("POST", "/jobs", status=429, retry_after=1)
    standin.fault("POST", "/jobs", status=503)
    standin.fault("POST", "/jobs", status=500)
    s = d.client().open_session("qpu")
    _assert_answer(s.run("sample", _x_circuit(), shots=100, timeout=120))
    answered = standin.answered("POST", "/jobs")
    assert [st for st, _ in answered] == [429, 503, 500, 200]
    # QRMI hides the 429's Retry-After: qsched waits throttle_s (1 s here) after a 429, not its short backoff
    assert answered[1][1] - answered[0][1] >= 1.0
    assert len(standin.submissions()) == 1
    assert _usage(s)["tasks"] == 1
    s.close()


def test_5xx_and_429_while_polling_and_fetching_results_are_retried(fresh_daemon, standin, tmp_path):
    d = _daemon(fresh_daemon, standin, tmp_path)
    standin.fault("GET", r"/jobs/[^/]+", status=502, times=2)
    standin.fault("GET", r"/jobs/[^/]+", status=429, retry_after=1)
    standin.fault("GET", r"/jobs/[^/]+/results", status=500)
    s = d.client().open_session("qpu")
    _assert_answer(s.run("sample", _x_circuit(), shots=100, timeout=120))
    assert len(standin.submissions()) == 1
    assert standin.count("GET", r"/jobs/[^/]+/results") == 2          # one 500, one answer
    s.close()


def test_a_submit_that_times_out_is_waited_for_never_sent_twice(fresh_daemon, standin, tmp_path):
    """The service takes 4 s to answer POST /jobs (the client gives up after call_timeout_s = 2 s):
    whether the job exists is unknown, so the same call is waited for and its job id used."""
    d = _daemon(fresh_daemon, standin, tmp_path)
    standin.fault("POST", "/jobs", delay_s=4.0, passthrough=True)
    s = d.client().open_session("qpu")
    _assert_answer(s.run("sample", _x_circuit(), shots=100, timeout=120))
    assert standin.count("POST", "/jobs") == 1 and len(standin.submissions()) == 1
    assert "waiting for its answer, not re-sending" in d.log()
    s.close()


def test_a_status_poll_that_times_out_is_retried(fresh_daemon, standin, tmp_path):
    d = _daemon(fresh_daemon, standin, tmp_path)
    standin.fault("GET", r"/jobs/[^/]+", delay_s=4.0, passthrough=True)      # longer than call_timeout_s
    s = d.client().open_session("qpu")
    _assert_answer(s.run("sample", _x_circuit(), shots=100, timeout=120))
    assert len(standin.submissions()) == 1
    assert "did not answer task_status within 2 s" in d.log()
    s.close()


def test_a_job_that_fails_remotely_fails_its_task_with_the_vendors_reason(fresh_daemon, standin, tmp_path):
    d = _daemon(fresh_daemon, standin, tmp_path)
    standin.fail_next_jobs.append("Error 8041: calibration drift")
    s = d.client().open_session("qpu")
    with pytest.raises(errors.TaskFailed) as e:
        s.run("sample", _x_circuit(), shots=100, timeout=120)
    assert "calibration drift" in e.value.message and "remote job job-" in e.value.message
    assert len(standin.submissions()) == 1            # a failed job is billed: not submitted again
    _assert_answer(s.run("sample", _x_circuit(), shots=100, timeout=120))   # the device still serves
    s.close()


def test_an_unreadable_result_fails_its_task_not_the_worker(fresh_daemon, standin, tmp_path):
    d = _daemon(fresh_daemon, standin, tmp_path)
    standin.corrupt_next_results = 1
    s = d.client().open_session("qpu")
    with pytest.raises(errors.TaskFailed) as e:
        s.run("sample", _x_circuit(), shots=100, timeout=120)
    assert "cannot be read" in e.value.message
    pid = worker_pid(d)
    _assert_answer(s.run("sample", _x_circuit(), shots=100, timeout=120))
    assert worker_pid(d) == pid and len(standin.submissions()) == 2
    s.close()


def test_a_job_the_service_loses_is_submitted_again_once_then_fails(fresh_daemon, standin, tmp_path):
    d = _daemon(fresh_daemon, standin, tmp_path)
    standin.lose_next_jobs = 1
    s = d.client().open_session("qpu")
    _assert_answer(s.run("sample", _x_circuit(), shots=100, timeout=120))
    jobs = standin.submissions()
    assert len(jobs) == 2 and jobs[0].lost and jobs[1].status == "Completed"
    assert _usage(s)["tasks"] == 1
    standin.lose_next_jobs = 2                        # lost again after the resubmission: give up
    with pytest.raises(errors.TaskFailed) as e:
        s.run("sample", _x_circuit(), shots=100, timeout=120)
    assert "lost remote job" in e.value.message and e.value.field == "options.max_resubmits"
    assert len(standin.submissions()) == 4
    s.close()


def test_cancel_and_session_close_reach_the_remote_job(fresh_daemon, standin, tmp_path):
    standin.run_s = 30.0                              # the job would run long: only a cancel ends it
    d = _daemon(fresh_daemon, standin, tmp_path)
    c = d.client()
    s = c.open_session("qpu")
    fut = s.submit("sample", _x_circuit(), shots=100)
    job = until(lambda: next((j for j in standin.submissions() if j.status == "Running"), None), what="job running")
    fut.cancel()
    until(lambda: job.status == "Cancelled", what="remote cancel")
    assert job.cancel_requests == 1
    s2 = c.open_session("qpu")
    s2.submit("sample", _x_circuit(), shots=100)
    job2 = until(lambda: next((j for j in standin.submissions() if j is not job and j.status == "Running"), None),
                 what="second job running")
    t0 = time.monotonic()
    s2.close()                                        # close waits for running batches: the cancel ends it
    assert job2.status == "Cancelled" and job2.cancel_requests == 1
    assert time.monotonic() - t0 < 20
    s.close()


def test_a_worker_killed_mid_job_resumes_polling_the_same_remote_job(fresh_daemon, standin, tmp_path):
    standin.run_s = 4.0
    d = _daemon(fresh_daemon, standin, tmp_path)
    s = d.client().open_session("qpu")
    fut = s.submit("sample", _x_circuit(), shots=100)
    job = until(lambda: next((j for j in standin.submissions() if j.status == "Running"), None), what="job running")
    r = redis_of(d)
    token = until(lambda: r.get(keys.task_remote(fut.id)), what="journal pointer").decode()
    assert r.hget(keys.remote_job(token), "job").decode() == job.id      # written before it completed
    pid = worker_pid(d)
    os.kill(pid, signal.SIGKILL)
    _assert_answer(fut.result(120))
    assert worker_pid(d, old=pid) != pid
    assert standin.count("POST", "/jobs") == 1 and len(standin.submissions()) == 1
    assert f"resuming remote job {job.id}" in d.log()
    u = _usage(s)
    # charged once, the service's own quantum time (its execution span), not the restart's wall time
    assert u["tasks"] == 1 and abs(u["device_seconds"] - (job.finished - job.started)) < 0.01
    s.close()


def test_credentials_never_leave_the_worker(fresh_daemon, standin, tmp_path):
    from ibm_standin import API_KEY
    d = _daemon(fresh_daemon, standin, tmp_path)
    c = d.client()
    s = c.open_session("qpu")
    _assert_answer(s.run("sample", _x_circuit(), shots=100, timeout=120))
    assert API_KEY not in repr(c.devices()) and API_KEY not in d.log()
    pid = worker_pid(d)
    import psutil
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for p in procs + [psutil.Process(d.proc.pid)]:
        assert API_KEY not in " ".join(p.cmdline())
        assert all(API_KEY not in v for v in p.environ().values())
    assert API_KEY.encode() not in b"".join(v for k in redis_of(d).scan_iter("qsched:*")
                                             if redis_of(d).type(k) == b"string" for v in [redis_of(d).get(k) or b""])
    s.close()


def test_a_group_readable_credentials_file_is_refused_naming_the_path(standin, tmp_path):
    from qsched.config import parse_config
    path = credentials(tmp_path, mode=0o640)
    with pytest.raises(errors.ConfigError) as e:
        parse_config({"devices": [qpu_device(standin, path)]})
    assert path in e.value.message and "0640" in e.value.message and e.value.field == "devices[0].credentials_file"
    os.chmod(path, 0o600)
    assert parse_config({"devices": [qpu_device(standin, path)]}).devices[0].credentials_file == path


def test_estimates_survive_faults_and_equal_the_reference(fresh_daemon, standin, tmp_path):
    from qiskit.circuit.library import efficient_su2
    from qiskit.quantum_info import SparsePauliOp, Statevector
    d = _daemon(fresh_daemon, standin, tmp_path)
    standin.fault("POST", "/jobs", status=503)
    standin.fault("GET", r"/jobs/[^/]+", status=500)
    qc = efficient_su2(2, reps=1)
    params = np.random.default_rng(3).uniform(-1, 1, (4, qc.num_parameters))
    s = d.client().open_session("qpu")
    est = s.run("estimate", qc, params, observables=["ZZ", "XI"], shots=40000, timeout=120)
    ref = np.array([[Statevector(qc.assign_parameters(p)).expectation_value(SparsePauliOp(o)).real
                     for o in ("ZZ", "XI")] for p in params])
    assert np.all(np.abs(est.evs - ref) < 5 * np.maximum(est.stds, 0.005)), (est.evs, ref)
    assert len(standin.submissions()) == 1
    s.close()


def test_a_hung_worker_is_replaced_and_its_requeued_tasks_resume_the_same_remote_job(fresh_daemon, standin, tmp_path):
    """The worker is stopped (SIGSTOP) mid-job: the daemon sees no heartbeat, kills it and requeues its
    batch; the tasks come back to the next worker in a new batch, which follows their journal pointers
    to the same remote job. One of the two tasks is cancelled meanwhile: the other still gets its own
    rows of the job's results."""
    from qiskit.circuit import Parameter
    standin.run_s = 8.0
    d = fresh_daemon(devices=[qpu_device(standin, credentials(tmp_path))], extra={"daemon": {"heartbeat_timeout_s": 2}},
                     policy={"name": "fair-share", "max_batch_s": 10.0})      # both tasks in one batch
    theta = Parameter("t")
    qc = QuantumCircuit(1)
    qc.ry(theta, 0)
    qc.measure_all()
    s = d.client().open_session("qpu")
    zero, one = s.submit_many([{"kind": "sample", "circuit": qc, "params": np.array([[0.0]]), "shots": 200},
                               {"kind": "sample", "circuit": qc, "params": np.array([[np.pi]]), "shots": 200}])
    job = until(lambda: next((j for j in standin.submissions() if j.status == "Running"), None), what="job running")
    assert len(job.params["pubs"]) == 1 and len(job.params["pubs"][0][1]) == 2    # one job, one PUB, 2 rows
    pid = worker_pid(d)
    with hung(pid):
        until(lambda: "stopped beating: killing it" in d.log(), timeout=60, what="worker replaced")
        zero.cancel()
        res = one.result(120)
    assert res.counts() == {"1": 200}
    assert len(standin.submissions()) == 1 and standin.count("POST", "/jobs") == 1
    assert f"resuming remote job {job.id}" in d.log() and "requeued to pool qpu" in d.log()
    assert _usage(s)["tasks"] == 1
    s.close()


def test_a_remote_job_orphaned_while_no_worker_held_it_is_cancelled(fresh_daemon, standin, tmp_path):
    """The worker hangs mid-job and the session closes before its successor starts: no batch brings the
    task back, so the successor's sweep finds the journaled job unwanted and cancels it at the service."""
    standin.run_s = 60.0
    d = fresh_daemon(devices=[qpu_device(standin, credentials(tmp_path))], extra={"daemon": {"heartbeat_timeout_s": 2}})
    s = d.client().open_session("qpu")
    s.submit("sample", _x_circuit(), shots=100)
    job = until(lambda: next((j for j in standin.submissions() if j.status == "Running"), None), what="job running")
    pid = worker_pid(d)
    with hung(pid):
        until(lambda: "stopped beating: killing it" in d.log(), timeout=60, what="worker replaced")
        s.close()
        until(lambda: job.status == "Cancelled", timeout=60, what="orphan cancelled")
    assert job.cancel_requests == 1 and len(standin.submissions()) == 1
    until(lambda: f"remote job {job.id} cancelled" in d.log(), what="sweep logged")   # the successor's sweep
    until(lambda: not redis_of(d).smembers(keys.device_remote_jobs("qpu0")), what="journal swept")


def test_tasks_requeued_to_another_device_run_there_and_the_first_job_is_cancelled(fresh_daemon, standin, tmp_path):
    """Two QPU devices in one pool: the first one's worker hangs mid-job, the daemon requeues the task to
    the second device, which cannot resume a job on another device's service connection and submits it
    anew; the first device's next worker finds its job superseded and cancels it."""
    standin.run_s = 120.0                 # the first job runs long; the second (below) does not
    creds = credentials(tmp_path)
    d = fresh_daemon(devices=[qpu_device(standin, creds, "qpu0"), qpu_device(standin, creds, "qpu1")],
                     extra={"daemon": {"heartbeat_timeout_s": 2}})
    s = d.client().open_session("qpu")
    fut = s.submit("sample", _x_circuit(), shots=100)
    first = until(lambda: next((j for j in standin.submissions() if j.status == "Running"), None), what="running")
    r = redis_of(d)
    device = until(lambda: r.hget(keys.remote_job(r.get(keys.task_remote(fut.id)).decode()), "device"),
                   what="journal").decode()
    pid = worker_pid(d, device)
    standin.run_s = 0.2
    with hung(pid):
        res = fut.result(120)
        until(lambda: first.status == "Cancelled", timeout=60, what="superseded job cancelled")
    _assert_answer(res)
    assert res.meta["device"] != device
    jobs = standin.submissions()
    assert len(jobs) == 2 and jobs[1].status == "Completed" and first.cancel_requests == 1
    assert _usage(s)["tasks"] == 1
    s.close()
