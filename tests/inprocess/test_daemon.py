"""The core, started in this process: idempotent submits, cancels, refused writes, drains, restarts,
removed devices, accounts of record. Each test runs a real Daemon on a real embedded Redis."""
from __future__ import annotations

import asyncio
import time

import redis.asyncio as aredis
from inprocess_harness import daemon, embedded_redis, one_qubit, until

from qsched import keys
from qsched.models import Batch, Task

NULL = [{"name": "null0", "type": "null", "pool": "null"}]


def slow(name="slow0", delay=0.4, pool="slow"):
    return {"name": name, "type": "null", "pool": pool, "options": {"delay_s": delay}}


def run(coro):
    return asyncio.run(coro)


def test_a_retried_submission_is_answered_with_the_first_ids_and_runs_once(tmp_path):
    async def body():
        async with daemon(tmp_path, NULL) as (d, api, _):
            s = await api.session(pool="null")
            h = await api.template(s, one_qubit())
            st1, first = await api.submit(s, h, 2, key="k-1")
            st2, again = await api.submit(s, h, 2, key="k-1")
            assert (st1, st2) == (201, 200) and again["ids"] == first["ids"]
            st3, other = await api.submit(s, h, 1, key="k-2")
            assert st3 == 201 and set(other["ids"]).isdisjoint(first["ids"])
            assert all(t["state"] == "DONE" for t in await api.wait(s, first["ids"] + other["ids"]))
            assert (await d.scheduler.store.session_usage(s["id"])).tasks == 3
            st, err = await api.call("POST", f"/v1/sessions/{s['id']}/tasks",
                                     {"tasks": [], "idempotency_key": "x" * 129}, token=s["token"])
            assert st == 400
    run(body())


def test_cancelling_a_scheduled_task_leaves_the_session_with_nothing_in_flight(tmp_path):
    async def body():
        async with daemon(tmp_path, [slow()]) as (d, api, _):
            s = await api.session(pool="slow")
            h = await api.template(s, one_qubit())
            ids = []
            for _ in range(3):      # one at a time: three batches (running, waiting, pending)
                ids += (await api.submit(s, h, 1))[1]["ids"]
            entry = d.scheduler.sessions[s["id"]]
            assert d.scheduler.tasks[ids[1]].state.value == "SCHEDULED"
            status, out = await api.call("DELETE", f"/v1/tasks/{ids[1]}", token=s["token"])
            assert status == 200 and out["state"] == "CANCELLED"
            states = {t["id"]: t["state"] for t in await api.wait(s, ids)}
            assert states == {ids[0]: "DONE", ids[1]: "CANCELLED", ids[2]: "DONE"}
            await until(lambda: d.scheduler.idle())
            assert entry.inflight == 0 and not entry.pending
    run(body())


def test_dispatching_resumes_after_redis_refuses_the_daemons_writes(tmp_path):
    """Redis refuses the daemon's writes (an ACL change: real NOPERM errors, the worker unaffected)
    while batches complete: the dispatcher's commit fails, the failure is logged and counted, the
    dispatcher restarts, and once writes are allowed again every acknowledged task completes once."""
    async def body():
        async with embedded_redis(tmp_path) as redis_server:
            root = aredis.Redis.from_url(redis_server.url)
            await root.execute_command("ACL", "SETUSER", "qd", "on", ">pw", "~*", "&*", "+@all")
            url = f"unix://qd:pw@{redis_server.socket}"
            async with daemon(tmp_path, [slow(delay=0.2)], redis_url=url, worker_url=redis_server.url) as (d, api, _):
                s = await api.session(pool="slow")
                h = await api.template(s, one_qubit())
                ids = (await api.submit(s, h, 1))[1]["ids"] + (await api.submit(s, h, 1))[1]["ids"]
                ids += (await api.submit(s, h, 4))[1]["ids"]       # running, waiting, four pending
                await root.execute_command("ACL", "SETUSER", "qd", "-@write")
                status, err = await api.submit(s, h, 1)
                assert status == 503 and err["error"]["field"] == "store"
                _, health = await api.call("GET", "/v1/health")
                assert (health["status"], health["redis"]) == ("degraded", "read-only")   # visibly
                errors = d.metrics.background_errors.labels("dispatcher")
                await until(lambda: errors._value.get() >= 1, timeout=5)
                await root.execute_command("ACL", "SETUSER", "qd", "+@all")
                done = await api.wait(s, ids, timeout=20)
                assert [t["state"] for t in done] == ["DONE"] * len(ids)
                assert (await d.scheduler.store.session_usage(s["id"])).tasks == len(ids)
                _, health = await api.call("GET", "/v1/health")
                assert health["redis"] == "ok"                                          # by itself
            await root.aclose()
    run(body())


