"""The client's protocol core, shared by the sync and async faces: request building, response parsing,
results, the template cache and the retry loop. No I/O here: every operation is a generator that yields
a `Call` and is sent the decoded answer (or has the error thrown in); `ClientCore.execute` turns those
into effects, `Send` (one HTTP request) and `Sleep` (a backoff), that a face performs with its own I/O
(sync.py: a blocking socket and time.sleep; aio.py: aiohttp and asyncio.sleep). So each operation, its
retries through a daemon restart and its re-attach are written once, and both faces have the same API."""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from .. import errors, wire
from ..paths import daemon_socket, default_state_dir
from ..errors import QschedError, TaskCancelled, TaskFailed, Timeout
from .retry import Backoff, RetryPolicy, Unreachable, retry_reason

log = logging.getLogger("qsched.client")

POLL_S = 30.0       # one long-poll; waits longer than this poll again
FINAL = ("DONE", "FAILED", "CANCELLED")
T = TypeVar("T")


def default_url() -> str:
    return os.environ.get("QSCHED_URL") or f"unix://{daemon_socket(default_state_dir())}"


# ------------------------------------------------------------------------------------------- results
@dataclass
class TaskResult:
    id: str
    kind: str | None
    data: dict
    meta: dict = field(default_factory=dict)

    @property
    def evs(self) -> np.ndarray:
        return self.data["evs"]

    @property
    def stds(self) -> np.ndarray:
        return self.data["stds"]

    @property
    def jacobian(self) -> np.ndarray:
        return self.data["jacobian"]

    @property
    def registers(self) -> dict:
        """{name: {"num_bits": n, "array": uint8 [bindings, shots, bytes]}} (Qiskit BitArray layout)."""
        return self.data["registers"]

    def counts(self, register: str | None = None, binding: int = 0) -> dict[str, int]:
        reg = self.registers[register or next(iter(self.registers))]
        n, arr = reg["num_bits"], reg["array"][binding]
        ints = np.zeros(arr.shape[0], dtype=np.uint64)
        for b in range(arr.shape[1]):
            ints = (ints << np.uint64(8)) | arr[:, b].astype(np.uint64)
        vals, cnt = np.unique(ints, return_counts=True)
        return {format(int(v), f"0{n}b"): int(c) for v, c in zip(vals, cnt)}


def task_outcome(d: dict) -> TaskResult:
    """A finished task's JSON -> TaskResult, or raise its error."""
    state = d["state"]
    if state == "DONE":
        return TaskResult(d["id"], None, wire.decode_tree(d["result"]), d.get("meta", {}))
    if state == "CANCELLED":
        raise TaskCancelled(f"task {d['id']} was cancelled", field="task")
    err = d.get("error") or {}
    raise TaskFailed(err.get("message", f"task {d['id']} failed"), field=err.get("field"), limit=err.get("limit"))


_task_outcome = task_outcome


def decode_response(status: int, content_type: str, data: bytes | bytearray) -> Any:
    """An HTTP answer -> its JSON (or raw bytes), or raise the daemon's error as its qsched class."""
    obj = json.loads(data) if data and content_type.startswith("application/json") else data
    if status >= 400:
        raise errors.from_json(status, obj if isinstance(obj, dict) else {})
    return obj


def _expired_template(e: QschedError) -> bool:
    return bool(e.field) and str(e.field).endswith(".template")


class TemplateCache:
    """Templates this session already sent: later tasks send only the digest. Circuits are re-serialized
    each call (QPY dump ~0.1 ms) because a QuantumCircuit is mutable and cannot be a cache key."""

    def __init__(self) -> None:
        self.sent: set[str] = set()
        self.linear: set[str] = set()       # templates whose angles are all linear (gradients need them)

    def qpy(self, circuit: Any) -> tuple[str, bytes | None]:
        data = wire.dump_qpy(circuit)
        d = wire.digest(data)
        return d, (None if d in self.sent else data)


