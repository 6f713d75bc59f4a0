"""The device watch: worker heartbeats (a device is up while its worker beats), the admin's device
states, maintenance windows, remote vendors' status, the requeue of batches a lost worker held, and
the periodic saves (cost model, usage, quotas)."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import secrets
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from ..errors import BadRequest, NotFound
from ..models import CONFIG_WINDOW, TaskState, Window
from . import dispatch
from .dispatcher import recall_waiting, requeued
from .index import WINDOW_REASON, DeviceEntry

if TYPE_CHECKING:
    from .scheduler import Scheduler

log = logging.getLogger("qsched.scheduler")

ADMIN_STATES = ("online", "draining", "paused", "maintenance")
TRIM_EVERY_S = 5.0                          # how often the events stream is trimmed (daemon.events_retention_s)
WINDOW_WHO = "maintenance window"
FORECAST_DUTY = 20.0
FORECAST_GAUGES_S = 10.0        # how often the forecast gauges (backlog, predicted wait) are refreshed
VENDOR = "vendor: "        # the reason of a state the vendor's status set (and may lift)


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class DeviceWatch:
    def __init__(self, sch: Scheduler, windows: list[Window]):
        self.sch = sch
        # planned maintenance (config, and `qsched device maintenance --start/--duration`, kept in Redis):
        # while a window is on, its devices are in state maintenance; the Slurm mirror reads these too
        self.windows = windows
        self.store_ok = True
        # heartbeat keys expire in the store's time: after the store (or this loop) stalled, every key
        # may have lapsed though every worker is fine. A missing beat is believed only from here on.
        self.believe_after = 0.0
        self.forecast_due = 0.0
        self._last_read: float | None = None
        self._trimmed = 0.0                     # when the events stream was last trimmed
        self.interval_s = 0.5

    def device(self, name: str) -> DeviceEntry:
        dev = self.sch.index.devices.get(name)
        if dev is None:
            raise NotFound(f"device: no device {name!r} (devices: {', '.join(self.sch.index.devices)})",
                           field="device")
        return dev

    async def run(self, interval_s: float = 0.5) -> None:
        """Also watches the store: while Redis does not answer, health says so and the gauge reads 0."""
        self.interval_s = interval_s
        down_since = None
        while True:
            try:
                await self.watch()
            except RedisError as e:
                if down_since is None:
                    down_since = time.monotonic()
                    log.error("store unavailable (%s): writes get 503 until it is back", e)
                self.store_ok = False
            else:
                if down_since is not None:
                    log.info("store is back after %.1f s", time.monotonic() - down_since)
                    down_since = None
                    # it may be a promoted replica without the primary's last writes: rebuild the index
                    # from what it holds before the next write
                    self.sch.writer.store_changed()
                    self.sch.kick()
                    self.believe_after = time.monotonic() + self.sch.config.heartbeat_timeout_s
                self.store_ok = True
            self.sch.metrics.store_up.set(1 if self.store_ok else 0)
            await asyncio.sleep(interval_s)

    async def watch(self) -> None:
        """A device is up while its worker heartbeats. The heartbeat comes from a small process beside
        the worker that beats while the worker runs (a long aer run holds the worker's GIL) and stops
        when it is stopped or gone: a missing heartbeat with batches outstanding means those batches
        are lost with it. Also saves the learned cost model, usage and quota usage."""
        sch, m = self.sch, self.sch.metrics
        names = list(sch.index.devices)
        beats = await sch.store.heartbeats(names)
        now, ttl = time.monotonic(), sch.config.heartbeat_timeout_s
        if self._last_read is not None and now - self._last_read > self.interval_s + ttl / 2:
            log.warning("the store (or this loop) stalled %.1f s: heartbeats missed meanwhile are not believed "
                        "for %.1f s", now - self._last_read, ttl)
            self.believe_after = now + ttl
        self._last_read = now
        for name, hb in zip(names, beats):
            dev = sch.index.devices[name]
            up = hb is not None
            if not up and dev.alive and now < self.believe_after:
                continue              # its worker gets one heartbeat period to beat again
            if hb is not None and not dev.alive:
                log.info("device %s is up (worker pid %s)", name, hb.get("pid"))
                sch.kick()
            elif dev.alive and not up:
                log.error("device %s is down: no heartbeat from its worker for %.1f s", name,
                          sch.config.heartbeat_timeout_s)
                m.workers_lost.labels(name).inc()
                if sch.on_worker_lost:            # a local worker that is stopped: restart it
                    sch.on_worker_lost(name, dev.described.get("pid"))
            dev.alive = up
            if hb is not None:
                dev.described = hb
            m.device_up.labels(name).set(1 if up else 0)
            m.set_device_state(name, dev.public_state())
            if hb and "rss_bytes" in hb:
                m.worker_memory.labels(name).set(hb["rss_bytes"])
            if not up and dev.outstanding:
                await self.requeue_lost(dev)
        await self.apply_windows(time.time())
        await self.follow_vendors(names)
        if sch.cost.dirty:
            sch.cost.dirty = False
            await sch.store.save_cost_model(dict(sch.cost.per_binding))
        await self.save_usage()
        await self.trim_events()
        if sch.quota.specs:
            now = time.time()
            sch.release_quota_holds(now)
            sch.views.quota_gauges(now)
        if time.monotonic() >= self.forecast_due:      # planning forward costs more than a watch
            took = time.monotonic()
            sch.views.forecast_gauges()
            took = time.monotonic() - took
            # a long backlog makes it slow: it never takes more than 1/FORECAST_DUTY of the loop
            self.forecast_due = time.monotonic() + max(FORECAST_GAUGES_S, FORECAST_DUTY * took)

    async def trim_events(self) -> None:
        """Events read and older than daemon.events_retention_s go: each carries its batch's results
        inline, so a count cap alone kept up to 10,000 results' worth in Redis (hundreds of MB)."""
        sch, now = self.sch, time.time()
        if now - self._trimmed < TRIM_EVERY_S:
            return
        self._trimmed = now
        read_ms = int(sch.events_from.split("-")[0])
        before = min(read_ms, int((now - sch.config.events_retention_s) * 1000))
        if before > 0:
            await sch.store.trim_events(f"{before}-0")

    async def save_usage(self) -> None:
        """Write the usage and quota entries changed since the last write (kept dirty if Redis refuses)."""
        quota, usage, store = self.sch.quota, self.sch.usage, self.sch.store
        if quota.dirty or quota.dirty_hours or quota.removed:
            changed = quota.take_dirty()
            try:
                await store.save_quota_usage(*changed)
            except RedisError:
                quota.put_back(*changed)
                raise
        if not usage.dirty:
            return
        dirty = usage.take_dirty()
        try:
            await store.save_usage(dirty)
        except RedisError:
            usage.dirty.update((kind, n) for kind, names in dirty.items() for n in names)
            raise

    async def follow_vendors(self, names: list[str]) -> None:
        """A remote device's vendor status moves its state by itself: not online pauses an online
        device; online again lifts a pause the vendor set (never one an admin set)."""
        for name, v in (await self.sch.store.vendor_states(names)).items():
            dev = self.sch.index.devices[name]
            status, why = v.get("status", "online"), v.get("reason", "")
            if not dev.alive:
                continue
            if status != "online" and dev.state == "online":
                await self.set_state(name, "paused", f"{VENDOR}{status}" + (f" ({why})" if why else ""),
                                     who="vendor")
            elif status == "online" and dev.state == "paused" and dev.reason.startswith(VENDOR):
                await self.set_state(name, "online", f"{VENDOR}online", who="vendor")

    async def set_state(self, name: str, state: str, reason: str = "", *, who: str = "qsched") -> DeviceEntry:
        """The admin's `qsched device drain|pause|resume|maintenance`; kept in Redis across restarts."""
        sch = self.sch
        dev = self.device(name)
        if state not in ADMIN_STATES:
            raise BadRequest(f"state: one of {', '.join(ADMIN_STATES)}, got {state!r}", field="state")
        if state == "online" and who != WINDOW_WHO:
            await self.end_windows(dev, time.time())
        async with sch.writer.write():
            await sch.store.set_device_state(name, state, reason, time.time())
            was_down = sch.index.pool_down(dev.spec.pool)
            dev.state, dev.reason, dev.since = state, reason, time.time()
            if state in ("paused", "maintenance"):
                for b, est in list(dev.outstanding.values()):
                    if await sch.store.recall(b, name, "inbox"):
                        requeued(sch, dev, b, est, "recall")
            if was_down != sch.index.pool_down(dev.spec.pool):
                dispatch.respill(sch.index, sch.policy, dev.spec.pool, time.time())
        log.warning("device %s is %s (set by %s)%s", name, state, who, f": {reason}" if reason else "")
        sch.kick()
        return dev

    # ------------------------------------------------------------------ maintenance windows
    async def add_window(self, name: str, start: float, end: float | None, reason: str, *, who: str) -> Window:
        """`qsched device maintenance NAME --start T --duration D`: a planned window, kept in Redis."""
        dev = self.device(name)
        if end is not None and end <= max(start, time.time()):
            raise BadRequest("end: the window must end after its start and in the future", field="end")
        w = Window(pool=dev.spec.pool, start=start, end=end, devices=(name,), reason=reason,
                   id="w" + secrets.token_hex(4))
        await self.sch.store.save_window(w)
        self.windows.append(w)
        log.warning("device %s: maintenance window %s from %s to %s added by %s%s", name, w.id, _iso(start),
                    _iso(end) if end else "resume", who, f": {reason}" if reason else "")
        await self.apply_windows(time.time())
        return w

    async def end_windows(self, dev: DeviceEntry, now: float) -> None:
        """An admin's resume ends the windows that are on over the device (kept: the stored end overrides
        a config window's), so the next watch does not take it back into maintenance."""
        for i, w in enumerate(self.windows):
            if w.covers(dev.spec.name, dev.spec.pool) and w.on(now):
                self.windows[i] = w = dataclasses.replace(w, end=now)
                await self.sch.store.save_window(w)
                log.warning("device %s resumed: maintenance window %s ended early", dev.spec.name, w.id)

    async def reload_windows(self, old: list[Window], new: list[Window]) -> None:
        """SIGHUP with a changed `maintenance:` section: the config's windows become `new`. One the admin
        ended early (its stored end) stays ended while its config entry is unchanged; the admin's own
        windows (`qsched device maintenance`) stay as they are."""
        was = {w.id: w for w in old}
        stored = {w.id: w for w in await self.sch.store.windows() if w.id.startswith(CONFIG_WINDOW)}
        keep = {w.id for w in new if w.id in stored and was.get(w.id) == w}
        self.windows[:] = ([w for w in self.windows if not w.id.startswith(CONFIG_WINDOW)]
                           + [stored[w.id] if w.id in keep else w for w in new])
        await self.sch.store.forget_windows([i for i in stored if i not in keep])
        log.warning("SIGHUP: maintenance windows from the config reloaded (%d)", len(new))
        await self.apply_windows(time.time())

    def windows_of(self, dev: DeviceEntry) -> list[Window]:
        return [w for w in self.windows if w.covers(dev.spec.name, dev.spec.pool)]

    async def apply_windows(self, now: float) -> None:
        """A window that starts takes its online devices into maintenance; one that ends brings back those
        it took (a state reason starting with WINDOW_REASON marks them). Ended windows are forgotten."""
        ended = [w for w in self.windows if w.end is not None and w.end <= now]
        if ended:
            self.windows[:] = [w for w in self.windows if w not in ended]
            await self.sch.store.forget_windows([w.id for w in ended if not w.id.startswith(CONFIG_WINDOW)])
        for dev in self.sch.index.devices.values():
            on = [w for w in self.windows_of(dev) if w.on(now)]
            if on and dev.state == "online":
                w = on[0]
                why = f"{WINDOW_REASON}{w.id}" + (f" until {_iso(w.end)}" if w.end else "") \
                    + (f": {w.reason}" if w.reason else "")
                await self.set_state(dev.spec.name, "maintenance", why, who=WINDOW_WHO)
            elif not on and dev.state == "maintenance" and dev.reason.startswith(WINDOW_REASON):
                await self.set_state(dev.spec.name, "online", "maintenance window over", who=WINDOW_WHO)

    # ------------------------------------------------------------------ lost and removed devices
    async def requeue_lost(self, dev: DeviceEntry) -> None:
        """The device's worker stopped beating: take back what it held (from its processing list, so a
        late result from it is refused, and from its inbox) and requeue it to the pool."""
        sch = self.sch
        async with sch.writer.write():
            # newest first: each recall puts its tasks at the head of their queue, so the oldest ends first
            for b, est in reversed(list(dev.outstanding.values())):
                if await sch.store.recall(b, dev.spec.name, "processing", attempt=True):
                    requeued(sch, dev, b, est, "worker_lost")
                    log.error("device %s: its worker stopped while running batch %s; requeued to pool %s",
                              dev.spec.name, b.id, dev.spec.pool)
                elif await sch.store.recall(b, dev.spec.name, "inbox"):
                    requeued(sch, dev, b, est, "recall")
            limit = sch.config.max_attempts
            failed = [t for t in sch.index.tasks.values() if t.state == TaskState.PENDING and t.attempts >= limit]
            if failed:
                await sch.store.fail_tasks([t.id for t in failed], (
                    f"the worker of device {dev.spec.name} stopped while running this task ({limit} attempts)"))
                for t in failed:
                    entry = sch.index.sessions.get(t.session)
                    if entry is not None and t in entry.pending:
                        entry.pending.remove(t)
                    sch.index.tasks.pop(t.id, None)
                    sch.waiters.resolve(t.id)
        sch.kick()

    async def strand_removed_devices(self) -> None:
        """A device removed from the config may still hold batches: requeue them to their pool, or fail
        their tasks naming the device when the pool is gone too."""
        store = self.sch.store
        for name in sorted(await store.known_devices(list(self.sch.index.devices))):
            processing, inbox = await store.device_batches(name)
            for source, batches in (("processing", processing), ("inbox", inbox)):
                for b in batches:
                    session = await store.get_session(b.session)
                    if session is not None and session.pool in self.sch.index.pools:
                        await store.recall(b, name, source)
                        log.warning("device %s is no longer configured: batch %s requeued to pool %s",
                                    name, b.id, session.pool)
                    elif await store.recall(b, name, source):
                        await store.fail_tasks(b.tasks, f"device {name} was removed from the config "
                                                        "before this task ran, and its pool has no devices left")
                        log.warning("device %s is no longer configured: batch %s failed", name, b.id)
            await store.forget_device(name)

    async def recall_all(self) -> int:
        """Drain: take back every batch still waiting in an inbox (what no worker has started stays
        queued for the next daemon instead of holding the drain). Returns how many."""
        async with self.sch.writer.write():
            return await recall_waiting(self.sch)

    async def unsupported(self, pool: str) -> dict[str, str]:
        """Instructions some device of the pool says it cannot run -> that device (devices of a pool are
        interchangeable, so one that cannot run it is enough to refuse it). A device not yet described
        (its worker beat before the device watch looked) is asked now."""
        devices, pools = self.sch.index.devices, self.sch.index.pools
        unknown = [d.name for d in pools.get(pool, ()) if not devices[d.name].described]
        if unknown:
            for name, hb in zip(unknown, await self.sch.store.heartbeats(unknown)):
                if hb is not None:
                    devices[name].described = hb
        out: dict[str, str] = {}
        for d in pools.get(pool, ()):
            for instr in devices[d.name].described.get("unsupported_instructions", ()):
                out.setdefault(instr, d.name)
        return out
