"""A device worker: one long-lived process per device (qiskit-aer holds the GIL for a whole run, so
simulations never run in the daemon). It moves batches atomically from the device inbox to its
processing list (BLMOVE), runs them, writes each result once and announces the batch on the events
stream. A batch left in the processing list by a dead worker is run again by its successor, at most
`max_attempts` times in all, then its tasks fail with the error. Task state RUNNING is not written:
a SCHEDULED task whose batch is in a processing list is running."""
from __future__ import annotations

import base64
import json
import logging
import os
import signal
import threading
import time

import numpy as np

from . import heartbeat, keys, wire
from .devices import TaskPayload, load_device
from .devices.base import LRU
from .errors import QschedError
from .models import Batch, DeviceSpec, TaskState
from .store import COMPLETE_LUA, FETCH_LUA, INLINE_FIELDS

log = logging.getLogger("qsched.worker")


def die_with_parent() -> None:
    """Linux: get SIGTERM when the daemon that started us dies, so no orphan holds the device."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Worker:
    def __init__(self, redis, spec: DeviceSpec, *, redis_url: str, max_attempts: int = 3,
                 result_ttl_s: int = 86_400, heartbeat_ttl_s: float = 5.0):
        self.r = redis
        self.redis_url = redis_url
        self.spec = spec
        self.max_attempts = max_attempts
        self.ttl = result_ttl_s
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.stopping = threading.Event()
        self.device = load_device(spec)
        self._templates = LRU()
        self._fetch = redis.register_script(FETCH_LUA)
        self._complete = redis.register_script(COMPLETE_LUA)
        self.inbox = keys.device_inbox(spec.name)
        self.processing = keys.device_processing(spec.name)

    # lifecycle ----------------------------------------------------------------------------------------
    def serve(self) -> None:
        beat = heartbeat.start(self.redis_url, keys.device_heartbeat(self.spec.name), ttl_s=self.heartbeat_ttl_s,
                               static={"type": self.spec.type, **self.device.describe()})
        try:
            log.info("worker for %s (%s) ready", self.spec.name, self.spec.type)
            for entry in reversed(self.r.lrange(self.processing, 0, -1)):   # a predecessor's, oldest first
                self.recover(entry)
            while not self.stopping.is_set():
                entry = self.r.blmove(self.inbox, self.processing, 1.0, "RIGHT", "LEFT")
                if entry is not None:
                    self.run_batch(entry)
        finally:
            beat.terminate()
            beat.wait()
            self.r.delete(keys.device_heartbeat(self.spec.name))
            self.device.close()

    def stop(self, *_):
        self.stopping.set()

    # one batch ----------------------------------------------------------------------------------------
    def recover(self, entry) -> None:
        """A batch left in our processing list: the worker running it died. Counting deaths here keeps
        the normal path free of bookkeeping; after max_attempts runs in all, its tasks fail."""
        bid = Batch.from_entry(entry).id
        deaths = self.r.hincrby(keys.batch(bid), "deaths", 1)
        if deaths < self.max_attempts:
            log.warning("re-running batch %s after its worker died (%d of %d runs)", bid, deaths + 1,
                        self.max_attempts)
            self.run_batch(entry)
            return
        last = _s(self.r.hget(keys.batch(bid), "last_error") or b"")
        self.run_batch(entry, fail={"code": "task_failed", "message": (
            f"worker for device {self.spec.name} died {deaths} times running this batch"
            + (f"; last: {last}" if last else ""))})

    def _template(self, digest: str):
        """Decoded once per worker (LRU); None when the template is gone from Redis."""
        if digest not in self._templates:
            qpy = self.r.hget(keys.template(digest), "qpy")
            if not qpy:
                return None
            self._templates.get_or(digest, lambda: wire.load_qpy(qpy))
        return self._templates.get_or(digest, None)

    def _specs(self, batch: Batch) -> list[dict]:
        """The batch's task payloads: carried inline, or read in one round trip (skipping tasks that were
        cancelled or answered meanwhile)."""
        if batch.inline:
            return [dict(zip(INLINE_FIELDS, row)) | {"params": base64.b64decode(row[-1])} for row in batch.inline]
        res = self._fetch(keys=[k for tid in batch.tasks for k in (keys.task(tid), keys.task_params(tid))])
        specs = []
        for fields_raw, params in zip(res[0::2], res[1::2]):
            values = [None if v is False else v for v in json.loads(fields_raw)]
            d = dict(zip(INLINE_FIELDS[:-1], values[:-1]))
            if d["id"] is not None and values[-1] in (TaskState.SCHEDULED.value, TaskState.RUNNING.value):
                specs.append(d | {"params": params})
        return specs

    def run_batch(self, entry, fail: dict | None = None) -> None:
        batch = Batch.from_entry(entry)
        started = time.time()
        payloads, failures, submitted = [], {}, {}
        for d in self._specs(batch):
            tid = d["id"]
            submitted[tid] = float(d["submitted"] or started)
            circuit = None if fail else self._template(d["template"])
            if fail or circuit is None:
                failures[tid] = fail or {"code": "not_found", "field": "template",
                                         "message": f"template {d['template']} is gone"}
                continue
            arr = np.frombuffer(d["params"], dtype="<f8").reshape(int(d["bindings"]), circuit.num_parameters)
            payloads.append(TaskPayload(tid, d["kind"], d["template"], circuit, arr,
                                        int(d["shots"]) if d["shots"] else None,
                                        json.loads(d["observables"]) if d["observables"] else [],
                                        d["method"] or None))
        t0 = time.perf_counter()
        outputs = self.device.run(payloads) if payloads else []
        exec_s = time.perf_counter() - t0
        finished = time.time()
        total_bindings = sum(p.bindings for p in payloads) or 1
        args, tkeys, states = [], [], {}
        for p, out in zip(payloads, outputs):
            meta = {"device": self.spec.name, "batch": batch.id, "exec_s": exec_s * p.bindings / total_bindings,
                    "queue_wait_s": max(0.0, started - submitted[p.id]), "batch_exec_s": exec_s,
                    "started_at": started, "finished_at": finished}
            if isinstance(out, Exception):
                err = out.to_json()["error"] if isinstance(out, QschedError) else {
                    "code": "task_failed", "message": f"{type(out).__name__}: {out}"[:2000]}
                state, body = TaskState.FAILED.value, json.dumps({"error": err, "meta": meta})
            else:
                state, body = TaskState.DONE.value, json.dumps({"result": wire.encode_tree(out), "meta": meta})
            tkeys += [keys.task(p.id), keys.task_result(p.id)]
            args += [state, body, p.bindings, p.bindings * (p.shots or 0)]
            states[p.id] = state
        for tid, err in failures.items():
            tkeys += [keys.task(tid), keys.task_result(tid)]
            args += [TaskState.FAILED.value, json.dumps({"error": err}), 0, 0]
            states[tid] = TaskState.FAILED.value
        event = json.dumps({"batch": batch.id, "device": self.spec.name, "session": batch.session,
                            "started": started, "finished": finished, "exec_s": exec_s,
                            "bindings": total_bindings if payloads else 0, "tasks": states})
        written = self._complete(keys=[self.processing, keys.EVENTS, keys.session_usage(batch.session),
                                       keys.batch(batch.id), *tkeys],
                                 args=[entry, event, self.ttl, exec_s if payloads else 0.0, finished, *args])
        if written == -1:
            log.warning("batch %s was taken back while this worker ran it (its heartbeat had stopped); "
                        "its results are discarded and the tasks run again elsewhere", batch.id)


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def main(spec: DeviceSpec, redis_url: str, *, max_attempts: int, result_ttl_s: int, heartbeat_ttl_s: float,
         tie_to_parent: bool = False) -> None:
    import redis as redis_lib
    if tie_to_parent:
        die_with_parent()
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")   # spin-waiting collapsed aer 4-6x on shared VMs
    r = redis_lib.Redis.from_url(redis_url)
    w = Worker(r, spec, redis_url=redis_url, max_attempts=max_attempts, result_ttl_s=result_ttl_s,
               heartbeat_ttl_s=heartbeat_ttl_s)
    signal.signal(signal.SIGTERM, w.stop)
    signal.signal(signal.SIGINT, w.stop)
    w.serve()
