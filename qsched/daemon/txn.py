"""The write discipline: one writer at a time, and an index known to match Redis.

The ordering rule: under the write lock, decide and change memory first, then write Redis. If the
write fails, the index may now hold what Redis does not: it is marked stale, and the next writer
rebuilds it from Redis (the truth) before it changes anything. While writes keep failing (a full
disk), writers are answered 503 at once rather than rebuilding per request."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.exceptions import RedisError

from ..errors import Unavailable
from ..metrics import Metrics

log = logging.getLogger("qsched.scheduler")

RETRY_AFTER_FAILURE_S = 1.0


class Writer:
    def __init__(self, metrics: Metrics, rebuild: Callable[[], Awaitable[None]]):
        self.metrics = metrics
        self._rebuild = rebuild
        self._lock = asyncio.Lock()
        self.stale = False          # a write failed (or the store changed under us): rebuild first
        self._failed_at = 0.0
        self.writable = True        # the last write Redis accepted (qsched_store_writable)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        """The write lock, with an index known to match Redis."""
        async with self._lock:
            if self.stale:
                if time.monotonic() - self._failed_at < RETRY_AFTER_FAILURE_S:
                    raise Unavailable("store: Redis is refusing writes; retry", field="store")
                try:
                    await self._rebuild()
                except RedisError as e:
                    raise Unavailable(f"store: Redis is unavailable ({e}); retry", field="store") from None
                log.info("index rebuilt from Redis after a failed write")
            yield

    def failed(self, e: Exception) -> Unavailable:
        """A write Redis refused: the index is stale. Returns the 503 to raise."""
        self.stale, self._failed_at = True, time.monotonic()
        if self.writable:
            self.writable = False
            self.metrics.store_writable.set(0)
        log.error("write to Redis failed (%s); the index is rebuilt from Redis before the next write", e)
        return Unavailable(f"store: Redis refused the write ({e}); retry", field="store")

    def succeeded(self) -> None:
        if not self.writable:
            self.writable = True
            self.metrics.store_writable.set(1)
            log.info("Redis accepts writes again")

    def store_changed(self) -> None:
        """Redis may have lost writes (it came back, or a failover broke the connection): rebuild from it
        before the next write, without the failure's wait."""
        self.stale, self._failed_at = True, 0.0

    def rebuilt(self) -> None:
        self.stale = False

    async def commit(self, op: Awaitable[None]) -> None:
        """Await a write made under `write()`: a RedisError marks the index stale and becomes a 503."""
        try:
            await op
        except RedisError as e:
            raise self.failed(e) from None
        self.succeeded()