def task_body(kind: str, template: str, params: Any, *, observables: Any = None, shots: int | None = None,
              method: str | None = None, seed: int | None = None) -> dict:
    p = np.atleast_2d(np.asarray(params if params is not None else np.zeros((1, 0)), dtype=np.float64))
    body: dict[str, Any] = {"kind": kind, "template": template, "params": wire.encode_array(p), "shots": shots}
    if observables is not None:
        body["observables"] = wire.observables_to_wire(observables)
    if method:
        body["method"] = method
    if seed is not None:
        body["seed"] = int(seed) if isinstance(seed, np.integer) else seed   # the daemon checks it
    return body


def _check_linear(circuit: Any, field: str) -> None:
    """A gradient task's angles must be linear in its parameters (the chain rule back to them uses
    constant coefficients): refused here, at submit, rather than by the worker at result()."""
    from ..devices.base import TaskError
    from ..devices.circuits import analyse
    try:
        analyse(circuit).require_linear()
    except TaskError as e:
        raise errors.BadRequest(e.message.removeprefix("template: "), field=field) from None


def new_idempotency_key() -> str:
    """One per logical submit, reused by its retries: the daemon answers a repeat with the same ids."""
    return uuid.uuid4().hex


# ------------------------------------------------------------------------------------------- calls
@dataclass
class Call:
    """One request an operation wants answered."""
    method: str
    path: str
    body: Any = None                       # dict/list: JSON; bytes: sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None           # transport timeout; None: the client's
    session: SessionCore | None = None     # its token is added at each send; a refused token re-attaches
    idempotent: bool = True                # may be sent again after a failure that may have reached the daemon
    rebuild: Callable[[], Call] | None = None   # a long-poll re-issued after an outage, with the time left
    deadline: float | None = None          # the caller's (clock): retrying stops there with a Timeout
    retry_s: float | None = None           # this call's own retry budget (None: the client's)
    purpose: str | None = None             # over TCP, prove who we are with a MUNGE credential for this


@dataclass
class Send:
    """Effect: send one request; the face answers with the decoded body or throws the error in."""
    method: str
    path: str
    body: Any
    headers: dict[str, str]
    timeout: float | None


@dataclass
class Sleep:
    """Effect: wait before the next attempt."""
    seconds: float


Op = Generator[Call, Any, T]                 # an operation: yields calls, returns its value
Run = Generator["Send | Sleep", Any, T]      # an executed operation: yields effects


