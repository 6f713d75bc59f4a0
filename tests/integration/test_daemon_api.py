"""The daemon over its real unix socket, real Redis and real worker processes."""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit.library import efficient_su2
from qiskit.primitives import StatevectorEstimator
from qiskit.quantum_info import SparsePauliOp

from qsched import errors, wire
from qsched.client import task_body


def raw(client, method, path, body=None, headers=None):
    """A request whose errors come back as (status, json) instead of exceptions."""
    try:
        return 200, client._t.request(method, path, body=body, headers=headers)
    except errors.QschedError as e:
        return e.status, {"field": e.field, "limit": e.limit, "message": e.message}


@pytest.fixture
def aer_session(client):
    s = client.open_session("aer", name="api-test")
    yield s
    s.close()


def test_estimate_and_gradient_match_reference(aer_session):
    qc = efficient_su2(3, reps=1)
    p = np.random.default_rng(3).uniform(-1, 1, (4, qc.num_parameters))
    obs = [SparsePauliOp.from_list([("ZZI", 1.0), ("IXX", 0.3)]), SparsePauliOp("ZII")]
    ref = StatevectorEstimator().run([(qc, obs, p[:, None, :])]).result()[0].data.evs
    r = aer_session.run("estimate", qc, p, observables=obs)
    np.testing.assert_allclose(r.evs, ref, atol=1e-10)
    g = aer_session.run("gradient", qc, p, observables=obs)
    eps = 1e-6
    for j in (0, 5):
        e = np.zeros(qc.num_parameters)
        e[j] = eps
        fd = (StatevectorEstimator().run([(qc, obs, (p + e)[:, None, :])]).result()[0].data.evs
              - StatevectorEstimator().run([(qc, obs, (p - e)[:, None, :])]).result()[0].data.evs) / (2 * eps)
        np.testing.assert_allclose(g.jacobian[:, :, j], fd, atol=1e-6)


def test_sample_counts_follow_the_circuit(aer_session):
    qc = QuantumCircuit(2)
    qc.x(0)
    qc.measure_all()
    r = aer_session.run("sample", qc, None, shots=200)
    assert r.counts() == {"01": 200}


def test_template_sent_once_then_by_hash(client, aer_session):
    qc = efficient_su2(2, reps=1)
    h = aer_session.upload(qc)
    assert client._t.request("GET", f"/v1/templates/{h}")["num_qubits"] == 2
    r = aer_session.run("estimate", h, np.zeros((1, qc.num_parameters)), observables=["ZZ"])
    assert r.evs.shape == (1, 1) and r.evs[0, 0] == pytest.approx(1.0)


def test_merged_tasks_share_a_batch(client):
    # on null: the merge bound (policy.max_batch_s) compares estimated device time, and aer's learned
    # per-binding cost comes from the 12-qubit circuits of other tests (and grows on a loaded machine)
    s = client.open_session("null")
    qc = efficient_su2(2, reps=1)
    futs = s.submit_many([dict(kind="estimate", circuit=qc, params=np.zeros((2, qc.num_parameters)),
                               observables=["ZZ"]) for _ in range(5)])
    res = s.wait(futs, timeout=60)
    batches = {r.meta["batch"] for r in res}
    assert len(batches) < 5      # at least some of the five tasks ran in one simulator call
    s.close()


# ----------------------------------------------------------------------------------------- bad input
def _post_task(client, s, body):
    return raw(client, "POST", f"/v1/sessions/{s.id}/tasks", body=body, headers=s._auth())


