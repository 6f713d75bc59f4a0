"""Resource control (issue 21, items 1, 2 and 13): no small request makes the daemon or its Redis gather
an unbounded answer, no task may ask for a result larger than its pool allows, and no number or nesting
in a body gives a 5xx."""
from __future__ import annotations

import asyncio
import json
import socket
import time

import numpy as np
import redis as redis_lib
from inprocess_harness import daemon, one_qubit

from qsched import wire

NULL = [{"name": "null0", "type": "null", "pool": "null", "max_qubits": 20}]


async def _post(api, path: str, raw: bytes, token: str | None = None, ctype: str = "application/json"):
    headers = {"Content-Type": ctype, **({"Authorization": f"Bearer {token}"} if token else {})}
    async with api.http.post(f"http://qsched{path}", data=raw, headers=headers) as r:
        return r.status, await r.read()


def test_a_wait_names_each_task_once_and_gathers_at_most_the_answer_budget(tmp_path):
    async def body():
        async with daemon(tmp_path, NULL, daemon={"max_answer_bytes": 1 << 20}) as (d, api, _):
            s = await api.session(pool="null")
            h = await api.template(s, one_qubit())
            _, out = await api.submit(s, h, 3, bindings=40_000)          # ~0.85 MB stored per result
            ids = out["ids"]
            status, err = await api.call("POST", "/v1/tasks/wait", {"ids": [ids[0]] * 2}, token=s["token"])
            assert status == 400 and err["error"]["field"] == "ids"
            status, err = await api.call("POST", "/v1/tasks/wait", {"ids": ids * 40_000}, token=s["token"])
            assert status == 400 and err["error"]["limit"] == 100_000
            done: dict = {}
            for _ in range(20):
                todo = [t for t in ids if t not in done]
                got = await api.wait(s, todo, timeout=5)
                assert [t["id"] for t in got] == todo                   # one object per id, in order
                finals = [t for t in got if t["state"] == "DONE"]
                assert len(finals) <= 1                                  # two would pass the 1 MiB budget
                done.update((t["id"], t) for t in finals)
                if len(done) == 3:
                    break
            assert len(done) == 3 and all(len(t["result"]["evs"]["data"]) > 400_000 for t in done.values())
            r = redis_lib.Redis.from_url(d.redis_url)
            # the embedded Redis refuses writes past maxmemory rather than evict queue state, and drops a
            # client whose replies pile up, rather than be OOM-killed
            assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
            assert int(r.config_get("maxmemory")["maxmemory"]) > 0
            buffers = r.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
            assert buffers.startswith("normal 1073741824")
            r.close()
    asyncio.run(body())


def test_a_task_whose_result_would_pass_the_pools_limit_is_refused_at_submit(tmp_path):
    async def body():
        async with daemon(tmp_path, [{**NULL[0], "max_result_bytes": 1 << 20}], workers=False) as (_, api, _):
            s = await api.session(pool="null")
            h = await api.template(s, one_qubit())
            path = f"/v1/sessions/{s['id']}/tasks"

            def task(kind, bindings, **kw):
                return {"kind": kind, "template": h, "params": wire.encode_array(np.zeros((bindings, 1))), **kw}
            obs = {"observables": [[["Z", 1.0]]] * 10}
            for bad in (task("sample", 100_000, shots=100_000),           # 10 GB of samples from 0.8 MB
                        task("estimate", 10_000, **obs), task("gradient", 10_000, method="adjoint", **obs)):
                status, err = await api.call("POST", path, bad, token=s["token"])
                assert status == 400 and err["error"]["field"] == "task" and err["error"]["limit"] == 1 << 20, err
                assert "max_result_bytes" in err["error"]["message"]
            for ok in (task("sample", 100, shots=1000), task("estimate", 1000, **obs)):
                status, err = await api.call("POST", path, ok, token=s["token"])
                assert status == 201, err
    asyncio.run(body())


