"""Every endpoint driven with random and malformed input (hypothesis, bounded): never a 5xx, and the daemon
answers health within 100 ms afterwards (or a few times what it took before, on a loaded machine). Requests
go over the real unix socket as raw HTTP, so invalid JSON, lone surrogates and huge numbers reach the
daemon as a hostile client would send them."""
from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qiskit.circuit.library import efficient_su2

SETTINGS = settings(max_examples=int(os.environ.get("QSCHED_FUZZ_EXAMPLES", 120)), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["\ud800", "estimate", "gradient", "sample", "adjoint", "float64", "", "\x1b[2J"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def raw(socket_path: str, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> int:
    """One HTTP/1.1 request on a fresh connection; returns the status code."""
    head = [f"{method} {path} HTTP/1.1", "Host: qsched", f"Content-Length: {len(body)}",
            "Content-Type: application/json", "Connection: close",
            *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(socket_path)
        s.sendall("\r\n".join(head).encode("utf-8", "surrogatepass") + b"\r\n\r\n" + body)
        status = s.makefile("rb").readline().split()[1]
    return int(status)


def encode(v) -> bytes:
    return json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def target(qsched_daemon):
    c = qsched_daemon.client()
    s = c.open_session("null")
    qc = efficient_su2(2, reps=1)
    fut = s.submit("estimate", qc, np.zeros((1, qc.num_parameters)), observables=["ZZ"])
    fut.result(30)
    sock = str(qsched_daemon.state_dir / "qsched.sock")
    before = health_s(sock)
    yield {"sock": sock, "sid": s.id, "auth": {"Authorization": f"Bearer {s.token}"}, "tid": fut.id,
           "template": s.upload(qc)}
    s.close()
    # as fast as before the fuzzing (100 ms, or a few times what health took then on a loaded machine):
    # nothing the fuzz sent left the daemon busy
    after = health_s(sock)
    assert after < max(0.1, 5 * before), (after, before)


def health_s(sock: str, n: int = 5) -> float:
    """The median time of n health requests, each on a fresh connection."""
    took = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert raw(sock, "GET", "/v1/health") == 200
        took.append(time.perf_counter() - t0)
    return sorted(took)[n // 2]


def task_like(template: str):
    """Bodies shaped like tasks, with every field drawn from hostile values now and then."""
    field = lambda good: st.one_of(st.just(good), values)  # noqa: E731
    params = st.fixed_dictionaries({"dtype": field("float64"), "shape": field([1, 4]),
                                    "data": field("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")})
    return st.fixed_dictionaries({"kind": field("estimate"), "template": field(template), "params": params,
                                  "observables": field([[["ZZ", 1.0]]]), "shots": field(None),
                                  "method": field(None)})


@SETTINGS
@given(body=values | st.binary(max_size=64))
def test_open_session(target, body):
    data = body if isinstance(body, bytes) else encode(body)
    assert raw(target["sock"], "POST", "/v1/sessions", data) < 500


@SETTINGS
@given(data=st.data())
def test_submit(target, data):
    body = data.draw(st.one_of(values, task_like(target["template"]),
                               st.fixed_dictionaries({"tasks": st.lists(task_like(target["template"]), max_size=3),
                                                      "idempotency_key": values})))
    assert raw(target["sock"], "POST", f"/v1/sessions/{target['sid']}/tasks", encode(body), target["auth"]) < 500


@SETTINGS
@given(body=st.binary(max_size=200) | values.map(lambda v: {"qasm3": v}))
def test_upload_template(target, body):
    data = body if isinstance(body, bytes) else encode(body)
    headers = {**target["auth"]}
    assert raw(target["sock"], "POST", f"/v1/sessions/{target['sid']}/templates", data, headers) < 500


@SETTINGS
@given(body=values, wait=st.sampled_from(["", "?wait=inf", "?wait=-1", "?wait=nan", "?wait=1e400", "?wait=0.01"]))
def test_tasks_and_waits(target, body, wait):
    sock, auth = target["sock"], target["auth"]
    assert raw(sock, "POST", "/v1/tasks/wait", encode(body), auth) < 500
    assert raw(sock, "POST", "/v1/tasks/wait", encode({"ids": [target["tid"], body], "timeout": 0}), auth) < 500
    assert raw(sock, "GET", f"/v1/tasks/{target['tid']}{wait}", b"", auth) < 500


@SETTINGS
@given(segment=st.text(max_size=30), query=st.sampled_from(
    ["", "since=inf", "since=nan", "since=-1e308", "limit=0", "limit=-5", "limit=1e99", "since=x", "user=\x1b"]))
def test_paths_and_queries(target, segment, query):
    sock, auth = target["sock"], target["auth"]
    seg = "".join(c if c.isalnum() else f"%{ord(c) & 0xFF:02X}" for c in segment) or "x"
    for method, path in (("GET", f"/v1/sessions/{seg}"), ("GET", f"/v1/templates/{seg}"),
                         ("DELETE", f"/v1/tasks/{seg}"), ("GET", f"/v1/tasks/{seg}"),
                         ("POST", f"/v1/sessions/{seg}/attach"), ("GET", f"/v1/acct?{query}"),
                         ("GET", f"/v1/queue?{query}")):
        assert raw(sock, method, path, b"", auth) < 500, (method, path)


def test_the_malformed_requests_reported_get_4xx(target):
    """The concrete inputs of the report that got 500 before."""
    sock, auth, sid = target["sock"], target["auth"], target["sid"]
    deep = b"[" * 5000 + b"]" * 5000
    assert raw(sock, "POST", "/v1/sessions", deep) == 400
    assert raw(sock, "POST", "/v1/sessions", b'{"pool": "null", "name": "\\ud800"}') == 400
    assert raw(sock, "POST", "/v1/tasks/wait", b'{"ids": ["\\udc80.x"], "timeout": 0}', auth) == 400
    for bad in ([], {}, 1.5):
        task = {"kind": bad, "template": target["template"], "observables": [[["ZZ", 1.0]]]}
        assert raw(sock, "POST", f"/v1/sessions/{sid}/tasks", encode(task), auth) == 400
    task = {"kind": "estimate", "template": target["template"], "observables": [[["ZZ", 1.0]]],
            "params": {"dtype": "float64", "shape": [2**32, 2**32], "data": ""}}
    assert raw(sock, "POST", f"/v1/sessions/{sid}/tasks", encode(task), auth) == 400
    for q in ("since=inf", "since=nan", "limit=0", "limit=-1"):
        assert raw(sock, "GET", f"/v1/acct?{q}", b"", auth) == 400, q
