"""Device states and maintenance windows mirrored to Slurm as licence reservations, so Slurm does not start
jobs that would wait on an absent QPU (DESIGN: Devices).

Each pool has its own licence `qpu_POOL` (qsched.slurm.site). A reservation of some of those licences for
root, that no job asks for, takes them away from every job: a job that needs them pends with reason
Licenses, also when its time limit would only overlap a future window, and starts once it is over.
  * a device taken out by the admin (draining, paused, maintenance) -> `qsched_down_POOL`, its
    slots_per_device licences from now, open-ended, dropped when the device is back online;
  * a maintenance window (start, end, over a pool or some of its devices) -> `qsched_maint_POOL_START`,
    the licences of those devices for the window (windows of a pool over the same interval are one
    reservation of all their devices; another end at the same start gets `_END` appended); Slurm ends it
    at its EndTime, the mirror drops it when the window is gone from the daemon.
Only reservations named `qsched_*` are touched. The pure part (desired_reservations, plan) is tested
without Slurm; the loop (qsched.slurm.hooks) applies the plan through the adapter.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..models import Window
from .site import Site, license_name

PREFIX = "qsched_"
TAKEN_STATES = frozenset({"draining", "paused", "maintenance"})


@dataclass(frozen=True)
class DeviceView:
    name: str
    pool: str
    state: str          # the admin's state: online, draining, paused, maintenance


@dataclass(frozen=True)
class Reservation:
    name: str
    licenses: Mapping[str, int]
    start: float | None = None      # None: now
    end: float | None = None        # None: open-ended (Slurm: Duration=UNLIMITED)


@dataclass(frozen=True)
class Action:
    verb: str                       # create | update | delete
    reservation: Reservation
    why: str = ""
    old: Mapping[str, int] = field(default_factory=dict)


def desired_reservations(site: Site, devices: Iterable[DeviceView], windows: Iterable[Window],
                         now: float) -> dict[str, Reservation]:
    """What Slurm should hold now. A pool never has more reserved at once than its licences."""
    devices = list(devices)
    out: dict[str, Reservation] = {}
    down: dict[str, int] = {}
    for pool, total in site.pools.items():
        n = sum(1 for d in devices if d.pool == pool and d.state in TAKEN_STATES)
        if n:
            down[pool] = min(total, n * site.slots_per_device)
            out[f"{PREFIX}down_{pool}"] = Reservation(f"{PREFIX}down_{pool}", {license_name(pool): down[pool]})
    merged = _merged(windows)
    starts = [(p, int(s)) for p, s, _ in merged]
    for (pool, start, end), devs in merged.items():
        pool_total = site.pools.get(pool)
        if pool_total is None or (end is not None and end <= now):
            continue
        n = pool_total if devs is None else min(pool_total, len(devs) * site.slots_per_device)
        if start <= now:
            # already on: the devices it took out are in `down` (a window sets their state)
            n = min(n, pool_total - down.get(pool, 0))
        if n <= 0:
            continue
        name = f"{PREFIX}maint_{pool}_{int(start)}"
        if starts.count((pool, int(start))) > 1:
            name += f"_{int(end) if end is not None else 'open'}"      # same start, another end: apart
        out[name] = Reservation(name, {license_name(pool): n}, start=start if start > now else None, end=end)
    return out


def _merged(windows: Iterable[Window]) -> dict[tuple[str, float, float | None], frozenset[str] | None]:
    """Windows of a pool over the same interval as one: the union of their devices (None: the whole pool).
    Each device's own window (`qsched device maintenance` per device) must not overwrite another's:
    two of them at the same start reserve both devices' licences."""
    out: dict[tuple[str, float, float | None], frozenset[str] | None] = {}
    for w in sorted(windows, key=lambda w: (w.pool, w.start, w.end is None, w.end or 0.0)):
        key = (w.pool, w.start, w.end)
        have = out.get(key, frozenset())
        out[key] = None if have is None or not w.devices else have | set(w.devices)
    return out


def plan(desired: Mapping[str, Reservation], existing: Mapping[str, Mapping[str, int]]) -> list[Action]:
    """existing: Slurm's reservations by name -> their licences. Creates, licence updates, deletes (only of
    qsched's own names)."""
    actions = []
    for name, r in desired.items():
        if name not in existing:
            actions.append(Action("create", r))
        elif dict(existing[name]) != dict(r.licenses):
            actions.append(Action("update", r, old=dict(existing[name])))
    for name, lic in existing.items():
        if name.startswith(PREFIX) and name not in desired:
            actions.append(Action("delete", Reservation(name, dict(lic))))
    return actions


def _rel(t: float, now: float) -> str:
    """An absolute time as Slurm's `now+N` (seconds): no time zone between the daemon and slurmctld."""
    return "now" if t <= now else f"now+{math.ceil(t - now)}"


def scontrol_args(action: Action, now: float, *, users: str = "root") -> list[str]:
    """The `scontrol` arguments for one action."""
    r = action.reservation
    if action.verb == "delete":
        return ["delete", f"ReservationName={r.name}"]
    lic = ",".join(f"{k}:{v}" for k, v in sorted(r.licenses.items()))
    if action.verb == "update":
        return ["update", f"ReservationName={r.name}", f"Licenses={lic}"]
    start = _rel(r.start, now) if r.start is not None else "now"
    end = ["Duration=UNLIMITED"] if r.end is None else [f"EndTime={_rel(r.end, now)}"]
    # LICENSE_ONLY: no nodes; IGNORE_JOBS: running jobs keep the licences they hold (their sessions wait
    # for the device, they are not killed)
    return ["create", f"ReservationName={r.name}", f"Licenses={lic}", f"StartTime={start}", *end,
            f"Users={users}", "Flags=LICENSE_ONLY,IGNORE_JOBS"]


def parse_reservations(text: str) -> dict[str, dict[str, int]]:
    """`scontrol show reservation -o` -> name -> licences."""
    from .jobs import parse_counts, parse_scontrol_record
    out = {}
    for line in (text or "").splitlines():
        if not line.startswith("ReservationName="):
            continue
        rec = parse_scontrol_record(line)
        out[rec["ReservationName"]] = parse_counts(rec.get("Licenses"))
    return out