def test_a_drain_requeues_waiting_batches_ends_with_the_running_one_and_the_next_daemon_runs_the_rest(tmp_path):
    async def body():
        async with embedded_redis(tmp_path) as redis_server:
            async with daemon(tmp_path, [slow(delay=1.0)], redis_url=redis_server.url) as (d, api, _):
                s = await api.session(pool="slow")
                h = await api.template(s, one_qubit())
                ids = []
                for _ in range(3):
                    ids += (await api.submit(s, h, 1))[1]["ids"]
                await until(lambda: d.scheduler.tasks[ids[0]].state.value == "SCHEDULED")
                t0 = time.monotonic()
                d.request_stop()
                await d._drain(d.scheduler)
                drained = time.monotonic() - t0
                ended = time.time()
                # it ended with the running batch (1 s), not after drain_timeout_s (10 s): soon after that
                # batch's end, measured where the worker wrote it (a loaded machine stretches both)
                finished = float(await d.scheduler.store.r.hget(keys.task(ids[0]), "finished") or 0)
                assert finished > 0, "the running batch did not end in the drain"
                assert ended - finished < 2.0 and drained < d.config.drain_timeout_s / 2, (ended - finished, drained)
                assert d.metrics.batches_requeued.labels("slow0", "recall")._value.get() == 1
            async with daemon(tmp_path / "2", [slow(delay=0.05)], redis_url=redis_server.url) as (d2, api2, _):
                done = await api2.wait(s, ids)
                assert [t["state"] for t in done] == ["DONE"] * 3
                assert (await d2.scheduler.store.session_usage(s["id"])).tasks == 3
    run(body())


def test_batches_of_a_device_removed_from_the_config_are_requeued_or_failed_by_name(tmp_path):
    async def body():
        async with embedded_redis(tmp_path) as redis_server:
            async with daemon(tmp_path, [slow("gone0", pool="p"), slow("a0", pool="p"),
                                         slow("lone0", pool="lonely")], workers=False,
                              redis_url=redis_server.url) as (d, api, _):
                sessions = {p: await api.session(pool=p) for p in ("p", "lonely")}
                tids = {}
                for pool, dev in (("p", "gone0"), ("lonely", "lone0")):
                    s = sessions[pool]
                    h = await api.template(s, one_qubit())
                    await api.submit(s, h, 1)                  # pending: no device is up
                    [t] = list(d.scheduler.sessions[s["id"]].pending)
                    tids[pool] = t.id
                    # what a daemon killed with a batch in that device's inbox leaves behind
                    b = Batch(id=f"b-{dev}", device=dev, session=s["id"], tasks=[t.id], created=time.time())
                    await d.scheduler.store.commit(None, [], [b])
            async with daemon(tmp_path / "2", [slow("a0", pool="p", delay=0.01)],
                              redis_url=redis_server.url) as (d2, api2, _):
                [ok] = await api2.wait(sessions["p"], [tids["p"]])
                assert ok["state"] == "DONE"
                [bad] = await api2.wait(sessions["lonely"], [tids["lonely"]], timeout=10)
                assert bad["state"] == "FAILED" and "lone0" in bad["error"]["message"]
    run(body())


def test_the_account_comes_from_the_record_and_only_admins_raise_weights(tmp_path):
    async def body():
        async with daemon(tmp_path, NULL, workers=False, auth={"admin_uids": []}, users={"root": ["chem", "phys"]},
                          policy={"weights": {"accounts": {"chem": 2}}}) as (d, api, _):
            s = await api.session(pool="null")
            assert s["account"] == "chem"
            assert d.scheduler.session_view(d.scheduler.sessions[s["id"]])["weight_effective"] == 2
            assert (await api.session(pool="null", account="phys"))["account"] == "phys"
            status, err = await api.call("POST", "/v1/sessions", {"pool": "null", "account": "bio"})
            assert status == 403 and err["error"]["field"] == "account"
            status, err = await api.call("POST", "/v1/sessions", {"pool": "null", "weight": 1000})
            assert status == 403 and err["error"]["field"] == "weight"
            status, err = await api.call("POST", "/v1/admin/sessions", {"user": "root", "uid": 0, "job_id": 1})
            assert status == 404        # admin routes exist only on the admin socket
    run(body())


def test_a_failing_background_task_is_logged_counted_and_restarted(tmp_path, caplog):
    async def body():
        async with daemon(tmp_path, NULL, workers=False) as (d, _, _):
            runs = []

            async def flaky():
                runs.append(1)
                if len(runs) < 3:
                    raise RuntimeError("boom")
                await asyncio.Event().wait()
            d.spawn("flaky", flaky)
            await until(lambda: len(runs) == 3)
            assert d.metrics.background_errors.labels("flaky")._value.get() == 2
    run(body())
    assert caplog.text.count("background task flaky failed") == 2 and "RuntimeError: boom" in caplog.text


