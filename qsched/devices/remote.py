"""Remote devices: a QPU behind a vendor's service, driven by submit / poll / cancel / result.

A remote job outlives the worker that submitted it, so its handle is journaled in Redis *before* the
remote call that creates it (write-ahead, store.RemoteJournal):

  1. a fresh idempotency token, the job's record (state submitting) and a pointer from each of its tasks
     to the token are written atomically;
  2. the job is submitted; the vendor's job id is recorded as soon as the call returns;
  3. the job is polled until it ends; results are fetched and the batch completes once.

A worker that restarts, or that gets the same tasks again because the daemon requeued them, follows the
tasks' pointers and resumes polling the same remote job: it never submits or bills it twice. What is
still unknown after a crash in step 2 (the call was sent, its answer never recorded) is asked of the
vendor by token where the vendor can look jobs up (`find`); where it cannot, the tasks fail with a
clear error instead of being submitted again.

Errors follow qiskit-ibm-runtime's split: a retriable one (429, 5xx, a timeout) is retried with backoff
(honouring Retry-After when the client exposes it), a fatal one fails the tasks of that job only. A
submit that timed out is never re-sent: its outcome is unknown, so the same call is waited for."""
from __future__ import annotations

import concurrent.futures
import logging
import secrets
import threading
import time
from enum import Enum

from ..errors import DeviceError, DeviceTimeout, QschedError, TaskCancelled, TaskFailed
from .base import Device, TaskError, TaskPayload

log = logging.getLogger("qsched.devices.remote")


class RemoteStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"            # the service no longer knows the job (it answered "not found")


class Detached(QschedError):
    """The worker is stopping mid-job: the batch stays in its processing list and the journal, for the
    next worker to resume."""
    code = "detached"


class _Job:
    __slots__ = ("token", "tasks", "job_id", "generation", "submitted_at")

    def __init__(self, token: str, tasks: list[TaskPayload], job_id: str, generation: int,
                 submitted_at: float):
        self.token, self.tasks, self.job_id = token, tasks, job_id
        self.generation, self.submitted_at = generation, submitted_at