def test_bad_input_names_the_field_and_daemon_keeps_serving(client, aer_session):
    s = aer_session
    qc = efficient_su2(2, reps=1)
    h = s.upload(qc)
    P = qc.num_parameters
    good = task_body("estimate", h, np.zeros((1, P)), observables=["ZZ"])
    cases = {
        "undecodable QPY": (raw(client, "POST", f"/v1/sessions/{s.id}/templates", body=b"\x00garbage" * 50,
                                headers={**s._auth(), "Content-Type": "application/x-qpy"}), 400, "template"),
        "unknown template": (_post_task(client, s, {**good, "template": "ab" * 32}), 404, "task.template"),
        "wrong parameter count": (_post_task(client, s, {**good, "params": wire.encode_array(np.zeros((1, P + 1)))}),
                                  400, "task.params"),
        "shots over limit": (_post_task(client, s, {**good, "shots": 10**9}), 400, "task.shots"),
        "bad kind": (_post_task(client, s, {**good, "kind": "teleport"}), 400, "task.kind"),
        "bad observable": (_post_task(client, s, {**good, "observables": [[["ZZZZ", 1.0]]]}), 400,
                           "task.observables[0][0]"),
        "not JSON": (raw(client, "POST", f"/v1/sessions/{s.id}/tasks", body=b"{nope",
                         headers={**s._auth(), "Content-Type": "application/json"}), 400, "body"),
        "unknown session": (raw(client, "POST", "/v1/sessions/ffffffffffff/tasks", body=good), 404, "session"),
        "unknown pool": (raw(client, "POST", "/v1/sessions", body={"pool": "dwave"}), 400, "pool"),
        "bad wait": (raw(client, "GET", f"/v1/tasks/{s.id}.x?wait=soon"), 400, "wait"),
    }
    for name, ((status, err), want_status, field) in cases.items():
        assert status == want_status, (name, status, err)
        assert err["field"] == field, (name, err)
    # limits are named where there is one
    assert cases["shots over limit"][0][1]["limit"] == 100000
    assert cases["wrong parameter count"][0][1]["limit"] == P
    # and the daemon still answers real work
    assert s.run("estimate", h, np.zeros((1, P)), observables=["ZZ"]).evs[0, 0] == pytest.approx(1.0)


def test_too_many_qubits_for_the_pool(client, aer_session):
    big = QuantumCircuit(17)        # the test aer pool allows 16
    big.h(range(17))
    status, err = raw(client, "POST", f"/v1/sessions/{aer_session.id}/templates", body=wire.dump_qpy(big),
                      headers={**aer_session._auth(), "Content-Type": "application/x-qpy"})
    assert status == 400 and err["field"] == "template" and err["limit"] == 16


def test_body_over_the_size_limit(fresh_daemon):
    d = fresh_daemon(devices=[{"name": "null0", "type": "null"}], extra={"daemon": {"max_body_bytes": 65536}})
    c = d.client()
    s = c.open_session("null")
    qc = efficient_su2(2, reps=1)
    h = s.upload(qc)
    huge = task_body("estimate", h, np.zeros((20_000, qc.num_parameters)), observables=["ZZ"])
    status, err = raw(c, "POST", f"/v1/sessions/{s.id}/tasks", body=huge, headers=s._auth())
    assert status == 413 and err["field"] == "body" and err["limit"] == 65536
    assert s.run("estimate", h, np.zeros((1, qc.num_parameters)), observables=["ZZ"]).evs.shape == (1, 1)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second Unix user")