def test_task_is_a_value_type_the_store_round_trips():
    t = Task("s.1", "s", "estimate", "h", 3, None, 7, 1.5)
    assert Task.from_redis({k: str(v) for k, v in t.to_redis().items()}).to_redis() == t.to_redis()


def test_a_submission_retried_on_the_next_daemon_gets_the_first_answer(tmp_path):
    async def body():
        async with embedded_redis(tmp_path) as redis_server:
            async with daemon(tmp_path, NULL, redis_url=redis_server.url) as (_, api, _):
                s = await api.session(pool="null")
                h = await api.template(s, one_qubit())
                status, first = await api.submit(s, h, 2, key="once")
                assert status == 201
            async with daemon(tmp_path / "2", NULL, redis_url=redis_server.url) as (d2, api2, _):
                status, again = await api2.submit(s, h, 2, key="once")      # this daemon never saw the key
                assert (status, again["ids"]) == (200, first["ids"])
                await api2.wait(s, first["ids"])
                assert (await d2.scheduler.store.session_usage(s["id"])).tasks == 2
    run(body())


def test_the_embedded_redis_is_restarted_and_open_sessions_carry_on(tmp_path):
    """kill -9 of the embedded Redis: the daemon restarts it from its AOF, and the open session
    (acknowledged more than a second before: AOF fsync is every second) keeps working, its tasks
    answered; writes get 503 until the index is fresh, never 404 or 500."""
    async def body():
        async with daemon(tmp_path, [slow(delay=0.05)]) as (d, api, _):
            s = await api.session(pool="slow")
            h = await api.template(s, one_qubit())
            first = (await api.submit(s, h, 3))[1]["ids"]
            assert [t["state"] for t in await api.wait(s, first)] == ["DONE"] * 3
            await asyncio.sleep(1.2)                      # the AOF's fsync interval
            server = d.embedded_redis
            old_pid = server.proc.pid
            server.proc.kill()
            await until(lambda: server.proc.pid != old_pid and server.proc.returncode is None, timeout=10)
            await until(lambda: d.scheduler.store_ok, timeout=10)
            more = None
            for _ in range(50):                           # writes answer 503 until the index is fresh
                status, out = await api.submit(s, h, 2, key="after-restart")
                if status in (200, 201):
                    more = out["ids"]
                    break
                assert status == 503, out
                await asyncio.sleep(0.1)
            assert more, "no submission accepted after the restart"
            assert [t["state"] for t in await api.wait(s, first + more)] == ["DONE"] * 5
            status, health = await api.call("GET", "/v1/health")
            assert health["redis"] == "ok"
    run(body())


def test_two_hundred_simultaneous_session_opens_all_succeed(tmp_path):
    """More requests than Redis connections wait for one (they got 500 from a full pool before)."""
    async def body():
        async with daemon(tmp_path, NULL, workers=False, redis={"max_connections": 8}) as (_, api, _):
            results = await asyncio.gather(*(api.call("POST", "/v1/sessions", {"pool": "null"})
                                             for _ in range(200)))
            assert [status for status, _ in results] == [201] * 200
    run(body())


def test_the_ledger_filters_on_the_server_newest_first_across_pages(tmp_path):
    async def body():
        async with daemon(tmp_path, NULL, workers=False, users={"root": ["chem", "phys"]}) as (d, api, _):
            sids = []
            for account in ("chem", "phys", "chem", "phys", "chem"):
                s = await api.session(pool="null", account=account)
                await api.call("DELETE", f"/v1/sessions/{s['id']}", token=s["token"])
                sids.append(s["id"])
            status, out = await api.call("GET", f"/v1/acct?session={sids[1]}")
            assert status == 200 and [r["session"] for r in out["records"]] == [sids[1]]
            status, out = await api.call("GET", "/v1/acct?account=chem&order=desc&limit=2")
            assert [r["session"] for r in out["records"]] == [sids[4], sids[2]]
            store = d.scheduler.store         # a filter spanning several pages still finds every match
            got = await store.accounting(0, 10, match=lambda r: r["account"] == "phys", page=2)
            assert [r["session"] for r in got] == [sids[1], sids[3]]
            got = await store.accounting(0, 10, newest_first=True, match=lambda r: r["account"] == "chem", page=2)
            assert [r["session"] for r in got] == [sids[4], sids[2], sids[0]]
    run(body())


