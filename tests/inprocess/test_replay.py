"""Replay against a real daemon (embedded Redis, a real aer worker): a job's second session (same job
id, same user and account: a requeue) gets its first session's answers for the same requests, byte for
byte (shot counts included, though the sampler is unseeded), with no device execution and no charge,
until the first request that differs; another user's session with that job id, a purged record and a
pool with replay off get none."""
from __future__ import annotations

import asyncio

import numpy as np
from inprocess_harness import Api, daemon
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter

from qsched import wire

AER = [{"name": "aer0", "type": "aer", "pool": "aer"}]
ANGLES = [0.3, 1.1, 1.9]


def circuit() -> QuantumCircuit:
    qc = QuantumCircuit(1)
    qc.rx(Parameter("a"), 0)
    qc.measure_all()
    return qc


def task(template: str, angle: float) -> dict:
    return {"kind": "sample", "template": template, "shots": 256,
            "params": wire.encode_array(np.array([[angle]], dtype=np.float64))}


async def open_job(admin: Api, user: str, uid: int, job: str = "4242") -> dict:
    st, s = await admin.call("POST", "/v1/admin/sessions", {"user": user, "uid": uid, "job_id": job, "pool": "aer"})
    assert st == 201, s
    return s


async def run(api: Api, s: dict, template: str, angle: float) -> dict:
    st, out = await api.call("POST", f"/v1/sessions/{s['id']}/tasks", {"tasks": [task(template, angle)]},
                             token=s["token"])
    assert st == 201, out
    (res,) = await api.wait(s, out["ids"])
    assert res["state"] == "DONE", res
    return res


async def executed(sch, s: dict) -> int:
    """Tasks a device ran for the session (the worker's usage count: replayed ones are not there)."""
    return (await sch.store.session_usage(s["id"])).tasks


def replayed_total(sch) -> float:
    return sch.metrics.registry.get_sample_value("qsched_tasks_replayed_total", {"pool": "aer"}) or 0.0


def test_a_requeued_job_replays_its_prefix_and_runs_what_is_new(tmp_path):
    async def body():
        async with daemon(tmp_path, AER, daemon={"replay_ttl_s": 3600}) as (d, api, _):
            sch = d.scheduler
            admin = Api(sch.config.admin_socket_path)
            try:
                first = await open_job(admin, "alice", 1000)
                h = await api.template(first, circuit())
                originals = [await run(api, first, h, a) for a in ANGLES]
                assert await executed(sch, first) == 3
                await api.call("DELETE", f"/v1/sessions/{first['id']}", token=first["token"])

                # the requeued job: same job id and user; the same requests, then a new one
                again = await open_job(admin, "alice", 1000)
                replays = [await run(api, again, h, a) for a in ANGLES]
                for orig, rep in zip(originals, replays):
                    assert rep["meta"]["replayed"] is True and rep["meta"]["exec_s"] == 0.0
                    assert rep["result"] == orig["result"]          # the counts the first run saw
                assert await executed(sch, again) == 0
                assert (await sch.store.session_usage(again["id"])).device_seconds == 0.0
                assert replayed_total(sch) == 3
                st, view = await api.call("GET", f"/v1/sessions/{again['id']}", token=again["token"])
                assert view["replayed"] == 3
                new = await run(api, again, h, 2.5)
                assert "replayed" not in new["meta"] and await executed(sch, again) == 1
                st, rec = await api.call("DELETE", f"/v1/sessions/{again['id']}", token=again["token"])
                assert rec["replayed"] == 3 and rec["tasks"] == 1         # the ledger record says so too

                # another user's session with the job id: no replay (and the record stays alice's)
                other = await open_job(admin, "mallory", 1001)
                res = await run(api, other, h, ANGLES[0])
                assert "replayed" not in res["meta"] and await executed(sch, other) == 1
                await api.call("DELETE", f"/v1/sessions/{other['id']}", token=other["token"])

                # a changed byte ends the replay: what follows runs even where it matches again
                third = await open_job(admin, "alice", 1000)
                assert (await run(api, third, h, ANGLES[0]))["meta"]["replayed"] is True
                changed = float(np.nextafter(ANGLES[1], 10.0))
                assert "replayed" not in (await run(api, third, h, changed))["meta"]
                assert "replayed" not in (await run(api, third, h, ANGLES[2]))["meta"]
                assert await executed(sch, third) == 2 and replayed_total(sch) == 4
                await api.call("DELETE", f"/v1/sessions/{third['id']}", token=third["token"])

                # the record now holds the third run: a fourth replays all three of its requests
                fourth = await open_job(admin, "alice", 1000)
                for a in (ANGLES[0], changed, ANGLES[2]):
                    assert (await run(api, fourth, h, a))["meta"]["replayed"] is True
                await api.call("DELETE", f"/v1/sessions/{fourth['id']}", token=fourth["token"])

                # the admin: replay off on the pool, then a purged record
                st, out = await admin.call("POST", "/v1/admin/replay/pools/aer", {"enabled": False})
                assert st == 200 and out == {"pool": "aer", "replay": False}
                off = await open_job(admin, "alice", 1000)
                assert "replayed" not in (await run(api, off, h, ANGLES[0]))["meta"]
                await api.call("DELETE", f"/v1/sessions/{off['id']}", token=off["token"])
                st, _ = await admin.call("POST", "/v1/admin/replay/pools/aer", {"enabled": True})
                st, info = await admin.call("GET", "/v1/admin/replay/job/4242")
                assert st == 200 and info["user"] == "alice" and int(info["entries"]) == 3
                st, _ = await admin.call("DELETE", "/v1/admin/replay/job/4242")
                assert st == 200
                st, err = await admin.call("DELETE", "/v1/admin/replay/job/4242")
                assert st == 404 and err["error"]["field"] == "record"
                purged = await open_job(admin, "alice", 1000)
                assert "replayed" not in (await run(api, purged, h, ANGLES[0]))["meta"]
            finally:
                await admin.close()

    asyncio.run(body())


