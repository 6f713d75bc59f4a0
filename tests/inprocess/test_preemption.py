"""Preemption at batch boundaries against a real daemon: a Daemon in this process on its embedded Redis,
with real worker processes (started by the daemon's supervisor, null devices).

- the race: 1,000 recalls of batches waiting in inboxes while the workers BLMOVE them; no task is lost,
  none runs twice, and every session's tasks are dispatched (finally) in the order they were submitted;
- an interactive session's task does not wait behind a batch-class batch queued in the inbox (and with
  `preempt: false` it does: the figures are printed, with and without)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aredis
import yaml
from inprocess_harness import Api, one_qubit, until

from qsched import keys, wire
from qsched.config import load_config
from qsched.daemon import Daemon
from qsched.integration import SlurmIntegration

CLASSES = {"interactive": {"tier": 1}, "batch": {"tier": 0}}


@contextlib.asynccontextmanager
async def daemon_with_workers(tmp: Path, devices: list[dict], policy: dict):
    """A Daemon whose supervisor starts one real worker process per device (they read the same file)."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "qsched.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp / "state"), "devices": devices, "policy": policy,
        "daemon": {"tcp": None, "heartbeat_timeout_s": 2.0, "drain_timeout_s": 10}}))
    cfg = load_config(path)
    d = Daemon(cfg, config_path=str(path), hooks=SlurmIntegration())
    await d.startup()
    api = Api(cfg.socket_path)
    try:
        await until(lambda: all(dev.alive for dev in d.scheduler.devices.values()), timeout=60)
        yield d, api
    finally:
        await api.close()
        await d.shutdown()


def task(h: str) -> dict:
    return {"kind": "estimate", "template": h, "observables": [[["Z", 1.0]]],
            "params": wire.encode_array(np.zeros((1, 1)))}


async def submit(api: Api, s: dict, h: str, n: int) -> list[str]:
    st, out = await api.call("POST", f"/v1/sessions/{s['id']}/tasks", {"tasks": [task(h)] * n}, token=s["token"])
    assert st == 201, out
    return out["ids"]


def preemptions(d) -> float:
    return d.scheduler.metrics.registry.get_sample_value("qsched_preemptions_total", {"pool": "null"}) or 0.0


@pytest.mark.slow
@pytest.mark.timeout(600)           # 20 s on a quiet 2-core machine, 85 s with both cores busy elsewhere
def test_a_thousand_recalls_racing_real_workers_lose_nothing_run_nothing_twice_keep_each_sessions_order(tmp_path):
    target = int(os.environ.get("QSCHED_PREEMPT_RACE_N", 1000))
    devices = [{"name": f"null{i}", "type": "null", "pool": "null", "options": {"delay_s": 0.002}} for i in range(2)]

    async def body():
        async with daemon_with_workers(tmp_path, devices, {"classes": CLASSES, "merge": False}) as (d, api):
            sch = d.scheduler
            # observe (not replace) the commits and the recalls: the order batches were dispatched in,
            # and how many recalls the workers won
            commits: list[tuple[str, str, list[str]]] = []
            real_commit, real_recall = sch.store.commit, sch.store.recall
            recalls = {True: 0, False: 0}

            async def commit(sid, items, batches, key=None):
                await real_commit(sid, items, batches, key)
                commits.extend((b.id, b.session, list(b.tasks)) for b in batches)

            async def recall(batch, device, source, **kw):
                ok = await real_recall(batch, device, source, **kw)
                recalls[ok] += 1
                return ok
            sch.store.commit, sch.store.recall = commit, recall

            # every completion event, read as it comes (the stream is capped)
            events: list[dict] = []
            r = aredis.Redis.from_url(d.redis_url)

            async def follow():
                last = "0-0"
                while True:
                    for _, entries in await r.xread({keys.EVENTS: last}, block=200, count=1000) or ():
                        for eid, fields in entries:
                            last = eid
                            events.append(json.loads(fields[b"e"]))
            follower = asyncio.create_task(follow())

            lows = [await api.session(pool="null", name=f"low{i}") for i in range(2)]
            hi = await api.session(pool="null", name="hi", **{"class": "interactive"})
            h = await api.template(hi, one_qubit())
            submitted: dict[str, list[str]] = {s["id"]: [] for s in (*lows, hi)}
            t0 = time.monotonic()
            # the recalls come at the machine's pace (one an interactive round trip): a loaded machine
            # takes longer to reach them, so the deadline leaves room within the test's timeout (600 s)
            # for the checks after, which grow with the tasks submitted meanwhile
            deadline = t0 + 420
            while preemptions(d) < target and time.monotonic() < deadline:
                for s in lows:              # keep the batch class backlogged, so inboxes hold its batches
                    if len(sch.sessions[s["id"]].pending) < 50:
                        submitted[s["id"]] += await submit(api, s, h, 100)
                ids = await submit(api, hi, h, 1)
                submitted[hi["id"]] += ids
                assert (await api.wait(hi, ids, 30))[0]["state"] == "DONE"
            elapsed = time.monotonic() - t0
            n_pre = preemptions(d)
            assert n_pre >= target, f"only {n_pre:.0f} preemptions in {elapsed:.0f} s"
            for s in (*lows, hi):
                ids = submitted[s["id"]]
                for i in range(0, len(ids), 2000):
                    done = await api.wait(s, ids[i:i + 2000], 120)
                    assert [t["state"] for t in done] == ["DONE"] * len(done), "a task was lost or failed"
            await until(lambda: sch.idle(), timeout=30)
            all_ids = {t for ids in submitted.values() for t in ids}
            await until(lambda: sum(len(e["tasks"]) for e in events) >= len(all_ids), timeout=30)
            follower.cancel()
            await r.aclose()

            ran: dict[str, list[str]] = {}
            for e in events:
                for tid in e["tasks"]:
                    ran.setdefault(tid, []).append(e["batch"])
            assert set(ran) == all_ids
            twice = {t: b for t, b in ran.items() if len(b) > 1}
            assert not twice, f"{len(twice)} tasks ran twice, e.g. {next(iter(twice.items()))}"
            # the final dispatch of each session's tasks is in submission order: a batch taken back went
            # to the head of its session's queue, and no older batch was taken back past a newer one
            position = {(bid, tid): (i, j) for i, (bid, _, tids) in enumerate(commits) for j, tid in enumerate(tids)}
            dispatches: dict[str, list[int]] = {}
            for i, (_, _, tids) in enumerate(commits):
                for tid in tids:
                    dispatches.setdefault(tid, []).append(i)
            for sid, ids in submitted.items():
                final = sorted(ids, key=lambda t: position[(ran[t][0], t)])
                if final != ids:
                    k = next(i for i, (a, b) in enumerate(zip(final, ids)) if a != b)
                    raise AssertionError(
                        f"session {sid}: tasks dispatched out of order at {k}: submitted {ids[k]} (dispatched in "
                        f"commits {dispatches[ids[k]]}, ran in {ran[ids[k]]}), before it finally {final[k]} "
                        f"(commits {dispatches[final[k]]}, ran in {ran[final[k]]})")
            redispatched = len(commits) - len(events)
            errors = sch.metrics.registry.get_sample_value("qsched_background_task_errors_total",
                                                           {"task": "dispatcher"})
            assert errors == 0, "the dispatcher failed (and was restarted) during the race"
            print(f"\npreemption race: {n_pre:.0f} preemptions in {elapsed:.1f} s; recalls won by the daemon "
                  f"{recalls[True]}, lost to a worker's BLMOVE {recalls[False]}; {len(all_ids)} tasks, "
                  f"{len(events)} batches run, {len(commits)} dispatched ({redispatched} of them again); "
                  "lost 0, ran twice 0, out of order 0")
    asyncio.run(body())


