"""Long-polls on tasks: a client's wait is a future per task, resolved when the task ends."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..models import Task, TaskState


class Waiters:
    def __init__(self, tasks: dict[str, Task], accepting: Callable[[], bool]):
        self._tasks = tasks                  # the index's live tasks
        self._accepting = accepting
        self._futs: dict[str, list[asyncio.Future]] = {}

    def resolve(self, tid: str, payload: bytes | None = None) -> None:
        """The task ended: answer its waiters (with its result, if it came inline with the event)."""
        for fut in self._futs.pop(tid, ()):
            if not fut.done():
                fut.set_result(payload)

    def resolve_gone(self) -> None:
        """After a rebuild: tasks that ended while the index could not see them (the waiter reads Redis)."""
        for tid in [t for t in self._futs if t not in self._tasks]:
            self.resolve(tid)

    def release(self) -> None:
        """Drain: answer now every long-poll on a task that will not run before the stop (a client
        re-polls the next daemon); those on running batches are answered as the batches end."""
        for tid in list(self._futs):
            t = self._tasks.get(tid)
            if t is None or t.state == TaskState.PENDING:
                self.resolve(tid)

    async def wait(self, tids: list[str], timeout: float) -> dict[str, bytes]:
        """Wait until the tasks are final or the timeout passes. Returns the results that arrived
        inline with their completion events (the rest the caller reads from Redis)."""
        futs = []
        loop = asyncio.get_running_loop()
        for tid in tids:
            t = self._tasks.get(tid)
            if t is not None and (self._accepting() or t.state != TaskState.PENDING):
                f = loop.create_future()
                self._futs.setdefault(tid, []).append(f)
                futs.append((tid, f))
        if futs and timeout > 0:
            await asyncio.wait([f for _, f in futs], timeout=timeout)
        ready = {}
        for tid, f in futs:
            if f.done():
                if f.result() is not None:
                    ready[tid] = f.result()
                continue
            lst = self._futs.get(tid)          # drop our waiters that did not fire
            if lst and f in lst:
                lst.remove(f)
                if not lst:
                    del self._futs[tid]
        return ready