class ClientCore:
    """What the sync Client and the AsyncClient share: the API as operations, and their execution
    with retries. A face sets `_session_cls` and performs the effects of `execute`."""
    _session_cls: type[SessionCore]

    def __init__(self, url: str, *, retry_s: float | None, identity: Callable[[str], dict[str, str]],
                 clock: Callable[[], float] = time.monotonic, rand: Callable[[], float] = random.random):
        self.url = url
        self.retry_s = retry_s                   # None: QSCHED_RETRY_S, read when an outage starts
        self._identity = identity
        self._clock, self._rand = clock, rand
        self._lock = threading.Lock()            # the sync Client may be shared by threads
        self._outage: float | None = None        # when the current outage began (it is logged once)
        self._answered = False                   # a daemon has answered (a reply or an HTTP error) once

    def retry_policy(self, total_s: float | None = None) -> RetryPolicy:
        """QSCHED_RETRY_S / QSCHED_CONNECT_S, the total replaced by `total_s`, else by the client's retry_s."""
        policy = RetryPolicy.from_env()
        total = total_s if total_s is not None else self.retry_s
        return policy if total is None else replace(policy, total_s=total)

    # ------------------------------------------------------------------ execution
    def execute(self, op: Op[T]) -> Run[T]:
        """Run an operation: each of its calls through `_send` (retries, re-attach)."""
        reply: Any = None
        error: QschedError | None = None
        while True:
            try:
                call = op.throw(error) if error is not None else op.send(reply)
            except StopIteration as stop:
                return stop.value
            reply, error = None, None
            try:
                reply = yield from self._send(call)
            except QschedError as e:
                error = e

    def _send(self, call: Call) -> Run[Any]:
        backoff: Backoff | None = None
        reattached = False
        while True:
            # a fresh credential each attempt: munged refuses one it has seen
            headers = {**call.headers, **(self._identity(call.purpose) if call.purpose else {}),
                       **(call.session._auth() if call.session else {})}
            try:
                reply = yield Send(call.method, call.path, call.body, headers, call.timeout)
            except QschedError as e:
                if not isinstance(e, Unreachable):
                    self._answered = True
                reason = retry_reason(e, idempotent=call.idempotent)
                if reason is None:
                    if not reattached and self._may_reattach(call, e):
                        reattached = True
                        yield from self._reattach(call.session, e)
                        continue
                    raise
                now = self._clock()
                if call.deadline is not None and now >= call.deadline:
                    raise Timeout(f"{call.method} {call.path.split('?')[0]}: no answer within the caller's timeout "
                                  f"(daemon: {reason})", field="timeout") from e
                unreached = e if isinstance(e, Unreachable) and not self._answered else None
                never = unreached is not None
                if backoff is None:
                    policy = self.retry_policy(call.retry_s)
                    backoff = Backoff(policy.first_contact() if never else policy, now)
                delay = backoff.next_delay(now, self._rand())
                if delay is None:
                    if unreached is not None:
                        raise Unreachable(f"{e.message}; {self._no_daemon_hint()}", cause=unreached.cause,
                                          sent=unreached.sent) from e
                    if backoff.policy.enabled:
                        log.warning("qsched daemon at %s: still %s after %.0f s (QSCHED_RETRY_S); giving up",
                                    self.url, reason, now - backoff.start)
                    raise
                self._outage_began(reason, backoff.policy, never)
                yield Sleep(delay)
                if call.rebuild is not None:
                    call = call.rebuild()
                continue
            self._answered = True
            if backoff is not None:          # only a call that waited out the outage may say it ended
                self._outage_ended()
            return reply

    def _no_daemon_hint(self) -> str:
        return (f"no qsched daemon has answered at {self.url} (the address comes from QSCHED_URL, else the "
                "default socket): start one with `qsched up`, or set QSCHED_URL to a running daemon's address")

    def _outage_began(self, reason: str, policy: RetryPolicy, never_answered: bool) -> None:
        with self._lock:
            first = self._outage is None
            if first:
                self._outage = self._clock()
        if first and never_answered:         # most likely a wrong address or no daemon: say so at once
            log.warning("qsched daemon at %s: %s; %s; retrying for up to %.0f s (QSCHED_CONNECT_S)",
                        self.url, reason, self._no_daemon_hint(), policy.total_s)
        elif first:
            log.info("qsched daemon at %s: %s; retrying for up to %.0f s (QSCHED_RETRY_S)",
                     self.url, reason, policy.total_s)

    def _outage_ended(self) -> None:
        with self._lock:
            began, self._outage = self._outage, None
        if began is not None:
            log.info("qsched daemon at %s: back after %.1f s", self.url, self._clock() - began)

    @staticmethod
    def _may_reattach(call: Call, e: QschedError) -> bool:
        """A session token refused (a daemon restarted on a new secret): attach again, once per call."""
        return e.status in (401, 403) and call.session is not None and bool(call.session.token) \
            and not call.path.endswith("/attach")

    def _reattach(self, session: SessionCore | None, refused: QschedError) -> Run[None]:
        assert session is not None
        try:
            info = yield from self._send(Call("POST", f"/v1/sessions/{session.id}/attach", purpose="attach"))
        except QschedError:
            raise refused from None            # attach is refused too: the token's refusal is the answer
        session.token = info.get("token")
        log.info("qsched daemon at %s: session %s token refused (%s); attached again", self.url, session.id,
                 refused.message)

    # ------------------------------------------------------------------ operations (the API, once)
    def _get(self, path: str) -> Op[Any]:
        return (yield Call("GET", path))

    def _list(self, path: str) -> Op[Any]:
        """A listing: over TCP the daemon answers it for a MUNGE-proven user only."""
        return (yield Call("GET", path, purpose="list"))

    @staticmethod
    def _users_query(user: str | list[str] | None) -> str:
        users = [user] if isinstance(user, str) else list(user or ())
        return f"user={urllib.parse.quote(','.join(users))}" if users else ""

    def _op_health(self) -> Op[dict]:
        return (yield from self._get("/v1/health"))

    def _op_devices(self) -> Op[list[dict]]:
        return (yield from self._list("/v1/devices"))["devices"]

    def _op_queue(self, user: str | list[str] | None = None, start: bool = False) -> Op[dict]:
        q = "&".join(x for x in (self._users_query(user), "start=1" if start else "") if x)
        return (yield from self._list("/v1/queue" + (f"?{q}" if q else "")))

    def _op_estimate(self, pool: str | None = None, cls: str | None = None, account: str | None = None,
                     bindings: int = 1) -> Op[dict]:
        fields = {"pool": pool, "class": cls, "account": account, "bindings": bindings}
        q = urllib.parse.urlencode({k: v for k, v in fields.items() if v is not None})
        return (yield from self._get(f"/v1/estimate?{q}"))

    def _op_sessions(self, user: str | list[str] | None = None) -> Op[list[dict]]:
        q = self._users_query(user)
        return (yield from self._list("/v1/sessions" + (f"?{q}" if q else "")))["sessions"]

    def _op_session_info(self, sid: str) -> Op[dict]:
        return (yield from self._list(f"/v1/sessions/{sid}"))

    def _op_set_device_state(self, name: str, state: str, reason: str = "") -> Op[dict]:
        path = f"/v1/admin/devices/{urllib.parse.quote(name, safe='')}/state"
        return (yield Call("POST", path, body={"state": state, "reason": reason}))

    def _op_add_window(self, name: str, start: float, end: float | None, reason: str = "") -> Op[dict]:
        path = f"/v1/admin/devices/{urllib.parse.quote(name, safe='')}/windows"
        return (yield Call("POST", path, body={"start": start, "end": end, "reason": reason}))

    def _op_share(self) -> Op[list[dict]]:
        return (yield from self._get("/v1/share"))["shares"]

    def _op_prio(self) -> Op[list[dict]]:
        return (yield from self._get("/v1/prio"))["sessions"]

    def _op_policy(self) -> Op[dict]:
        return (yield from self._get("/v1/policy"))

    def _op_replay(self, method: str, kind: str, key: str) -> Op[dict]:
        """Admin socket: a replay record (kind job or resume): GET its info, DELETE (purge) it."""
        path = f"/v1/admin/replay/{kind}/{urllib.parse.quote(key, safe='')}"
        return (yield Call(method, path))

    def _op_set_pool_replay(self, pool: str, enabled: bool) -> Op[dict]:
        path = f"/v1/admin/replay/pools/{urllib.parse.quote(pool, safe='')}"
        return (yield Call("POST", path, body={"enabled": enabled}))

    def _op_update_session(self, sid: str, **changes: Any) -> Op[dict]:
        """Admin socket: class=, weight=, hold=True with reason=, or release=True."""
        path = f"/v1/admin/sessions/{urllib.parse.quote(sid, safe='')}"
        return (yield Call("POST", path, body={k: v for k, v in changes.items() if v is not None}))

    def _op_close_session(self, sid: str) -> Op[dict]:
        # a repeat of a close that reached the daemon would be a 404, not the usage record
        return (yield Call("DELETE", f"/v1/sessions/{sid}", idempotent=False, purpose="close"))

    def _op_accounting(self, since: float = 0.0, user: str | list[str] | None = None) -> Op[list[dict]]:
        q = self._users_query(user)
        return (yield from self._list(f"/v1/acct?since={since}" + (f"&{q}" if q else "")))["records"]

    def _op_metrics(self) -> Op[str]:
        return (yield from self._list("/metrics")).decode()

    def _op_open_session(self, pool: str | None = None, *, name: str = "", cls: str | None = None,
                         weight: float = 1.0, account: str = "", resume: str | None = None) -> Op[Any]:
        """resume: a replay record's key (else QSCHED_RESUME): a job run again under it gets the answers
        the first run got for the same requests, without device time (docs/user-guide.md)."""
        body = {"pool": pool or os.environ.get("QSCHED_POOL") or None, "name": name,
                "class": cls or os.environ.get("QSCHED_CLASS") or "batch", "weight": weight, "account": account,
                "resume": resume or os.environ.get("QSCHED_RESUME") or None}
        # not repeated after a failure that may have reached the daemon: that could open two sessions
        info = yield Call("POST", "/v1/sessions", body=body, purpose="open", idempotent=False)
        return self._session_cls(self, info)

    def _op_attach(self, sid: str, resume: str | None = None) -> Op[Any]:
        """resume (else QSCHED_RESUME): the job's session replays and records under this key."""
        s = self._session_cls(self, (yield Call("POST", f"/v1/sessions/{sid}/attach", purpose="attach")))
        s.attached = True        # the job's session: Slurm closes it when the job ends
        key = resume or os.environ.get("QSCHED_RESUME")
        if key:
            yield s._call("POST", f"/v1/sessions/{sid}/resume", body={"resume": key})
        return s

    def _op_session(self, pool: str | None = None, **kw: Any) -> Op[Any]:
        """The job's session when running under Slurm (QSCHED_SESSION), else a new one."""
        sid = os.environ.get("QSCHED_SESSION")
        return (yield from (self._op_attach(sid, kw.get("resume")) if sid else self._op_open_session(pool, **kw)))