def test_another_users_session_is_invisible_and_untouchable(qsched_daemon, client, portable_python):
    s = client.open_session("null", name="root-owned")
    qc = efficient_su2(2, reps=1)
    h = s.upload(qc)
    fut = s.submit("estimate", h, np.zeros((1, qc.num_parameters)), observables=["ZZ"])
    fut.result(30)
    script = textwrap.dedent(f"""
        import json, qsched
        from qsched import errors
        c = qsched.Client({qsched_daemon.url!r})
        out = {{"listed": [x["id"] for x in c.sessions()]}}
        for name, (m, p, h) in {{
            "show": ("GET", "/v1/sessions/{s.id}", {{}}),
            "submit": ("POST", "/v1/sessions/{s.id}/tasks", {{}}),
            "result": ("GET", "/v1/tasks/{fut.id}", {{}}),
            "cancel": ("DELETE", "/v1/tasks/{fut.id}", {{}}),
            "close": ("DELETE", "/v1/sessions/{s.id}", {{}}),
            "forged token": ("GET", "/v1/sessions/{s.id}", {{"Authorization": "Bearer " + "A" * 43}}),
        }}.items():
            try:
                c._t.request(m, p, body={{}} if m == "POST" else None, headers=h)
                out[name] = 200
            except errors.QschedError as e:
                out[name] = e.status
        mine = c.open_session("null")
        out["own session"] = mine.status()["user"]
        mine.close()
        out["ledger users"] = sorted({{r["user"] for r in c.accounting()}})
        print(json.dumps(out))
    """)
    nobody = pwd.getpwnam("nobody")
    for d in [qsched_daemon.state_dir, *qsched_daemon.state_dir.parents]:   # pytest's tmp dirs are 0700
        if str(d) in ("/", "/tmp"):
            break
        os.chmod(d, os.stat(d).st_mode | 0o005)
    # the portable Python: nobody may not reach this clone or the venv's interpreter (a 0700 home)
    res = subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                          portable_python.exe, "-c", script], capture_output=True, text=True, timeout=180,
                         env={**os.environ, **portable_python.env, "HOME": "/tmp", "QSCHED_RETRY_S": "10"}, cwd="/")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert s.id not in out["listed"]
    for k in ("show", "submit", "result", "cancel", "close", "forged token"):
        assert out[k] == 403, (k, out)
    assert out["own session"] == "nobody"
    assert out["ledger users"] == ["nobody"]            # root's closed sessions are not shown to nobody
    assert s.status()["state"] == "OPEN"
    s.close()


def test_cancel_pending_task(fresh_daemon):
    d = fresh_daemon(devices=[{"name": "slow0", "type": "null", "pool": "slow", "options": {"delay_s": 0.5}}])
    c = d.client()
    s = c.open_session("slow")
    qc = efficient_su2(2, reps=1)
    futs = s.submit_many([dict(kind="estimate", circuit=qc, params=np.zeros((1, qc.num_parameters)),
                               observables=["ZZ"])] * 1 + [dict(kind="sample", circuit=qc,
                                                                params=np.zeros((1, qc.num_parameters)), shots=10)] * 3)
    # the 2nd..4th are not mergeable with the 1st; the last one is still pending while the first runs
    assert futs[-1].cancel() == "CANCELLED"
    assert futs[0].result(30).evs.shape == (1, 1)
    with pytest.raises(errors.TaskCancelled):
        futs[-1].result(5)
    s.close()


def test_close_session_cancels_pending_and_reports_usage(fresh_daemon):
    d = fresh_daemon(devices=[{"name": "slow0", "type": "null", "pool": "slow", "options": {"delay_s": 0.3}}],
                     policy={"name": "fifo", "merge": False})
    c = d.client()
    s = c.open_session("slow")
    qc = efficient_su2(2, reps=1)
    futs = s.submit_many([dict(kind="estimate", circuit=qc, params=np.zeros((1, qc.num_parameters)),
                               observables=["ZZ"])] * 6)
    futs[0].result(30)
    rec = s.close()
    assert rec["cancelled"] >= 2 and rec["tasks"] >= 1 and rec["device_seconds"] > 0
    states = [f.state() for f in futs]
    assert states.count("CANCELLED") == rec["cancelled"]


def test_metrics_endpoint(client, aer_session):
    qc = efficient_su2(2, reps=1)
    aer_session.run("estimate", qc, np.zeros((1, qc.num_parameters)), observables=["ZZ"])
    text = client._t.request("GET", "/metrics").decode()
    for name in ("qsched_device_busy_seconds_total", "qsched_tasks_submitted_total", "qsched_tasks_completed_total",
                 "qsched_tasks_pending", "qsched_queue_wait_seconds_bucket", "qsched_batch_execution_seconds_bucket",
                 "qsched_sessions_open"):
        assert name in text, name
    busy = [l for l in text.splitlines() if l.startswith('qsched_device_busy_seconds_total{device="aer0"}')]
    assert busy and float(busy[0].split()[-1]) > 0


