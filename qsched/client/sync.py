"""The blocking face: `Client`, `Session`, `TaskFuture`. Each method runs one core operation; the
effects are a request on this thread's kept-alive connection and time.sleep for a backoff."""
from __future__ import annotations

import time
from typing import Any

from ..errors import QschedError
from .core import (
    ClientCore,
    FutureCore,
    Op,
    Send,
    SessionCore,
    T,
    TaskResult,
    default_url,
)
from .transport import SyncTransport, identity_headers


class TaskFuture(FutureCore):
    session: Session

    def done(self) -> bool:
        return self.session.client._run(self._op_state()) in ("DONE", "FAILED", "CANCELLED")

    def state(self) -> str:
        return self.session.client._run(self._op_state())

    def result(self, timeout: float | None = None) -> TaskResult:
        return self.session.client._run(self._op_result(timeout))

    def cancel(self) -> str:
        return self.session.client._run(self._op_cancel())


class Session(SessionCore):
    _future_cls = TaskFuture
    client: Client

    def upload(self, circuit: Any) -> str:
        return self.client._run(self._op_upload(circuit))

    def submit(self, kind: str, circuit: Any, params: Any = None, *, observables: Any = None,
            shots: int | None = None, method: str | None = None,
               seed: int | None = None) -> TaskFuture:
        """`seed`: the simulator's seed for this task alone (the same seed, the same samples)."""
        return self.submit_many([{"kind": kind, "circuit": circuit, "params": params, "observables": observables,
                                  "shots": shots, "method": method, "seed": seed}])[0]

    def submit_many(self, tasks: list[dict]) -> list[TaskFuture]:
        """All tasks in one request (one primitive call = one request)."""
        return self.client._run(self._op_submit_many(tasks))

    def run(self, kind: str, circuit: Any, params: Any = None, *, observables: Any = None,
            shots: int | None = None, method: str | None = None,
            seed: int | None = None, timeout: float | None = None) -> TaskResult:
        """Submit and wait in one round trip where the task finishes within the long-poll."""
        return self.client._run(self._op_run(kind, circuit, params, observables=observables, shots=shots,
                                             method=method, seed=seed, timeout=timeout))

    def submit_wait(self, tasks: list[dict], timeout: float | None = None) -> list[TaskResult]:
        """Submit all tasks in one request and return their results, in order: one round trip where
        they finish within the long-poll (a failed task raises its error, as TaskFuture.result does)."""
        return self.client._run(self._op_submit_wait(tasks, timeout))

    def wait(self, futures: list, timeout: float | None = None) -> list[TaskResult]:
        """Results of many tasks with one long-poll per round, in order."""
        return self.client._run(self._op_wait(futures, timeout))

    def status(self) -> dict:
        return self.client._run(self._op_status())

    def estimate(self) -> dict:
        """When this session's work is predicted to run: next_start (its next pending task) and
        backlog_end (Unix times, null when not predicted), device_s, and each live task's run."""
        return self.client._run(self._op_estimate())

    def close(self, *, retry_s: float | None = None) -> dict | None:
        """retry_s: this close's own retry budget (a finalizer closing after the daemon is gone wants a short one)."""
        return self.client._run(self._op_close(retry_s))

    def __enter__(self) -> Session:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.attached:
            self.close()


class Client(ClientCore):
    """Blocking client; one may be shared by threads (each gets its own connection).
    retry_s: how long to ride through a daemon outage (default: QSCHED_RETRY_S, else 300; 0: never)."""
    _session_cls = Session

    def __init__(self, url: str | None = None, *, timeout: float = 60.0, retry_s: float | None = None):
        url = url or default_url()
        self._t = SyncTransport(url, timeout)
        super().__init__(url, retry_s=retry_s, identity=lambda purpose: identity_headers(self._t.unix, purpose))

    def _run(self, op: Op[T]) -> T:
        run = self.execute(op)
        reply: Any = None
        error: QschedError | None = None
        while True:
            try:
                effect = run.throw(error) if error is not None else run.send(reply)
            except StopIteration as stop:
                return stop.value
            reply, error = None, None
            if not isinstance(effect, Send):
                time.sleep(effect.seconds)
                continue
            try:
                reply = self._t.request(effect.method, effect.path, body=effect.body, headers=effect.headers,
                                        timeout=effect.timeout)
            except QschedError as e:
                error = e

    def health(self) -> dict:
        return self._run(self._op_health())

    def devices(self) -> list[dict]:
        return self._run(self._op_devices())

    def queue(self, user: str | list[str] | None = None, start: bool = False) -> dict:
        """user: only these users' sessions (another user's: 403 unless an admin asks); start: each
        session's predicted start and end (as squeue --start)."""
        return self._run(self._op_queue(user, start))

    def estimate(self, pool: str | None = None, cls: str | None = None, account: str | None = None,
                 bindings: int = 1) -> dict:
        """As sbatch --test-only: the pool's backlog (backlog_s, drain_s) and when a new session of this
        class and account would start a task of `bindings` bindings (start, wait_s, device_s)."""
        return self._run(self._op_estimate(pool, cls, account, bindings))

    def sessions(self, user: str | list[str] | None = None) -> list[dict]:
        """Open sessions the caller may see; user: only these users' (another user's: 403 unless admin)."""
        return self._run(self._op_sessions(user))

    def session_info(self, sid: str) -> dict:
        return self._run(self._op_session_info(sid))

    def share(self) -> list[dict]:
        return self._run(self._op_share())

    def prio(self) -> list[dict]:
        return self._run(self._op_prio())

    def policy(self) -> dict:
        return self._run(self._op_policy())

    def update_session(self, sid: str, **changes: Any) -> dict:
        return self._run(self._op_update_session(sid, **changes))

    def set_device_state(self, name: str, state: str, reason: str = "") -> dict:
        """Admin socket only: online, draining, paused or maintenance."""
        return self._run(self._op_set_device_state(name, state, reason))

    def add_window(self, name: str, start: float, end: float | None, reason: str = "") -> dict:
        """Admin socket only: a planned maintenance window over the device (end None: until resumed)."""
        return self._run(self._op_add_window(name, start, end, reason))

    def close_session(self, sid: str) -> dict:
        """Close any session the caller may close (its own; an admin: any); returns its usage record."""
        return self._run(self._op_close_session(sid))

    def accounting(self, since: float = 0.0, user: str | list[str] | None = None) -> list[dict]:
        return self._run(self._op_accounting(since, user))

    def metrics(self) -> str:
        return self._run(self._op_metrics())

    def replay(self, method: str, kind: str, key: str) -> dict:
        """Admin socket: GET or DELETE (purge) the replay record of a job (kind "job") or resume key."""
        return self._run(self._op_replay(method, kind, key))

    def set_pool_replay(self, pool: str, enabled: bool) -> dict:
        return self._run(self._op_set_pool_replay(pool, enabled))

    def open_session(self, pool: str | None = None, *, name: str = "", cls: str | None = None,
                     weight: float = 1.0, account: str = "", resume: str | None = None) -> Session:
        return self._run(self._op_open_session(pool, name=name, cls=cls, weight=weight, account=account,
                                resume=resume))

    def attach(self, sid: str, resume: str | None = None) -> Session:
        return self._run(self._op_attach(sid, resume))

    def session(self, pool: str | None = None, **kw: Any) -> Session:
        """The job's session when running under Slurm (QSCHED_SESSION), else a new one."""
        return self._run(self._op_session(pool, **kw))

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> Client:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