def test_chained_jobs_opt_in_with_a_resume_key_of_their_own_user(tmp_path):
    async def body():
        async with daemon(tmp_path, AER, daemon={"replay_ttl_s": 3600}) as (d, api, _):
            sch = d.scheduler
            admin = Api(sch.config.admin_socket_path)
            try:
                first = await api.session(pool="aer", resume="chain-7")       # job 1 (no job id here)
                h = await api.template(first, circuit())
                originals = [await run(api, first, h, a) for a in ANGLES[:2]]
                await api.call("DELETE", f"/v1/sessions/{first['id']}", token=first["token"])
                nxt = await api.session(pool="aer", resume="chain-7")         # job 2, a new job id
                for orig, a in zip(originals, ANGLES[:2]):
                    rep = await run(api, nxt, h, a)
                    assert rep["meta"]["replayed"] is True and rep["result"] == orig["result"]
                assert await executed(sch, nxt) == 0
                await api.call("DELETE", f"/v1/sessions/{nxt['id']}", token=nxt["token"])
                # the key belongs to its user: another's session naming it gets no replay
                st, other = await admin.call("POST", "/v1/admin/sessions", {"user": "mallory", "uid": 1001,
                                             "job_id": "55", "pool": "aer", "resume": "chain-7"})
                assert st == 201, other
                assert "replayed" not in (await run(api, other, h, ANGLES[0]))["meta"]
                st, err = await api.call("POST", "/v1/sessions", {"pool": "aer", "resume": 7})
                assert st == 400 and err["error"]["field"] == "resume"
            finally:
                await admin.close()
    asyncio.run(body())


def test_a_job_session_that_slurm_opened_takes_a_resume_key_before_its_first_task(tmp_path):
    """Under Slurm the job's session is opened by the plugin and attached by the client: QSCHED_RESUME
    then names the record through POST /v1/sessions/{sid}/resume, refused once the session ran a task."""
    async def body():
        async with daemon(tmp_path, AER, daemon={"replay_ttl_s": 3600}) as (d, api, _):
            sch = d.scheduler
            admin = Api(sch.config.admin_socket_path)
            try:
                runs = []
                for job in ("101", "102"):                      # two chained jobs: new job ids
                    s = await open_job(admin, "alice", 1000, job)
                    st, view = await api.call("POST", f"/v1/sessions/{s['id']}/resume", {"resume": "vqe-a"},
                                              token=s["token"])
                    assert st == 200, view
                    h = await api.template(s, circuit())
                    runs.append([await run(api, s, h, a) for a in ANGLES[:2]])
                    st, err = await api.call("POST", f"/v1/sessions/{s['id']}/resume", {"resume": "vqe-b"},
                                             token=s["token"])
                    assert st == 400 and err["error"]["field"] == "resume", err
                    st, rec = await api.call("DELETE", f"/v1/sessions/{s['id']}", token=s["token"])
                assert [r["meta"].get("replayed") for r in runs[1]] == [True, True] and rec["tasks"] == 0
                assert [r["result"] for r in runs[1]] == [r["result"] for r in runs[0]]
            finally:
                await admin.close()
    asyncio.run(body())
