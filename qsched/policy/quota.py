"""Device-second quotas per account or user and period (policy.quotas; Slurm's GrpTRESMins with a
usage reset period): pure, time given by the caller.

Each quota counts the measured device time of the current window, a fixed interval of `period_s`
aligned to the Unix epoch; a new window starts at zero. Entries are (used, window start) per quota
key, written to Redis by the scheduler (store.save_quota_usage) and read back on start, so usage
survives a restart. A quota is exhausted when used >= device_s: new tasks are refused (429) and the
sessions it covers hold at dispatch until the next window (or a larger quota on reload)."""
from __future__ import annotations

import math
import time

from .config import QuotaSpec


def window_start(spec: QuotaSpec, now: float) -> float:
    return math.floor(now / spec.period_s) * spec.period_s


class QuotaLedger:
    def __init__(self, specs: dict[str, QuotaSpec] | None = None):
        self.specs: dict[str, QuotaSpec] = dict(specs or {})
        self._used: dict[str, tuple[float, float]] = {}        # key -> (device-seconds, window start)
        self.dirty: set[str] = set()

    def set_specs(self, specs: dict[str, QuotaSpec]) -> None:
        """A reloaded policy: usage of quotas still configured stays (a changed period restarts it)."""
        self.specs = dict(specs)

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

    def charge(self, user: str, account: str, seconds: float, now: float) -> None:
        for spec in self.covering(user, account):
            self._used[spec.key] = (self.used(spec.key, now) + seconds, window_start(spec, now))
            self.dirty.add(spec.key)

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
    def take_dirty(self) -> dict[str, tuple[float, float]]:
        out = {k: self._used[k] for k in self.dirty if k in self._used}
        self.dirty.clear()
        return out

    def load(self, entries: dict[str, tuple[float, float]]) -> None:
        """Entries read from Redis; those changed here and not yet written keep their value."""
        for key, vw in entries.items():
            if key not in self.dirty:
                self._used[key] = vw


def _duration(s: float) -> str:
    for unit, n in (("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)):
        if s >= n and s % n == 0:
            return f"{int(s // n)}{unit}"
    return f"{s:g}s"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
