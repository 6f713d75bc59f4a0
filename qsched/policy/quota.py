"""Device-second quotas per account or user and period (policy.quotas; Slurm's GrpTRESMins with a
usage reset period): pure, time given by the caller.

Each quota counts the measured device time of the current window, a fixed interval of `period_s`
aligned to the Unix epoch, from when the quota was configured; a new window starts at zero. Per quota
key: (used, window start, period, since) and the use per hour (so a period change recomputes the new
window's use), written to Redis by the scheduler (store.save_quota_usage) and read back on start, so
usage survives a restart. A quota is exhausted when used >= device_s: new sessions it covers are
refused (429) and the open ones hold at dispatch, with the reason, until the next window (or a larger
quota on reload); their tasks are still accepted."""
from __future__ import annotations

import math
import time

from .config import QuotaSpec


HOUR = 3600.0
# how far back a quota's hourly use is kept (at least its period): what a period change recomputes from
HISTORY_S = 31 * 86_400.0
# a persisted entry: (device-seconds, window start, period_s, since: when the quota was first configured)
Entry = tuple[float, float, float, float]


def window_start(spec: QuotaSpec, now: float) -> float:
    return math.floor(now / spec.period_s) * spec.period_s


class QuotaLedger:
    def __init__(self, specs: dict[str, QuotaSpec] | None = None, now: float | None = None):
        self.specs: dict[str, QuotaSpec] = {}
        self._used: dict[str, tuple[float, float]] = {}        # key -> (device-seconds, window start)
        self._since: dict[str, float] = {}                     # key -> when the quota was configured
        self._hours: dict[str, dict[float, float]] = {}        # key -> hour start -> device-seconds
        self.dirty: set[str] = set()
        self.dirty_hours: set[tuple[str, float]] = set()
        self.removed: set[str] = set()                         # keys whose stored use is to be deleted
        self.set_specs(specs or {}, now)

    def set_specs(self, specs: dict[str, QuotaSpec], now: float | None = None) -> None:
        """A reloaded policy. A quota counts only what was used since it was configured (a new key starts
        at zero; a removed one forgets its use, so adding it back starts again); a changed period
        recomputes the use of the new window from the hourly history, to the hour."""
        now = time.time() if now is None else now
        old = self.specs
        self.specs = dict(specs)
        for key in set(old) - set(specs):
            self._forget(key)
        for key, spec in specs.items():
            if key not in old:
                self._start(key, now)
            elif old[key].period_s != spec.period_s:
                self._recompute(key, now)

    def _start(self, key: str, now: float) -> None:
        self._used[key] = (0.0, window_start(self.specs[key], now))
        self._since[key] = now
        self._hours[key] = {}
        self.removed.discard(key)
        self.dirty.add(key)

    def _forget(self, key: str) -> None:
        self._used.pop(key, None)
        self._since.pop(key, None)
        self._hours.pop(key, None)
        self.dirty.discard(key)
        self.dirty_hours = {kh for kh in self.dirty_hours if kh[0] != key}
        self.removed.add(key)

    def _recompute(self, key: str, now: float) -> None:
        ws = window_start(self.specs[key], now)
        used = sum(v for h, v in self._hours.get(key, {}).items() if h >= ws)
        self._used[key] = (used, ws)
        self.dirty.add(key)

    def covering(self, user: str, account: str) -> list[QuotaSpec]:
        out = []
        if account and account in self.specs:
            out.append(self.specs[account])
        if user and f"user:{user}" in self.specs:
            out.append(self.specs[f"user:{user}"])
        return out

    def used(self, key: str, now: float) -> float:
        spec = self.specs.get(key)
        if spec is None:
            return 0.0
        v, w = self._used.get(key, (0.0, 0.0))
        return v if w == window_start(spec, now) else 0.0

    def since(self, key: str) -> float:
        return self._since.get(key, 0.0)

    def charge(self, user: str, account: str, seconds: float, now: float) -> None:
        hour = math.floor(now / HOUR) * HOUR
        for spec in self.covering(user, account):
            self._used[spec.key] = (self.used(spec.key, now) + seconds, window_start(spec, now))
            hours = self._hours.setdefault(spec.key, {})
            if hour not in hours:           # a new hour: drop what no period change can need
                keep = hour - max(HISTORY_S, spec.period_s)
                for h in [h for h in hours if h < keep]:
                    del hours[h]
                    self.dirty_hours.add((spec.key, h))
            hours[hour] = hours.get(hour, 0.0) + seconds
            self.dirty.add(spec.key)
            self.dirty_hours.add((spec.key, hour))

    def ratio(self, key: str, now: float) -> float:
        spec = self.specs[key]
        used = self.used(key, now)
        if spec.device_s <= 0:
            return 1.0                      # a zero quota is used up from the start
        return used / spec.device_s

    def exhausted(self, user: str, account: str, now: float) -> QuotaSpec | None:
        """The first quota covering (user, account) that is used up, or None."""
        for spec in self.covering(user, account):
            if self.used(spec.key, now) >= spec.device_s:
                return spec
        return None

    def describe(self, spec: QuotaSpec, now: float) -> str:
        """What a refusal or a hold says: who, used, limit, and when the window ends."""
        who = f"account {spec.name!r}" if spec.kind == "account" else f"user {spec.name!r}"
        end = window_start(spec, now) + spec.period_s
        return (f"{who} has used {self.used(spec.key, now):.1f} of its {spec.device_s:g} device-seconds "
                f"for the period ({_duration(spec.period_s)}, until {_iso(end)})")

    # persistence --------------------------------------------------------------------------------------
    def take_dirty(self) -> tuple[dict[str, Entry], dict[str, dict[float, float | None]], set[str]]:
        """What changed since the last take: entries, hourly use (None: delete that hour), removed keys."""
        entries = {k: (*self._used[k], self.specs[k].period_s, self._since.get(k, 0.0))
                   for k in self.dirty if k in self._used and k in self.specs}
        hours: dict[str, dict[float, float | None]] = {}
        for k, h in self.dirty_hours:
            hours.setdefault(k, {})[h] = self._hours.get(k, {}).get(h)
        removed = set(self.removed)
        self.dirty.clear()
        self.dirty_hours.clear()
        self.removed.clear()
        return entries, hours, removed

    def put_back(self, entries: dict[str, Entry], hours: dict[str, dict[float, float | None]],
                 removed: set[str]) -> None:
        """A write that failed: take them again next time."""
        self.dirty.update(entries)
        self.dirty_hours.update((k, h) for k, hs in hours.items() for h in hs)
        self.removed.update(removed)

    def load(self, entries: dict[str, Entry], hours: dict[str, dict[float, float]], now: float) -> None:
        """What Redis holds, at start; those changed here and not yet written keep their value. A stored
        quota no longer configured is deleted; one stored under another period is recomputed."""
        for key, (used, ws, period, since) in entries.items():
            spec = self.specs.get(key)
            if spec is None:
                self.removed.add(key)
                continue
            if key in self.dirty and self._used.get(key, (0.0,))[0] > 0:
                continue
            self._used[key] = (used, ws)
            self._since[key] = since or now
            self._hours[key] = {**hours.get(key, {}), **self._hours.get(key, {})}
            self.dirty.discard(key)
            if period and period != spec.period_s:
                self._recompute(key, now)


def _duration(s: float) -> str:
    for unit, n in (("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)):
        if s >= n and s % n == 0:
            return f"{int(s // n)}{unit}"
    return f"{s:g}s"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