def test_closing_a_session_while_its_batch_runs_keeps_that_usage_in_the_ledger(tmp_path):
    async def body():
        async with daemon(tmp_path, [slow(delay=0.8)]) as (d, api, _):
            s = await api.session(pool="slow")
            h = await api.template(s, one_qubit())
            ran = (await api.submit(s, h, 1))[1]["ids"]
            waiting = (await api.submit(s, h, 1))[1]["ids"]           # in the inbox behind it
            await until(lambda: d.scheduler.tasks[ran[0]].state.value == "SCHEDULED")
            await asyncio.sleep(0.2)                                  # the worker has taken the first
            status, record = await api.call("DELETE", f"/v1/sessions/{s['id']}", token=s["token"])
            assert status == 200
            assert record["tasks"] == 1 and record["device_seconds"] >= 0.7, record
            assert record["cancelled"] == 1
            status, out = await api.call("GET", f"/v1/acct?session={s['id']}")
            assert out["records"][0]["device_seconds"] == record["device_seconds"]
            status, task = await api.call("GET", f"/v1/tasks/{waiting[0]}", token=s["token"])
            assert task["state"] == "CANCELLED"
    run(body())


def test_a_paused_device_gets_nothing_and_its_state_survives_a_restart(tmp_path):
    from inprocess_harness import Api

    async def body():
        async with embedded_redis(tmp_path) as redis_server:
            devs = [slow("a0", pool="p", delay=0.3), slow("a1", pool="p", delay=0.3)]
            async with daemon(tmp_path, devs, redis_url=redis_server.url) as (d, api, _):
                admin = Api(d.config.admin_socket_path)
                status, out = await admin.call("POST", "/v1/admin/devices/a0/state",
                                               {"state": "paused", "reason": "recalibration"})
                assert status == 200 and out["state"] == "paused"
                status, _ = await api.call("POST", "/v1/admin/devices/a0/state", {"state": "online"})
                assert status == 404                        # not on the user socket
                status, err = await admin.call("POST", "/v1/admin/devices/a0/state", {"state": "asleep"})
                assert status == 400 and err["error"]["field"] == "state"
                s = await api.session(pool="p")
                h = await api.template(s, one_qubit())
                ids = []
                for _ in range(4):
                    ids += (await api.submit(s, h, 1))[1]["ids"]
                done = await api.wait(s, ids)
                assert {t["meta"]["device"] for t in done} == {"a1"}
                _, devices = await api.call("GET", "/v1/devices")
                assert {x["name"]: x["state"] for x in devices["devices"]} == {"a0": "paused", "a1": "online"}
                state = d.metrics.device_state                  # the metric says it too, one state at a time
                await until(lambda: state.labels("a0", "paused")._value.get() == 1)
                assert [state.labels("a0", x)._value.get() for x in ("online", "offline")] == [0, 0]
                assert state.labels("a1", "online")._value.get() == 1
                await admin.close()
            async with daemon(tmp_path / "2", devs, redis_url=redis_server.url) as (d2, api2, _):
                assert d2.scheduler.devices["a0"].state == "paused"
                admin = Api(d2.config.admin_socket_path)
                await admin.call("POST", "/v1/admin/devices/a0/state", {"state": "online"})
                await admin.close()
                ids = []
                for _ in range(4):
                    ids += (await api2.submit(s, h, 1))[1]["ids"]
                done = await api2.wait(s, ids)
                assert "a0" in {t["meta"]["device"] for t in done}
    run(body())


def test_every_series_is_exported_at_zero_from_the_start(tmp_path):
    async def body():
        async with daemon(tmp_path, NULL, workers=False) as (_, api, _):
            async with api.http.get("http://qsched/metrics") as r:
                text = await r.text()
            for series in ('qsched_tasks_submitted_total{kind="sample",pool="null"} 0.0',
                           'qsched_requests_rejected_total{code="bad_request"} 0.0',
                           'qsched_queue_wait_seconds_count{pool="null"} 0.0',
                           'qsched_batch_execution_seconds_count{device="null0"} 0.0',
                           'qsched_background_task_errors_total{task="dispatcher"} 0.0'):
                assert series in text, series
    run(body())


def test_systemd_is_told_when_the_daemon_is_ready_and_stopping(tmp_path, monkeypatch):
    import socket as socket_lib
    path = tmp_path / "notify.sock"
    rx = socket_lib.socket(socket_lib.AF_UNIX, socket_lib.SOCK_DGRAM)
    rx.bind(str(path))
    rx.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))

    async def body():
        async with daemon(tmp_path, NULL, workers=False):
            assert rx.recv(100) == b"READY=1"
    run(body())
    assert rx.recv(100) == b"STOPPING=1"
    rx.close()
