"""Pure scheduling policies: no I/O, no clock; the scheduler feeds them events and asks for picks.

Each policy orders the *backlogged* sessions of each pool. The scheduler calls
  enqueue(sid, pool, weight, head_seq)  when a session has pending work and is not queued,
  pick(pool) -> sid | None             when a device of the pool can take a batch (pops the session),
  charge(sid, cost)                    with the batch's estimated device-seconds, right after pick,
  correct(sid, estimated, measured)    when the batch finished,
  remove(sid)                          when a session closes or has nothing left.
"""
from __future__ import annotations

from ..config import PolicyConfig
from ..errors import ConfigError
from .base import Policy
from .fair_share import FairShare
from .fifo import Fifo
from .round_robin import RoundRobin

POLICIES: dict[str, type[Policy]] = {"fifo": Fifo, "round-robin": RoundRobin, "fair-share": FairShare}


def make_policy(cfg: PolicyConfig) -> Policy:
    try:
        return POLICIES[cfg.name](cfg)
    except KeyError:
        raise ConfigError(f"policy.name: unknown policy {cfg.name!r}", field="policy.name") from None


__all__ = ["Policy", "Fifo", "RoundRobin", "FairShare", "make_policy", "POLICIES"]
