"""A device worker: one long-lived process per device (qiskit-aer holds the GIL for a whole run, so
simulations never run in the daemon). It moves batches atomically from the device inbox to its
processing list (BLMOVE), runs them, writes each result once and announces the batch on the events
stream. A batch left in the processing list by a dead worker is run again by its successor, at most
`max_attempts` times in all, then its tasks fail with the error. Task state RUNNING is not written:
a SCHEDULED task whose batch is in a processing list is running."""
from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time

import numpy as np
import psutil
from redis import exceptions as redis_exceptions

from . import heartbeat, wire
from .devices import TaskPayload, load_device
from .devices.base import LRU
from .devices.remote import Detached, RemoteDevice
from .errors import QschedError
from .models import Batch, DeviceSpec, TaskState
from .proc import die_with_parent
from .store import INLINE_FIELDS, DeviceQueue, RemoteJournal

log = logging.getLogger("qsched.worker")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ValueError):
        return False


class Worker:
    def __init__(self, redis, spec: DeviceSpec, *, redis_url: str, max_attempts: int = 3,
                 result_ttl_s: int = 86_400, heartbeat_ttl_s: float = 5.0):
        self.queue = DeviceQueue(redis, spec.name, result_ttl_s=result_ttl_s)
        self.redis_url = redis_url
        self.spec = spec
        self.max_attempts = max_attempts
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.stopping = threading.Event()
        self.parent_pid: int | None = None      # set when tied to the daemon that started us
        self.device = load_device(spec)
        self._templates = LRU()
        self.outages = 0                        # store outages ridden out (a failover may undo writes)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"   # the device lease
        # a remote device's jobs outlive this process: journaled in Redis before they are submitted
        self.journal = RemoteJournal(redis, spec.name) if isinstance(self.device, RemoteDevice) else None

    # lifecycle ----------------------------------------------------------------------------------------
    def serve(self) -> None:
        if not self._redis_retry(self.claim):
            self.device.close()
            raise SystemExit(f"device {self.spec.name} is served by another live worker")
        static = {"type": self.spec.type, **self.device.describe()}
        beat = heartbeat.start(self.redis_url, self.spec.name, ttl_s=self.heartbeat_ttl_s, static=static,
                               token=self.token)
        try:
            log.info("worker for %s (%s) ready", self.spec.name, self.spec.type)
            for entry in self._redis_retry(self.queue.held):          # a predecessor's, oldest first
                self.recover(entry)
            while not self.stopping.is_set() and not self.orphaned():
                if beat.poll() is not None and not self.stopping.is_set():
                    # the daemon kills only stopped workers: one whose heartbeat died must beat again itself
                    log.warning("heartbeat process exited (%s); starting another", beat.returncode)
                    beat = heartbeat.start(self.redis_url, self.spec.name, ttl_s=self.heartbeat_ttl_s,
                                           static=static, token=self.token)
                outages = self.outages
                entry = self._redis_retry(lambda: self.queue.take(1.0))
                if self.outages != outages:
                    self.rerun_lost_completions(entry)
                if entry is not None:
                    self.run_batches([entry, *self._merge_with(entry)])
                elif self.journal is not None:
                    assert isinstance(self.device, RemoteDevice)
                    self._redis_retry(lambda: self.device.tick(self.journal))
        finally:
            beat.terminate()
            beat.wait()
            with contextlib.suppress(redis_exceptions.RedisError):
                self.queue.release(self.token)
            self.device.close()

    def claim(self) -> bool:
        """Take the device's worker lease; a holder on this host whose process is gone (our predecessor,
        killed) is taken over at once, a live one is waited out for two heartbeat periods (it may be
        exiting). False: another live worker serves the device, and this one must not."""
        deadline = time.monotonic() + 2 * self.heartbeat_ttl_s
        dead = ""
        while True:
            holder = self.queue.claim(self.token, self.heartbeat_ttl_s, dead=dead)
            if holder is None:
                return True
            host, _, rest = holder.partition(":")
            pid = int(rest.partition(":")[0]) if rest.partition(":")[0].isdigit() else -1
            if host == socket.gethostname() and not _alive(pid):
                dead = holder
                continue
            if time.monotonic() > deadline or self.stopping.wait(0.2):
                log.error("device %s is served by another live worker (%s): this one exits", self.spec.name,
                          holder)
                return False

    def orphaned(self) -> bool:
        """The daemon that started us is gone (its SIGTERM may not have come: see proc.die_with_parent)."""
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def stop(self, *_):
        self.stopping.set()

    def _redis_retry(self, call):
        """Redis restarting (or failing over): wait for it rather than exit, so a batch already run is
        still answered once it is back. Logged once per outage."""
        down = None
        while True:
            try:
                out = call()
            except redis_exceptions.RedisError as e:
                if down is None:
                    down = time.monotonic()
                    log.error("store unavailable (%s); retrying", e)
                if self.stopping.wait(0.2) or self.orphaned():
                    raise
                continue
            if down is not None:
                log.info("store is back after %.1f s", time.monotonic() - down)
                self.outages += 1
            return out

    def rerun_lost_completions(self, taken) -> None:
        """After an outage the store may be a promoted replica that never got our last completion: the
        batch is back in our processing list although we ran it. Between batches nothing else of ours
        is there, so run what is (`taken`: the batch just moved there, run next by the caller)."""
        for entry in self._redis_retry(self.queue.held):
            if entry != taken:
                log.warning("batch %s is in the processing list again after a store failover (its completion "
                            "was lost with the old primary): running it again", Batch.from_entry(entry).id)
                self.run_batches([entry])

    # one batch ----------------------------------------------------------------------------------------
    def recover(self, entry) -> None:
        """A batch left in our processing list: the worker running it died. Counting deaths here keeps
        the normal path free of bookkeeping; after max_attempts runs in all, its tasks fail."""
        bid = Batch.from_entry(entry).id
        deaths, last = self._redis_retry(lambda: self.queue.count_death(bid))
        if deaths < self.max_attempts:
            log.warning("re-running batch %s after its worker died (%d of %d runs)", bid, deaths + 1,
                        self.max_attempts)
            self.run_batches([entry])
            return
        self.run_batches([entry], fail={"code": "task_failed", "message": (
            f"worker for device {self.spec.name} died {deaths} times running this batch"
            + (f"; last: {last}" if last else ""))})
        if self.journal is not None:      # its remote jobs, now unwanted, are cancelled
            assert isinstance(self.device, RemoteDevice)
            self._redis_retry(lambda: self.device.sweep(self.journal))

    def _template(self, digest: str):
        """Decoded once per worker (LRU); None when the template is gone from Redis."""
        if digest not in self._templates:
            qpy = self._redis_retry(lambda: self.queue.template_qpy(digest))
            if not qpy:
                return None
            self._templates.get_or(digest, lambda: wire.load_qpy(qpy))
        return self._templates.get_or(digest, None)

    def _specs(self, batch: Batch) -> list[dict]:
        """The batch's task payloads: carried inline, or read in one round trip (skipping tasks that were
        cancelled or answered meanwhile)."""
        if batch.inline:
            return [dict(zip(INLINE_FIELDS, row)) | {"params": base64.b64decode(row[-1])} for row in batch.inline]
        return self._redis_retry(lambda: self.queue.payloads(batch.tasks))

    def _merge_with(self, entry) -> list:
        """Cross-session batching: the waiting batches that can share the device call of this one."""
        if self.spec.merge_batches <= 1:
            return []
        batch = Batch.from_entry(entry)
        if not batch.merge:
            return []
        budget, want = self.spec.limits.max_batch_bindings - batch.bindings, self.spec.merge_batches - 1
        taken = self._redis_retry(lambda: self.queue.take_matching(batch.merge, want, budget))
        if len(taken) < want and self.spec.merge_wait_s and not self.stopping.wait(self.spec.merge_wait_s):
            # jobs whose results came back together submit again together: waiting a moment for them
            # keeps one job from always running alone (and paying the whole overhead)
            budget -= sum(Batch.from_entry(e).bindings for e in taken)
            taken += self._redis_retry(lambda: self.queue.take_matching(batch.merge, want - len(taken), budget))
        return taken

    def _payloads(self, batch: Batch, started: float, fail: dict | None):
        payloads, failures, submitted = [], {}, {}
        for d in self._specs(batch):
            tid = d["id"]
            submitted[tid] = float(d["submitted"] or started)
            circuit = None if fail else self._template(d["template"])
            if fail or circuit is None:
                failures[tid] = fail or {"code": "not_found", "field": "template",
                                         "message": f"template {d['template']} is gone"}
                continue
            payloads.append(self._payload(d, circuit))
        return payloads, failures, submitted

    @staticmethod
    def _payload(d: dict, circuit) -> TaskPayload:
        arr = np.frombuffer(d["params"], dtype="<f8").reshape(int(d["bindings"]), circuit.num_parameters)
        return TaskPayload(d["id"], d["kind"], d["template"], circuit, arr, int(d["shots"]) if d["shots"] else None,
                           json.loads(d["observables"]) if d["observables"] else [], d["method"] or None,
                           int(d["seed"]) if d.get("seed") not in (None, "") else None)

    def _load_any(self, tids: list[str]) -> list[TaskPayload]:
        """Tasks in any state (cancelled ones too), for splitting a remote job's results."""
        out = []
        for d in self._redis_retry(lambda: self.queue.payloads(tids, any_state=True)):
            circuit = self._template(d["template"])
            if circuit is not None:
                out.append(self._payload(d, circuit))
        return out

    def run_batches(self, entries: list, fail: dict | None = None) -> None:
        """Run the batches in one device call; answer and charge each on its own, with its share of the
        measured time (by bindings)."""
        batches = [Batch.from_entry(e) for e in entries]
        started = time.time()
        prepared = [self._payloads(b, started, fail) for b in batches]
        every = [p for payloads, _, _ in prepared for p in payloads]
        t0 = time.perf_counter()
        if self.journal is not None and every:
            assert isinstance(self.device, RemoteDevice)
            try:
                # charged: the time its remote jobs ran on the vendor's side, not their queue wait
                results, exec_s = self.device.run_journaled(every, self.journal, self.stopping, load=self._load_any)
            except Detached:
                log.warning("batches %s: stopping with their remote jobs in flight; the next worker resumes them",
                            ", ".join(b.id for b in batches))
                return
            outputs = iter(results)
        else:
            outputs = iter(self.device.run(every) if every else [])
            exec_s = time.perf_counter() - t0
        if self.orphaned():
            # the daemon that started us is gone (we were stopped while it was restarted, say): our
            # successor runs these batches again, so neither answer nor charge them here
            log.warning("batches %s: the daemon that started this worker is gone; leaving them to the next "
                        "worker", ", ".join(b.id for b in batches))
            self.stopping.set()
            return
        finished = time.time()
        total_bindings = sum(p.bindings for p in every) or 1
        for entry, batch, (payloads, failures, submitted) in zip(entries, batches, prepared):
            rows: list[tuple[str, str, str, int, int]] = []
            for p in payloads:
                out = next(outputs)
                meta = {"device": self.spec.name, "batch": batch.id, "exec_s": exec_s * p.bindings / total_bindings,
                        "queue_wait_s": max(0.0, started - submitted[p.id]), "batch_exec_s": exec_s,
                        "batches_merged": len(batches), "started_at": started, "finished_at": finished}
                if isinstance(out, Exception):
                    err = out.to_json()["error"] if isinstance(out, QschedError) else {
                        "code": "task_failed", "message": f"{type(out).__name__}: {out}"[:2000]}
                    state, body = TaskState.FAILED.value, json.dumps({"error": err, "meta": meta})
                else:
                    state, body = TaskState.DONE.value, json.dumps({"result": wire.encode_tree(out), "meta": meta})
                rows.append((p.id, state, body, p.bindings, p.bindings * (p.shots or 0)))
            rows += [(tid, TaskState.FAILED.value, json.dumps({"error": err}), 0, 0) for tid, err in failures.items()]
            bindings = sum(p.bindings for p in payloads)
            share = exec_s * bindings / total_bindings
            event = json.dumps({"batch": batch.id, "device": self.spec.name, "session": batch.session,
                                "started": started, "finished": finished, "exec_s": share, "bindings": bindings,
                                # the whole device call, for the cost model (a merged job pays setup once)
                                "job_s": exec_s, "job_bindings": total_bindings,
                                "tasks": {r[0]: r[1] for r in rows}})
            written = self._redis_retry(functools.partial(self.queue.complete, entry, batch, event, share,
                                                          finished, rows))
            if self.journal is not None and written != -1:
                self._redis_retry(functools.partial(self.journal.release, [p.id for p in payloads]))
            if written == -1:
                log.warning("batch %s was taken back while this worker ran it (its heartbeat had stopped); "
                            "its results are discarded and the tasks run again elsewhere", batch.id)

def main(spec: DeviceSpec, redis_url: str, *, max_attempts: int, result_ttl_s: int, heartbeat_ttl_s: float,
         parent_pid: int | None = None) -> None:
    from .redisconn import sync_client
    if parent_pid is not None:
        die_with_parent(parent_pid)
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")   # spin-waiting collapsed aer 4-6x on shared VMs
    r = sync_client(redis_url, socket_timeout=10.0)      # > the 1 s BLMOVE: a dead store shows as an error
    w = Worker(r, spec, redis_url=redis_url, max_attempts=max_attempts, result_ttl_s=result_ttl_s,
               heartbeat_ttl_s=heartbeat_ttl_s)
    w.parent_pid = parent_pid
    signal.signal(signal.SIGTERM, w.stop)
    signal.signal(signal.SIGINT, w.stop)
    w.serve()
