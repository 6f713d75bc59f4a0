"""Cross-session batching (issue 10 item 6): on a device with a per-job overhead, waiting batches of
different sessions over the same template run in one device call; each session gets its own answers
and is charged its share of the measured time."""
from __future__ import annotations

import asyncio
import json

import numpy as np
from inprocess_harness import daemon, one_qubit, until

from qsched import wire


def qpu(merge: int, setup_s: float = 0.4) -> list[dict]:
    return [{"name": "qpu0", "type": "emulated-qpu", "pool": "qpu", "max_qubits": 5, "merge_batches": merge,
             "options": {"setup_s": setup_s, "rep_s": 0.0, "noise": False, "default_shots": 4000}}]


async def _estimate(api, s, h, angle: float) -> str:
    task = {"kind": "estimate", "template": h, "observables": [[["Z", 1.0]]],
            "params": wire.encode_array(np.array([[angle]]))}
    status, out = await api.call("POST", f"/v1/sessions/{s['id']}/tasks", {"tasks": [task]}, token=s["token"])
    assert status == 201, out
    return out["ids"][0]


def test_waiting_batches_of_other_sessions_share_one_device_call(tmp_path):
    async def body():
        async with daemon(tmp_path, qpu(merge=8)) as (d, api, _):
            sessions = [await api.session(pool="qpu", name=f"job{i}") for i in range(4)]
            # each its own template (Parameter UUIDs differ, as in separate processes): one job anyway
            hashes = [await api.template(s, one_qubit()) for s in sessions]
            angles = [0.0, 1.0, 2.0, 3.0]
            ids = [await _estimate(api, s, h, a) for s, h, a in zip(sessions, hashes, angles)]
            done = [(await api.wait(s, [tid]))[0] for s, tid in zip(sessions, ids)]
            merged = []
            for t, a in zip(done, angles):
                assert t["state"] == "DONE", t
                ev = wire.decode_tree(t["result"])["evs"][0][0]
                assert abs(ev - np.cos(a)) < 0.1, (a, ev)           # each session its own answer
                merged.append(t["meta"]["batches_merged"])
            # the first runs alone (the device was idle); the three that waited ran together
            assert max(merged) >= 2, merged
            await until(lambda: d.scheduler.idle())
            usage = [(await d.scheduler.store.session_usage(s["id"])).device_seconds for s in sessions]
            calls = {t["meta"]["batch_exec_s"] for t in done}
            # charged: each session its share, the shares adding up to the device time of the calls
            assert abs(sum(usage) - sum(calls)) < 1e-6 * len(calls) + 1e-9, (usage, calls)
            by_call: dict[float, list[float]] = {}
            for u, t in zip(usage, done):
                by_call.setdefault(t["meta"]["started_at"], []).append(u)
            for shares in by_call.values():       # one call's sessions pay equal parts of it (1 binding each)
                assert max(shares) - min(shares) < 1e-6, by_call
            assert any(len(shares) > 1 and shares[0] < 0.4 * 0.75 for shares in by_call.values()), by_call
    asyncio.run(body())


def test_merging_off_runs_each_session_alone(tmp_path):
    async def body():
        async with daemon(tmp_path, qpu(merge=1, setup_s=0.1)) as (d, api, _):
            sessions = [await api.session(pool="qpu") for _ in range(3)]
            h = [await api.template(s, one_qubit()) for s in sessions][0]
            ids = [await _estimate(api, s, h, 0.5) for s in sessions]
            done = [(await api.wait(s, [tid]))[0] for s, tid in zip(sessions, ids)]
            assert [t["meta"]["batches_merged"] for t in done] == [1, 1, 1]
            entries = [json.loads(b.entry()) for dev in d.scheduler.devices.values()
                       for b, _ in dev.outstanding.values()]
            assert all("merge" not in e for e in entries)
    asyncio.run(body())


def test_a_job_that_could_take_more_waits_merge_wait_s_for_them(tmp_path):
    devices = qpu(merge=4, setup_s=0.1)
    devices[0]["merge_wait_s"] = 1.0

    async def body():
        async with daemon(tmp_path, devices) as (d, api, _):
            a, b = [await api.session(pool="qpu") for _ in range(2)]
            h = await api.template(a, one_qubit())
            hb = await api.template(b, one_qubit())
            first = await _estimate(api, a, h, 0.3)            # the device is idle: taken at once
            await asyncio.sleep(0.2)
            second = await _estimate(api, b, hb, 0.3)          # arrives while the first waits for company
            ta, tb = (await api.wait(a, [first]))[0], (await api.wait(b, [second]))[0]
            assert ta["meta"]["batches_merged"] == tb["meta"]["batches_merged"] == 2
            assert ta["meta"]["batch"] != tb["meta"]["batch"]  # still two batches, each answered alone
    asyncio.run(body())
