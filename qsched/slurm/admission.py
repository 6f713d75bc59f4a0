"""Admission driven by readiness, in Slurm's terms (issue 20 item 3), pure: from a pool's predicted
backlog (daemon/forecast.py), how many of its licences to hold back with a licence-only reservation
`qsched_admit_POOL`, so the hybrid jobs Slurm starts bring just enough quantum work to keep the pool
busy: while the queued work would keep every device busy for longer than `target_s`, fewer new jobs
may start; as it drains, licences come back. A job Slurm started holds its licence and never waits on
admission again (the reservation only limits what may start next).

Hysteresis: the hold grows only once the backlog is above target_s x (1 + hysteresis) and shrinks only
once it is below target_s x (1 - hysteresis), so a backlog near the target does not flap the
reservation. Bounds: at least `min_free` licences stay free (a job may always start), at most
`max_held` are held. A maintenance mirror's reservations win: admission holds back only licences they
leave, and nothing while the pool is down. The reservation goes through maintenance.plan with the
others (same naming, same apply path)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .maintenance import PREFIX, Reservation
from .site import license_name


@dataclass(frozen=True)
class Admission:
    """The `slurm.admission` knobs (off unless the admin turns it on)."""
    enabled: bool = False
    target_s: float = 60.0        # device-seconds of queued work per device the pool should hold
    hysteresis: float = 0.25
    min_free: int = 1
    max_held: int | None = None


@dataclass(frozen=True)
class Decision:
    pool: str
    held: int
    reason: str


def _hold_for(total: int, drain_s: float, target_s: float, cfg: Admission) -> int:
    """Licences to hold so that the share of the pool open to new jobs falls as the backlog passes the
    target: free = total x target / drain (all free while the backlog is within the target)."""
    if drain_s <= target_s:
        return 0
    free = max(cfg.min_free, math.ceil(total * target_s / drain_s))
    held = max(0, total - free)
    return held if cfg.max_held is None else min(held, cfg.max_held)


def decide(pool: str, *, total: int, backlog_s: float, live_devices: int, held_now: int, reserved: int,
           cfg: Admission) -> Decision:
    """How many of the pool's `total` licences to hold back now. backlog_s: the pool's predicted
    device-seconds of queued and running work; held_now: what the admission reservation holds;
    reserved: licences the maintenance mirror holds for the pool now (they win)."""
    if not cfg.enabled:
        return Decision(pool, 0, "admission off")
    if live_devices <= 0 or reserved >= total:
        return Decision(pool, 0, f"pool {pool} is down or in maintenance: its own reservation holds it")
    drain = backlog_s / live_devices
    grow = _hold_for(total, drain, cfg.target_s * (1 + cfg.hysteresis), cfg)
    shrink = _hold_for(total, drain, cfg.target_s * (1 - cfg.hysteresis), cfg)
    held = grow if grow > held_now else shrink if shrink < held_now else held_now
    held = min(held, max(0, total - reserved - cfg.min_free))
    return Decision(pool, held, f"admission: pool {pool} has {drain:.0f} s of quantum work queued per device "
                                f"(target {cfg.target_s:.0f} s): {held} of {total} licences held back")


def reservations(decisions: Mapping[str, Decision]) -> dict[str, Reservation]:
    """The `qsched_admit_POOL` reservations to add to the maintenance mirror's desired set."""
    out = {}
    for pool, d in decisions.items():
        if d.held > 0:
            name = f"{PREFIX}admit_{pool}"
            out[name] = Reservation(name, {license_name(pool): d.held})
    return out