async def _interactive_waits(tmp: Path, preempt: bool, rounds: int = 5, batch_s: float = 0.3):
    """One device; a batch-class session keeps it busy with batch_s batches (one running, one in the
    inbox). A little after a batch starts, an interactive task arrives. Returns its waits and, for
    each, how many batch-class batches started between its submission and its start."""
    devices = [{"name": "null0", "type": "null", "pool": "null", "options": {"delay_s": batch_s}}]
    async with daemon_with_workers(tmp, devices, {"classes": CLASSES, "merge": False, "preempt": preempt}) as (d, api):
        dev = d.scheduler.devices["null0"]
        low = await api.session(pool="null", name="low")
        hi = await api.session(pool="null", name="hi", **{"class": "interactive"})
        h = await api.template(low, one_qubit())
        low_ids = await submit(api, low, h, 2 * rounds + 4)
        waits, hi_starts = [], []
        i, last_end = 0, 0.0
        while len(waits) < rounds:
            assert i < 4 * rounds + 20, f"only {len(waits)} of {rounds} rounds found a batch boundary in time"
            if len(low_ids) - i < 4:                      # a boundary was skipped: keep the backlog
                low_ids += await submit(api, low, h, 2)
            # a low task's result is written as its batch ends: the next one has just started, and the
            # one after it waits in the inbox (or soon will: the daemon refills it)
            [done] = await api.wait(low, [low_ids[i]], 60)
            i += 1
            # when the running batch started, near enough: as that one or the last interactive task ended
            began = max(done["meta"]["finished_at"], last_end)
            try:
                await until(lambda: len(dev.outstanding) == 2, timeout=batch_s / 2)
            except AssertionError:
                continue
            if time.time() > began + batch_s / 2:
                continue                # a loaded machine saw the boundary late: too near the next one
            await asyncio.sleep(max(0.0, began + batch_s / 3 - time.time()))
            submitted = time.time()
            tid = (await submit(api, hi, h, 1))[0]
            res = (await api.wait(hi, [tid], 60))[0]
            started = res["meta"]["started_at"]
            waits.append(started - submitted)
            hi_starts.append((submitted, started))
            last_end = res["meta"]["finished_at"]
            i += 1                      # the batch that was running when it came has ended too
        lows = await api.wait(low, low_ids, 120)
        assert all(t["state"] == "DONE" for t in lows)
        low_starts = [t["meta"]["started_at"] for t in lows]
        between = [sum(1 for s in low_starts if sub < s < start) for sub, start in hi_starts]
        return waits, between, preemptions(d)


@pytest.mark.slow
def test_an_interactive_task_does_not_wait_behind_a_queued_batch_class_batch(tmp_path):
    async def body():
        on = await _interactive_waits(tmp_path / "on", True)
        off = await _interactive_waits(tmp_path / "off", False)
        return on, off
    (w_on, between_on, n_on), (w_off, between_off, n_off) = asyncio.run(body())
    print(f"\ninteractive wait behind 0.3 s batch-class batches: with preemption p50 {np.median(w_on):.3f} s "
          f"max {max(w_on):.3f} s ({n_on:.0f} preemptions); without p50 {np.median(w_off):.3f} s "
          f"max {max(w_off):.3f} s; batch-class batches started while it waited: {between_on} vs {between_off}")
    assert n_on >= len(w_on) and n_off == 0
    # with preemption only the running batch is ahead of it; without, the queued one as well
    assert between_on == [0] * len(w_on)
    assert all(n >= 1 for n in between_off)