class SessionCore:
    """A session's state and operations; the faces add the methods that run them."""
    _future_cls: type[FutureCore]
    attached = False

    def __init__(self, client: Any, info: dict):
        self.client = client
        self.info = info
        self.id: str = info["id"]
        self.token: str | None = info.get("token")
        self.pool: str | None = info.get("pool")
        self.closed = False
        self.usage: dict | None = None
        self._templates = TemplateCache()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _call(self, method: str, path: str, **kw: Any) -> Call:
        return Call(method, path, session=self, **kw)

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else self.client._clock() + timeout

    def _left(self, deadline: float | None) -> float:
        return POLL_S if deadline is None else min(POLL_S, deadline - self.client._clock())

    def _op_upload(self, circuit: Any) -> Op[str]:
        digest, data = self._templates.qpy(circuit)
        if data is not None:
            yield self._call("POST", f"/v1/sessions/{self.id}/templates", body=data,
                             headers={"Content-Type": "application/x-qpy"})
            self._templates.sent.add(digest)
        return digest

    def _op_post_tasks(self, tasks: list[dict], wait: float | None = None) -> Op[dict]:
        """All tasks in one request, under one idempotency key however often it is sent. A template the
        daemon has let expire (unused for days) is uploaded again and the request sent again once."""
        key = new_idempotency_key()
        query, timeout = (f"?wait={wait}", wait + 30) if wait else ("", None)
        for attempt in (0, 1):
            bodies = []
            for i, t in enumerate(tasks):
                c = t.get("circuit", t.get("template"))
                digest = c if isinstance(c, str) else (yield from self._op_upload(c))
                if t["kind"] == "gradient" and not isinstance(c, str) and digest not in self._templates.linear:
                    _check_linear(c, f"tasks[{i}].template")
                    self._templates.linear.add(digest)
                bodies.append(task_body(t["kind"], digest, t.get("params"), observables=t.get("observables"),
                                        shots=t.get("shots"), method=t.get("method"), seed=t.get("seed")))
            try:
                return (yield self._call("POST", f"/v1/sessions/{self.id}/tasks{query}",
                                         body={"tasks": bodies, "idempotency_key": key}, timeout=timeout))
            except errors.NotFound as e:
                if attempt or not _expired_template(e):
                    raise
                self._templates.sent.clear()
        raise AssertionError("unreachable")

    def _op_submit_many(self, tasks: list[dict]) -> Op[list]:
        return [self._future_cls(self, tid) for tid in (yield from self._op_post_tasks(tasks))["ids"]]

    def _op_run(self, kind: str, circuit: Any, params: Any = None, *, observables: Any = None,
            shots: int | None = None, method: str | None = None,
                seed: int | None = None, timeout: float | None = None) -> Op[TaskResult]:
        """Submit and wait in one round trip where the task finishes within the long-poll."""
        deadline = self._deadline(timeout)
        task = {"kind": kind, "circuit": circuit, "params": params, "observables": observables, "shots": shots,
                "method": method, "seed": seed}
        res = yield from self._op_post_tasks([task], wait=max(0.0, self._left(deadline)))
        fut = self._future_cls(self, res["ids"][0])
        if res.get("tasks"):                   # absent when asked not to wait (timeout <= 0)
            fut._absorb(res["tasks"][0])
        return (yield from fut._op_result(timeout, deadline))

    def _op_submit_wait(self, tasks: list[dict], timeout: float | None = None) -> Op[list[TaskResult]]:
        """Submit many tasks and wait for all of them, in one round trip where they finish within the
        long-poll (POST .../tasks?wait=): a small task pays one request, not a submit and a wait."""
        deadline = self._deadline(timeout)
        res = yield from self._op_post_tasks(tasks, wait=max(0.0, self._left(deadline)))
        futures = [self._future_cls(self, tid) for tid in res["ids"]]
        for f, d in zip(futures, res.get("tasks") or ()):     # absent when asked not to wait
            f._absorb(d)
        return (yield from self._op_wait(futures, timeout, deadline))

    def _wait_call(self, todo: list[FutureCore], deadline: float | None) -> Call:
        left = max(0.0, self._left(deadline))
        return self._call("POST", "/v1/tasks/wait", body={"ids": [f.id for f in todo], "timeout": left},
                          timeout=left + 30, rebuild=lambda: self._wait_call(todo, deadline), deadline=deadline)

    def _op_wait(self, futures: list, timeout: float | None = None,
                 deadline: float | None = None) -> Op[list[TaskResult]]:
        """Results of many tasks with one long-poll per round, in order."""
        if deadline is None:
            deadline = self._deadline(timeout)
        todo = [f for f in futures if f._done is None]
        while todo:
            if self._left(deadline) <= 0:
                raise Timeout(f"{len(todo)} tasks not finished within {timeout} s", field="timeout", limit=timeout)
            res = yield self._wait_call(todo, deadline)
            for f, d in zip(todo, res["tasks"]):
                f._absorb(d)
            todo = [f for f in todo if f._done is None]
        return [task_outcome(f._done) for f in futures]

    def _op_status(self) -> Op[dict]:
        return (yield self._call("GET", f"/v1/sessions/{self.id}"))

    def _op_estimate(self) -> Op[dict]:
        return (yield self._call("GET", f"/v1/sessions/{self.id}/estimate"))

    def _op_close(self, retry_s: float | None = None) -> Op[dict | None]:
        if not self.closed:
            self.usage = yield self._call("DELETE", f"/v1/sessions/{self.id}", idempotent=False, retry_s=retry_s)
            self.closed = True
        return self.usage


