"""The leader lease: of several daemons on one store, the one holding `keys.LEADER` serves; the others
wait (standby: no listener, no workers, no index) until it is free. The lease expires unless renewed,
so a daemon killed or stopped (SIGSTOP) loses it within `lease_s`; its value carries a fencing token
(an epoch that grows with each new leader) that the commit and recall scripts check, and every other
state write of the daemon too (Store._write: WATCH on the lease), so an ex-leader that wakes up after
its lease expired writes nothing and stops. Opening a session is the exception: it creates new keys
only, and its client is answered by whichever daemon it reaches next."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

from redis.exceptions import RedisError

log = logging.getLogger("qsched.leader")


class LeaderLease:
    def __init__(self, store, lease_s: float, *, holder: str | None = None):
        self.store = store
        self.lease_s = lease_s
        self.ttl_ms = int(lease_s * 1000)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.value: str | None = None
        self.acquired_at = 0.0

    async def acquire(self, stop: asyncio.Event) -> str | None:
        """Wait until this daemon holds the lease (retrying through store outages); None if `stop` is
        set first (SIGTERM to a standby)."""
        waiting_logged = False
        while not stop.is_set():
            try:
                value = await self.store.acquire_lease(self.holder, self.ttl_ms)
                if value:
                    self.value, self.acquired_at = value, time.time()
                    self.store.fence = value
                    log.info("leader lease acquired (%s; lease %.1f s)", value, self.lease_s)
                    return value
                if not waiting_logged:
                    log.info("standby: the leader lease is held by %s; waiting", await self.store.lease_holder())
                    waiting_logged = True
            except RedisError as e:
                log.warning("standby: store unavailable (%s); retrying", e)
            try:
                await asyncio.wait_for(stop.wait(), self.lease_s / 5)
            except asyncio.TimeoutError:
                pass
        return None

    async def hold(self, lost: Callable[[str], None]) -> None:
        """Renew every lease_s/3; call `lost` once the lease is (or may be) another daemon's: renewal
        refused, or no renewal got through for a whole lease period (the store was away)."""
        assert self.value is not None
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                ok = await self.store.renew_lease(self.value, self.ttl_ms)
            except RedisError as e:
                if loop.time() - renewed >= self.lease_s:
                    lost(f"could not renew it for {self.lease_s:.1f} s ({e})")
                    return
                continue
            if not ok:
                # expired while we were stopped or cut off (another daemon may lead now): our value is
                # gone, so a late renewal never revives a lease someone else could have held
                lost("it expired or another daemon holds it")
                return
            renewed = loop.time()

    async def release(self) -> None:
        if self.value is not None:
            try:
                await self.store.release_lease(self.value)
            except RedisError:
                pass                       # it expires on its own
