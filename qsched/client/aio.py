"""The asyncio face: `AsyncClient`, `AsyncSession`, `AsyncTaskFuture`, the same API as the sync face
(every method a coroutine), running the same core operations over aiohttp."""
from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

from ..errors import QschedError
from .core import (
    Call,
    ClientCore,
    FutureCore,
    Op,
    Send,
    SessionCore,
    T,
    TaskResult,
    default_url,
)
from .transport import AsyncTransport, identity_headers


class AsyncTaskFuture(FutureCore):
    session: AsyncSession

    async def done(self) -> bool:
        return await self.session.client._run(self._op_state()) in ("DONE", "FAILED", "CANCELLED")

    async def state(self) -> str:
        return await self.session.client._run(self._op_state())

    async def result(self, timeout: float | None = None) -> TaskResult:
        return await self.session.client._run(self._op_result(timeout))

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result().__await__()

    async def cancel(self) -> str:
        return await self.session.client._run(self._op_cancel())


class AsyncSession(SessionCore):
    _future_cls = AsyncTaskFuture
    client: AsyncClient

    async def upload(self, circuit: Any) -> str:
        return await self.client._run(self._op_upload(circuit))

    async def submit(self, kind: str, circuit: Any, params: Any = None, *, observables: Any = None,
                     shots: int | None = None, method: str | None = None, seed: int | None = None) -> AsyncTaskFuture:
        return (await self.submit_many([{"kind": kind, "circuit": circuit, "params": params, "observables": observables,
                                             "shots": shots, "method": method, "seed": seed}]))[0]

    async def submit_many(self, tasks: list[dict]) -> list[AsyncTaskFuture]:
        return await self.client._run(self._op_submit_many(tasks))

    async def run(self, kind: str, circuit: Any, params: Any = None, *, observables: Any = None,
            shots: int | None = None, method: str | None = None,
                  seed: int | None = None, timeout: float | None = None) -> TaskResult:
        return await self.client._run(self._op_run(kind, circuit, params, observables=observables, shots=shots,
                                                   method=method, seed=seed, timeout=timeout))

    async def submit_wait(self, tasks: list[dict], timeout: float | None = None) -> list[TaskResult]:
        """Submit all tasks in one request and return their results, in order (one round trip where
        they finish within the long-poll)."""
        return await self.client._run(self._op_submit_wait(tasks, timeout))

    async def wait(self, futures: list, timeout: float | None = None) -> list[TaskResult]:
        return await self.client._run(self._op_wait(futures, timeout))

    async def status(self) -> dict:
        return await self.client._run(self._op_status())

    async def estimate(self) -> dict:
        """When this session's work is predicted to run: next_start (its next pending task) and
        backlog_end (Unix times, null when not predicted), device_s, and each live task's run."""
        return await self.client._run(self._op_estimate())

    async def close(self, *, retry_s: float | None = None) -> dict | None:
        """retry_s: this close's own retry budget (a finalizer closing after the daemon is gone wants a short one)."""
        return await self.client._run(self._op_close(retry_s))

    async def __aenter__(self) -> AsyncSession:  # noqa: PYI034
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.attached:
            await self.close()


class AsyncClient(ClientCore):
    """Coroutine client for one event loop. retry_s as for Client."""
    _session_cls = AsyncSession

    def __init__(self, url: str | None = None, *, timeout: float = 60.0, retry_s: float | None = None):
        url = url or default_url()
        self.timeout = timeout
        self._t = AsyncTransport(url, timeout)
        super().__init__(url, retry_s=retry_s, identity=lambda purpose: identity_headers(self._t.unix, purpose))

    async def _run(self, op: Op[T]) -> T:
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
                await asyncio.sleep(effect.seconds)
                continue
            try:
                reply = await self._t.request(effect.method, effect.path, body=effect.body, headers=effect.headers,
                                              timeout=effect.timeout)
            except QschedError as e:
                error = e

    async def _request(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                       headers: dict | None = None) -> Any:
        """One request with the client's retries (benchmarks reach the API directly with it)."""
        call = Call(method, path, body=json_body if json_body is not None else data, headers=dict(headers or {}),
                    idempotent=method != "POST")

        def op() -> Op[Any]:
            return (yield call)
        return await self._run(op())

    async def health(self) -> dict:
        return await self._run(self._op_health())

    async def devices(self) -> list[dict]:
        return await self._run(self._op_devices())

    async def queue(self, user: str | list[str] | None = None, start: bool = False) -> dict:
        """user: only these users' sessions (another user's: 403 unless an admin asks); start: each
        session's predicted start and end (as squeue --start)."""
        return await self._run(self._op_queue(user, start))

    async def estimate(self, pool: str | None = None, cls: str | None = None, account: str | None = None,
                 bindings: int = 1) -> dict:
        """As sbatch --test-only: the pool's backlog (backlog_s, drain_s) and when a new session of this
        class and account would start a task of `bindings` bindings (start, wait_s, device_s)."""
        return await self._run(self._op_estimate(pool, cls, account, bindings))

    async def sessions(self, user: str | list[str] | None = None) -> list[dict]:
        """Open sessions the caller may see; user: only these users' (another user's: 403 unless admin)."""
        return await self._run(self._op_sessions(user))

    async def session_info(self, sid: str) -> dict:
        return await self._run(self._op_session_info(sid))

    async def share(self) -> list[dict]:
        return await self._run(self._op_share())

    async def prio(self) -> list[dict]:
        return await self._run(self._op_prio())

    async def policy(self) -> dict:
        return await self._run(self._op_policy())

    async def update_session(self, sid: str, **changes: Any) -> dict:
        return await self._run(self._op_update_session(sid, **changes))

    async def set_device_state(self, name: str, state: str, reason: str = "") -> dict:
        return await self._run(self._op_set_device_state(name, state, reason))

    async def close_session(self, sid: str) -> dict:
        return await self._run(self._op_close_session(sid))

    async def accounting(self, since: float = 0.0, user: str | list[str] | None = None) -> list[dict]:
        return await self._run(self._op_accounting(since, user))

    async def metrics(self) -> str:
        return await self._run(self._op_metrics())

    async def replay(self, method: str, kind: str, key: str) -> dict:
        """Admin socket: GET or DELETE (purge) the replay record of a job (kind "job") or resume key."""
        return await self._run(self._op_replay(method, kind, key))

    async def set_pool_replay(self, pool: str, enabled: bool) -> dict:
        return await self._run(self._op_set_pool_replay(pool, enabled))

    async def open_session(self, pool: str | None = None, *, name: str = "", cls: str | None = None,
                           weight: float = 1.0, account: str = "", resume: str | None = None) -> AsyncSession:
        return await self._run(self._op_open_session(pool, name=name, cls=cls, weight=weight, account=account,
                                      resume=resume))

    async def attach(self, sid: str, resume: str | None = None) -> AsyncSession:
        return await self._run(self._op_attach(sid, resume))

    async def session(self, pool: str | None = None, **kw: Any) -> AsyncSession:
        return await self._run(self._op_session(pool, **kw))

    async def close(self) -> None:
        await self._t.close()

    async def __aenter__(self) -> AsyncClient:  # noqa: PYI034
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