def test_cli_listings(qsched_daemon, client):
    s = client.open_session("null", name="cli-visible")
    env = {**os.environ, "QSCHED_URL": qsched_daemon.url}
    out = subprocess.run([sys.executable, "-m", "qsched", "session", "list", "--json"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert s.id in [x["id"] for x in json.loads(out.stdout)["sessions"]]
    table = subprocess.run([sys.executable, "-m", "qsched", "device", "list"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert "aer0" in table.stdout and "NAME" in table.stdout
    top = subprocess.run([sys.executable, "-m", "qsched", "top", "--once"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert top.returncode == 0 and "policy fair-share" in top.stdout and s.id in top.stdout
    queue = subprocess.run([sys.executable, "-m", "qsched", "queue", "--json"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert json.loads(queue.stdout)["pools"]["aer"]["devices"] == ["aer0"]
    qc = efficient_su2(2, reps=1)
    s.run("estimate", qc, np.zeros((3, qc.num_parameters)), observables="ZZ")
    s.close()
    acct = subprocess.run([sys.executable, "-m", "qsched", "acct", "--json", "--since", "1h"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert acct.returncode == 0, acct.stderr
    rec = next(r for r in json.loads(acct.stdout)["records"] if r["session"] == s.id)
    assert rec["tasks"] == 1 and rec["circuits"] == 3 and rec["device_seconds"] >= 0
    by_user = subprocess.run([sys.executable, "-m", "qsched", "acct", "--by", "user"], capture_output=True,
                             text=True, env=env, timeout=60)
    assert "DEVICE_SECONDS" in by_user.stdout and "root" in by_user.stdout


def test_qasm3_template_binds_parameters_by_name(client, aer_session):
    """An OpenQASM 3 round trip renames and reorders parameters: the template reports its parameter
    names in column order so a client binds by name."""
    src = """OPENQASM 3.0; include "stdgates.inc";
    input float[64] zeta; input float[64] alpha;
    qubit[2] q; rx(zeta) q[0]; ry(alpha) q[1];"""
    s = aer_session
    info = client._t.request("POST", f"/v1/sessions/{s.id}/templates", body={"qasm3": src}, headers=s._auth())
    assert sorted(info["parameters"]) == ["alpha", "zeta"] and info["num_qubits"] == 2
    values = {"zeta": np.pi, "alpha": 0.0}           # qubit 0 flipped, qubit 1 untouched
    row = np.array([[values[n] for n in info["parameters"]]])
    r = s.run("estimate", info["hash"], row, observables=["IZ", "ZI"])
    np.testing.assert_allclose(r.evs[0], [-1.0, 1.0], atol=1e-12)
    status, err = raw(client, "POST", f"/v1/sessions/{s.id}/templates", body={"qasm3": "OPENQASM 3.0; qubit q; foo q;"},
                      headers=s._auth())
    assert status == 400 and err["field"] == "qasm3"


def test_an_expired_template_is_uploaded_again(fresh_daemon, tmp_path):
    """Templates expire in Redis when unused for daemon.template_ttl_s. A client that uploaded one
    before sends it again, transparently, when the daemon answers that it is gone."""
    import redis as redis_lib
    from qsched import keys
    dev = [{"name": "null0", "type": "null"}]
    d = fresh_daemon(state_dir=tmp_path / "st", devices=dev)
    s = d.client().open_session("null")
    qc = efficient_su2(2, reps=2)
    h = s.upload(qc)
    sock = str(d.state_dir / "redis" / "redis.sock")
    assert 0 < redis_lib.Redis(unix_socket_path=sock).ttl(keys.template(h)) <= 7 * 86400
    d.stop()
    d2 = fresh_daemon(state_dir=tmp_path / "st", devices=dev)   # nothing cached in the new daemon
    r = redis_lib.Redis(unix_socket_path=sock)
    r.delete(keys.template(h))                                    # as if it had expired
    status, err = raw(d2.client(), "GET", f"/v1/templates/{h}")
    assert status == 404 and err["field"] == "template"
    assert s.run("estimate", qc, np.zeros((1, qc.num_parameters)), observables="ZZ").evs.shape == (1, 1)
    assert r.exists(keys.template(h))