class FutureCore:
    """A submitted task: its id, and its final JSON once seen."""

    def __init__(self, session: Any, tid: str):
        self.session, self.id = session, tid
        self._done: dict | None = None

    def _absorb(self, d: dict) -> None:
        if d["state"] in FINAL:
            self._done = d

    def _get_call(self, deadline: float | None, poll: bool) -> Call:
        wait = max(0.0, self.session._left(deadline)) if poll else 0
        return self.session._call("GET", f"/v1/tasks/{self.id}?wait={wait}", timeout=wait + 30,
                                  rebuild=lambda: self._get_call(deadline, poll), deadline=deadline)

    def _op_state(self) -> Op[str]:
        if self._done is None:
            d = yield self._get_call(None, False)
            self._absorb(d)
            return d["state"]
        return self._done["state"]

    def _op_result(self, timeout: float | None = None, deadline: float | None = None) -> Op[TaskResult]:
        if deadline is None:
            deadline = self.session._deadline(timeout)
        while self._done is None:
            if self.session._left(deadline) <= 0:
                raise Timeout(f"task {self.id}: not finished within {timeout} s", field="timeout", limit=timeout)
            self._absorb((yield self._get_call(deadline, True)))
        return task_outcome(self._done)

    def _op_cancel(self) -> Op[str]:
        return (yield self.session._call("DELETE", f"/v1/tasks/{self.id}"))["state"]
