"""Decayed usage per user and per account (Slurm's PriorityDecayHalfLife): pure, time given by the caller.

Each entry is (value, t): device-seconds as of Unix time t, per user, per account and per (account, user)
association. At time now it is worth value x 2^-((now - t) / half_life). A half-life of 0 means no
decay. The scheduler charges measured device time when a batch completes and keeps the entries in Redis
(store.save_usage / load_usage)."""
from __future__ import annotations

from collections.abc import KeysView

KINDS = ("user", "account", "assoc")      # assoc: "account/user", a user's usage within an account


class UsageLedger:
    def __init__(self, half_life_s: float = 7 * 86_400.0):
        self.half_life_s = half_life_s
        self._v: dict[str, dict[str, tuple[float, float]]] = {k: {} for k in KINDS}
        self._total: dict[str, tuple[float, float]] = {k: (0.0, 0.0) for k in KINDS}
        self.dirty: set[tuple[str, str]] = set()
        self.version = 0            # bumped when a name appears (share sums are cached on it)

    def _decay(self, value: float, t: float, now: float) -> float:
        if self.half_life_s <= 0 or now <= t or value == 0.0:
            return value
        return value * 2.0 ** (-(now - t) / self.half_life_s)

    def charge(self, user: str, account: str, seconds: float, now: float) -> None:
        for kind, name in (("user", user), ("account", account),
                           ("assoc", f"{account}/{user}" if account and user else "")):
            if not name:
                continue
            d = self._v[kind]
            if name not in d:
                self.version += 1
            v, t = d.get(name, (0.0, now))
            d[name] = (self._decay(v, t, now) + seconds, max(t, now))
            tv, tt = self._total[kind]
            self._total[kind] = (self._decay(tv, tt, now) + seconds, max(tt, now))
            self.dirty.add((kind, name))

    def get(self, kind: str, name: str, now: float) -> float:
        v, t = self._v[kind].get(name, (0.0, now))
        return self._decay(v, t, now)

    def total(self, kind: str, now: float) -> float:
        v, t = self._total[kind]
        return self._decay(v, t, now)

    def names(self, kind: str) -> KeysView[str]:
        return self._v[kind].keys()

    def entries(self, kind: str) -> dict[str, tuple[float, float]]:
        return dict(self._v[kind])

    def take_dirty(self) -> dict[str, dict[str, tuple[float, float]]]:
        """The entries changed since the last call (to write to Redis)."""
        out: dict[str, dict[str, tuple[float, float]]] = {k: {} for k in KINDS}
        for kind, name in self.dirty:
            out[kind][name] = self._v[kind][name]
        self.dirty.clear()
        return out

    def load(self, entries: dict[str, dict[str, tuple[float, float]]], now: float) -> None:
        """Entries read from Redis; those changed here and not yet written keep their value."""
        for kind in KINDS:
            d = self._v[kind]
            for name, vt in entries.get(kind, {}).items():
                if (kind, name) not in self.dirty:
                    if name not in d:
                        self.version += 1
                    d[name] = vt
            self._total[kind] = (sum(self._decay(v, t, now) for v, t in d.values()), now)