def test_huge_or_non_finite_numbers_and_deep_nesting_are_a_4xx_naming_the_field(tmp_path):
    async def body():
        async with daemon(tmp_path, NULL, workers=False) as (_, api, _):
            for weight in (b"1e4000", b"NaN", b"-Infinity", b"1" + b"0" * 400):
                status, raw = await _post(api, "/v1/sessions", b'{"pool": "null", "weight": %s}' % weight)
                assert status == 400 and b'"field": "weight"' in raw, (weight, raw)
            for huge, field in (("x" * 60_000, "class"), ("x" * (8 << 20), "body")):    # 8 MiB: item 3's limit
                status, err = await api.call("POST", "/v1/sessions", {"pool": "null", "class": huge})
                assert status in (400, 413) and err["error"]["field"] == field and len(str(err)) < 1000
            s = await api.session(pool="null")
            h = await api.template(s, one_qubit())
            _, out = await api.submit(s, h, 1)
            for timeout in (b"1e4000", b"NaN"):
                raw_wait = b'{"ids": ["%s"], "timeout": %s}' % (out["ids"][0].encode(), timeout)
                status, raw = await _post(api, "/v1/tasks/wait", raw_wait, s["token"])
                assert status == 400 and b'"field": "timeout"' in raw, (timeout, raw)
            path = f"/v1/sessions/{s['id']}/tasks"
            params = json.dumps(wire.encode_array(np.zeros((1, 1)))).encode()
            for coeff in (b"1e4000", b"NaN", b"Infinity", b"1" + b"0" * 400):
                task = b'{"kind": "estimate", "template": "%s", "params": %s, "observables": [[["Z", %s]]]}' % (
                    h.encode(), params, coeff)
                status, raw = await _post(api, path, task, s["token"])
                assert status == 400 and b'"field": "task.observables[0][0]"' in raw, (coeff, raw)
            deep = b"[" * 100_000 + b"]" * 100_000
            for where in (f"/v1/sessions/{s['id']}/templates", path, "/v1/tasks/wait"):
                status, raw = await _post(api, where, deep, s["token"])
                assert 400 <= status < 500, (where, raw)
    asyncio.run(body())


def test_the_caller_is_known_before_a_body_is_read_and_small_requests_have_small_limits(tmp_path):
    """Issue 21 item 3: an open is a few hundred bytes; a body from nobody is not read at all."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def body():
        async with daemon(tmp_path, NULL, workers=False, daemon={"tcp": f"127.0.0.1:{port}"}) as (_, api, _):
            status, raw = await _post(api, "/v1/sessions", b'{"pool": "null", "name": "%s"}' % (b"x" * (1 << 20)))
            assert status == 413 and json.loads(raw)["error"]["limit"] == 64 << 10, raw
            for path in ("/v1/sessions", "/v1/tasks/wait"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                # a body announced and never sent: answered at once, not after daemon.body_timeout_s
                writer.write(f"POST {path} HTTP/1.1\r\nHost: q\r\nContent-Type: application/json\r\n"
                             f"Content-Length: 3000000\r\n\r\n".encode())
                status_line = await asyncio.wait_for(reader.readline(), 2)
                assert b" 401 " in status_line, (path, status_line)
                writer.close()
    asyncio.run(body())


def test_one_user_may_hold_at_most_max_sessions_per_user_open(tmp_path):
    """Issue 21 item 8: a loop opening sessions (10,000 in 8.5 s) starved everyone; the limit is per user
    and named in the refusal, and a closed session frees its place."""
    async def body():
        async with daemon(tmp_path, NULL, workers=False, daemon={"max_sessions_per_user": 3}) as (d, api, _):
            opened = [await api.session(pool="null") for _ in range(3)]
            status, err = await api.call("POST", "/v1/sessions", {"pool": "null"})
            assert status == 409 and err["error"]["field"] == "daemon.max_sessions_per_user", err
            assert err["error"]["limit"] == 3 and "3 open sessions" in err["error"]["message"]
            status, _ = await api.call("DELETE", f"/v1/sessions/{opened[0]['id']}", token=opened[0]["token"])
            assert status == 200
            assert (await api.session(pool="null"))["id"]
    asyncio.run(body())


def test_a_batch_that_outlives_its_sessions_close_is_still_charged(tmp_path):
    """Issue 21 item 4: a session closed while its batch runs past drain_timeout_s wrote its ledger record
    without that batch: the device ran it for no ledger, fair share or quota. Now its end charges the
    policy's usage and adds a second ledger record of the difference."""
    slow = [{"name": "slow0", "type": "null", "pool": "null", "options": {"delay_s": 2.0}}]

    async def body():
        async with daemon(tmp_path, slow, daemon={"drain_timeout_s": 0.3}) as (d, api, _):
            s = await api.session(pool="null")
            h = await api.template(s, one_qubit())
            _, out = await api.submit(s, h, 1)
            for _ in range(100):           # running on the device
                st, t = await api.call("GET", f"/v1/tasks/{out['ids'][0]}", token=s["token"])
                if t.get("state") == "RUNNING":
                    break
                await asyncio.sleep(0.05)
            st, first = await api.call("DELETE", f"/v1/sessions/{s['id']}", token=s["token"])
            assert st == 200 and first["device_seconds"] < 1.0, first
            records: list = []
            for _ in range(100):
                st, acct = await api.call("GET", "/v1/acct?since=0")
                records = [r for r in acct["records"] if r["session"] == s["id"]]
                if len(records) == 2:
                    break
                await asyncio.sleep(0.1)
            assert [bool(r.get("late")) for r in records] == [False, True], records
            assert sum(r["device_seconds"] for r in records) >= 1.9, records
            assert sum(r["tasks"] for r in records) == 1, records
            used = d.scheduler.usage.get("user", s["user"], time.time())
            assert used >= 1.9, used           # fair share saw it too
    asyncio.run(body())