class RemoteDevice(Device):
    """Subclasses implement the contract: submit, poll, cancel, result (and optionally find,
    vendor_status, plan). Inside them every vendor call goes through `self.call`: one at a time on one
    thread (QRMI's resource answers a second concurrent call with "Already borrowed"), bounded by
    options.call_timeout_s (QRMI's HTTP client has no timeout of its own), raising DeviceError."""
    type = "remote"
    kinds = ("sample", "estimate")

    def __init__(self, spec):
        super().__init__(spec)
        o = self.options
        self.poll_interval_s = float(o.get("poll_interval_s", 1.0))
        self.call_timeout_s = float(o.get("call_timeout_s", 30.0))
        self.submit_timeout_s = float(o.get("submit_timeout_s", 300.0))
        self.submit_attempts = int(o.get("submit_attempts", 5))
        self.max_resubmits = int(o.get("max_resubmits", 1))
        self.status_interval_s = float(o.get("status_interval_s", 30.0))
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{spec.name}-vendor")
        self._status_at = 0.0

    # the contract ---------------------------------------------------------------------------------------
    def submit(self, tasks: list[TaskPayload], token: str) -> str:
        """Start one remote job for these tasks; returns the vendor's job id. Its last step must be
        `self.call(...)` of the one remote call that creates the job, returning its answer: a call
        that times out is then waited for, never re-sent."""
        raise NotImplementedError

    def poll(self, job_id: str) -> tuple[RemoteStatus, str]:
        """(status, the vendor's reason or "")."""
        raise NotImplementedError

    def cancel(self, job_id: str) -> None:
        raise NotImplementedError

    def result(self, job_id: str, tasks: list[TaskPayload]) -> list[dict]:
        raise NotImplementedError

    def usage_s(self, job_id: str) -> float | None:
        """The vendor's measure of the job's device time, once its result is in (else None: the time it
        was seen running is charged)."""
        return None

    def find(self, token: str) -> str | None:
        """The job submitted with this token, where the vendor can look jobs up by a client tag."""
        return None

    def vendor_status(self) -> tuple[str, str]:
        """("online" | "paused" | "offline", reason): moves the device's state in the daemon."""
        return "online", ""

    def plan(self, tasks: list[TaskPayload]) -> list[list[TaskPayload]]:
        """Tasks -> remote jobs: one per task kind (one program each), at most max_circuits tasks."""
        cap = int(self.describe().get("max_circuits") or 300)
        jobs: list[list[TaskPayload]] = []
        for kind in dict.fromkeys(t.kind for t in tasks):
            same = [t for t in tasks if t.kind == kind]
            jobs += [same[i:i + cap] for i in range(0, len(same), cap)]
        return jobs

    # calls ----------------------------------------------------------------------------------------------
    def call(self, fn, *args, timeout: float | None = None):
        fut = self._executor.submit(fn, *args)
        try:
            return fut.result(timeout=timeout or self.call_timeout_s)
        except concurrent.futures.TimeoutError:
            what = getattr(fn, "__name__", "a call")
            err = DeviceTimeout(f"device {self.spec.name}: the vendor did not answer {what} "
                                f"within {timeout or self.call_timeout_s:g} s (options.call_timeout_s)",
                                field="options.call_timeout_s", limit=timeout or self.call_timeout_s)
            err.future = fut          # type: ignore[attr-defined]
            raise err from None

    def run(self, tasks):
        raise TaskError(f"device {self.spec.name} is remote: its worker drives it through the journal")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # vendor status --------------------------------------------------------------------------------------
    def tick(self, journal) -> None:
        """Now and then (status_interval_s): sweep orphaned remote jobs, publish the vendor's status."""
        now = time.monotonic()
        if now - self._status_at < self.status_interval_s:
            return
        self._status_at = now
        self.sweep(journal)
        try:
            status, reason = self.vendor_status()
        except DeviceError as e:
            status, reason = "offline", f"status call failed: {e.message}"
        journal.set_vendor(status, reason)

    # the driver -----------------------------------------------------------------------------------------
    def run_journaled(self, tasks: list[TaskPayload], journal, stopping: threading.Event,
                      load=None) -> tuple[list[dict | Exception], float]:
        """Run the tasks as remote jobs, resuming any that the journal already holds for them.
        Returns (one result or error per task, device-seconds to charge). Raises Detached when stopping.
        `load(task ids)`: payloads of tasks in any state, for a resumed job some of whose tasks were
        cancelled meanwhile (its results are split over all the tasks it was sent with)."""
        out: dict[str, dict | Exception] = {}
        by_id = {t.id: t for t in tasks}
        claims = journal.claims(list(by_id))
        jobs: list[_Job] = []
        fresh = [t for t in tasks if t.id not in claims]
        again: dict[int, list[TaskPayload]] = {}       # generation -> tasks of jobs the service lost
        for token in dict.fromkeys(claims.values()):
            mine = [by_id[tid] for tid, tok in claims.items() if tok == token]
            rec = journal.get(token)
            state, gen = rec.get("state"), int(rec.get("generation") or 0)
            if rec and rec.get("device") != self.spec.name:
                # requeued to another device of the pool: its job lives on the first device's service
                log.warning("device %s: tasks of remote job %s on device %s came here; submitting them anew",
                            self.spec.name, rec.get("job"), rec.get("device"))
                fresh += mine
                continue
            if state in ("submitted", "done") and rec.get("job"):
                try:
                    mine = self._whole(mine, rec["tasks"], load)
                except TaskError as e:
                    self._fail(out, mine, e)
                    continue
                log.info("device %s: resuming remote job %s (token %s) for %d tasks", self.spec.name, rec["job"],
                         token, len(mine))
                jobs.append(_Job(token, mine, rec["job"], gen, float(rec.get("submitted_at") or time.time())))
            elif state == "submitting":
                found = self.find(token)
                if found:
                    journal.update(token, state="submitted", job=found, submitted_at=time.time())
                    jobs.append(_Job(token, mine, found, gen, time.time()))
                else:
                    journal.update(token, state="unknown")
                    self._fail(out, mine, TaskFailed(
                        f"device {self.spec.name}: the worker stopped while submitting this task's remote job "
                        f"and the vendor cannot be asked whether it arrived; it is not submitted again so it "
                        f"is not billed twice (token {token})"))
            elif state == "failed" or state == "unknown":
                self._fail(out, mine, TaskFailed(rec.get("reason") or f"remote job {rec.get('job')} failed"))
            elif state == "cancelled":
                self._fail(out, mine, TaskCancelled(f"remote job {rec.get('job')} was cancelled"))
            elif state == "lost" and rec.get("job"):      # lost by the service: bounded by max_resubmits
                if gen >= self.max_resubmits:
                    self._fail(out, mine, TaskFailed(f"device {self.spec.name}: the service lost remote job "
                                                     f"{rec['job']}", field="options.max_resubmits",
                                                     limit=self.max_resubmits))
                else:
                    again.setdefault(gen + 1, []).extend(mine)
            else:        # never created, or the record expired: a new job
                fresh += mine
        for gen, group_tasks in [(0, fresh), *sorted(again.items())]:
            for group in self.plan(group_tasks):
                job = self._start(group, journal, stopping, out, generation=gen)
                if job is not None:
                    jobs.append(job)
        exec_s = self._follow(jobs, journal, stopping, out, set(by_id))
        return [out.get(t.id, TaskFailed("no result")) for t in tasks], exec_s

    @staticmethod
    def _whole(mine: list[TaskPayload], sent: list[str], load) -> list[TaskPayload]:
        """The job's tasks as sent, in order: those no longer wanted are read back (results for them
        are dropped), or the results would be split wrongly."""
        have = {t.id: t for t in mine}
        missing = [tid for tid in sent if tid not in have]
        if missing and load is not None:
            have.update({t.id: t for t in load(missing)})
        if any(tid not in have for tid in sent):
            raise TaskError("a remote job's tasks can no longer all be read back to split its results")
        return [have[tid] for tid in sent]

    @staticmethod
    def _fail(out: dict, tasks: list[TaskPayload], err: Exception) -> None:
        for t in tasks:
            out[t.id] = err

    def _backoff(self, attempt: int, err: DeviceError) -> float:
        return max(err.retry_after or 0.0, min(30.0, self.poll_interval_s * 2 ** attempt))

    def _start(self, tasks: list[TaskPayload], journal, stopping, out, *, generation: int) -> _Job | None:
        token = secrets.token_hex(16)
        journal.begin(token, [t.id for t in tasks], generation=generation)      # write-ahead
        attempt = 0
        while True:
            try:
                try:
                    job_id = self.submit(tasks, token)
                except DeviceTimeout as e:
                    late = self._await_unknown(e, stopping)
                    if late is None:
                        journal.update(token, state="unknown", reason="submit did not answer")
                        self._fail(out, tasks, TaskFailed(
                            f"device {self.spec.name}: submitting the remote job did not answer within "
                            f"{self.submit_timeout_s:g} s (options.submit_timeout_s); its outcome is unknown, so "
                            f"it is not submitted again (token {token})", field="options.submit_timeout_s",
                            limit=self.submit_timeout_s))
                        return None
                    job_id = late
                break
            except DeviceError as e:
                attempt += 1
                if not e.retriable or attempt >= self.submit_attempts:
                    journal.update(token, state="failed", reason=e.message)
                    self._fail(out, tasks, TaskFailed(f"device {self.spec.name}: {e.message}"
                                                      + (f" (after {attempt} attempts)" if e.retriable else "")))
                    return None
                delay = self._backoff(attempt, e)
                log.warning("device %s: submit refused (%s); retrying in %.1f s", self.spec.name, e.message, delay)
                if stopping.wait(delay):
                    journal.update(token, state="lost", reason="worker stopped before the job was created")
                    raise Detached("stopping") from None
            except (TaskError, ValueError, TypeError) as e:     # the tasks cannot be sent at all
                journal.update(token, state="failed", reason=str(e))
                self._fail(out, tasks, e)
                return None
        now = time.time()
        journal.update(token, state="submitted", job=job_id, submitted_at=now)
        log.info("device %s: remote job %s submitted for %d tasks (token %s)", self.spec.name, job_id,
                 len(tasks), token)
        return _Job(token, tasks, job_id, generation, now)

    def _await_unknown(self, e: DeviceTimeout, stopping) -> str | None:
        """A submit that timed out may still create the job: wait for the same call (never re-send it),
        up to submit_timeout_s. A late error answer means nothing was created: it is raised, and retried
        like any other."""
        fut = getattr(e, "future", None)
        deadline = time.monotonic() + self.submit_timeout_s
        log.warning("device %s: submit is slow (%s); waiting for its answer, not re-sending", self.spec.name,
                    e.message)
        while fut is not None and time.monotonic() < deadline:
            try:
                return fut.result(timeout=min(self.poll_interval_s, max(0.01, deadline - time.monotonic())))
            except concurrent.futures.TimeoutError:
                if stopping.is_set():
                    raise Detached("stopping") from None
        return None

    def _follow(self, jobs: list[_Job], journal, stopping, out, wanted: set[str]) -> float:
        """Poll until every job ends; cancel those whose tasks are all cancelled or whose session closed.
        Returns the device-seconds to charge: each job's running time, in the share of its bindings that
        belong to `wanted` (a job resumed for one of the batches it answers charges that batch's part)."""
        exec_s = 0.0
        errors = 0
        while jobs:
            if stopping.is_set():
                raise Detached("stopping")
            self.tick(journal)
            live = journal.live([t.id for j in jobs for t in j.tasks])
            delay = self.poll_interval_s
            for job in list(jobs):
                if not any(t.id in live for t in job.tasks):
                    self._cancel(job, journal)
                    self._fail(out, job.tasks, TaskCancelled(f"remote job {job.job_id} cancelled"))
                    jobs.remove(job)
                    continue
                try:
                    status, reason = self.poll(job.job_id)
                    if status == RemoteStatus.DONE:
                        results = self.result(job.job_id, job.tasks)
                except (TaskError, ValueError, TypeError, KeyError) as e:
                    # a result that cannot be read: fatal for this job's tasks, not for the worker
                    journal.update(job.token, state="failed", reason=f"unreadable result: {e}")
                    self._fail(out, job.tasks, TaskFailed(f"device {self.spec.name}: the result of remote job "
                                                          f"{job.job_id} cannot be read: {type(e).__name__}: {e}"))
                    jobs.remove(job)
                    continue
                except DeviceError as e:
                    if not e.retriable:
                        journal.update(job.token, state="failed", reason=e.message)
                        self._fail(out, job.tasks, TaskFailed(f"device {self.spec.name}: {e.message}"))
                        jobs.remove(job)
                        continue
                    errors += 1
                    delay = max(delay, self._backoff(min(errors, 6), e))
                    log.warning("device %s: polling remote job %s: %s; retrying in %.1f s", self.spec.name,
                                job.job_id, e.message, delay)
                    continue
                errors = 0
                if status == RemoteStatus.RUNNING:
                    journal.set_once(job.token, "running_at", time.time())
                elif status in (RemoteStatus.QUEUED,):
                    pass
                elif status == RemoteStatus.LOST:
                    journal.update(job.token, state="lost", reason=reason)
                    jobs.remove(job)
                    if job.generation >= self.max_resubmits:
                        self._fail(out, job.tasks, TaskFailed(
                            f"device {self.spec.name}: the service lost remote job {job.job_id} "
                            f"({job.generation + 1} times; options.max_resubmits: {self.max_resubmits})",
                            field="options.max_resubmits", limit=self.max_resubmits))
                        continue
                    log.error("device %s: the service lost remote job %s; submitting its tasks again",
                              self.spec.name, job.job_id)
                    again = self._start(job.tasks, journal, stopping, out, generation=job.generation + 1)
                    if again is not None:
                        jobs.append(again)
                else:
                    jobs.remove(job)
                    rec = journal.get(job.token)
                    finished = time.time()
                    ran = self.usage_s(job.job_id) if status == RemoteStatus.DONE else None
                    if ran is None:
                        ran = finished - float(rec.get("running_at") or job.submitted_at)
                    mine = sum(t.bindings for t in job.tasks if t.id in wanted)
                    exec_s += ran * mine / (sum(t.bindings for t in job.tasks) or 1)
                    if status == RemoteStatus.DONE:
                        journal.update(job.token, state="done", finished_at=finished)
                        for t, r in zip(job.tasks, results):
                            out[t.id] = r
                    elif status == RemoteStatus.FAILED:
                        journal.update(job.token, state="failed", reason=reason, finished_at=finished)
                        self._fail(out, job.tasks, TaskFailed(
                            f"device {self.spec.name}: remote job {job.job_id} failed"
                            + (f": {reason}" if reason else "")))
                    else:
                        journal.update(job.token, state="cancelled", finished_at=finished)
                        self._fail(out, job.tasks, TaskCancelled(f"remote job {job.job_id} was cancelled"))
            if jobs and stopping.wait(delay):
                raise Detached("stopping")
        return exec_s

    def sweep(self, journal) -> None:
        """Cancel remote jobs that no task wants any more but that no worker follows: their tasks were
        failed or cancelled, or their session closed, while no worker held them (a worker that kept
        dying, a daemon that gave up on them), or another device's job answers them now. The service
        would run, and bill, them to the end."""
        for token in journal.in_flight():
            rec = journal.get(token)
            if rec.get("state") not in ("submitting", "submitted"):
                journal.ended(token)
                continue
            tids = rec.get("tasks") or []
            # a task another job now answers (requeued to another device of the pool) is not ours
            ours = {t for t, tok in journal.claims(tids).items() if tok == token}
            if rec.get("state") == "submitted" and rec.get("job") and not journal.live(tids) & ours:
                self._cancel(_Job(token, [], rec["job"], 0, 0.0), journal)
                journal.ended(token)

    def _cancel(self, job: _Job, journal) -> None:
        """The tasks are no longer wanted: stop the remote job (best effort, retried a few times)."""
        for attempt in range(3):
            try:
                self.cancel(job.job_id)
                break
            except DeviceError as e:
                log.warning("device %s: cancelling remote job %s: %s", self.spec.name, job.job_id, e.message)
                if not e.retriable:
                    break
                time.sleep(self._backoff(attempt, e))
        journal.update(job.token, state="cancelled", finished_at=time.time())
        log.info("device %s: remote job %s cancelled: no task wants its results any more (cancelled, session "
                 "closed, or answered by another job)", self.spec.name, job.job_id)
