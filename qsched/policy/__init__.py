"""Pure scheduling policies: no I/O, no clock; the scheduler feeds them events and asks for picks.

Each policy orders the *backlogged* sessions of each pool, by class tier first (strict, with the
anti-starvation bound policy.max_wait_s), then by its own key. The scheduler calls
  enqueue(sid, pool, info, head_seq, now=, size=)  when a session has pending work and is not queued
                                     (info: the session's frozen SessionInfo; size: its pending tasks),
  pick(pool, now=) -> sid | None     when a device of the pool can take a batch (pops the session),
  charge(sid, cost)                  with the batch's estimated device-seconds, right after pick,
  correct(sid, estimated, measured)  when the batch finished,
  remove(sid)                        when a session closes or has nothing left.

One registry: the built-ins are registered here, plugins through the entry point group
`qsched.policies` (name = "module:Class", a Policy subclass with its OPTIONS). config.parse_policy
validates a policy's name and options against this registry.
"""
from __future__ import annotations

import logging
from importlib.metadata import entry_points

from .config import PolicyConfig
from ..errors import ConfigError
from .base import Option, Policy, SessionInfo
from .fair_share import FairShare
from .fifo import Fifo
from .round_robin import RoundRobin
from .usage import UsageLedger

log = logging.getLogger("qsched.policy")

ENTRY_POINT_GROUP = "qsched.policies"
POLICIES: dict[str, type[Policy]] = {"fifo": Fifo, "round-robin": RoundRobin, "fair-share": FairShare}
_plugins_loaded = False


def register(name: str, cls: type[Policy]) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise TypeError(f"policy {name!r}: {cls!r} is not a qsched.policy.Policy subclass")
    POLICIES[name] = cls


def registry() -> dict[str, type[Policy]]:
    """Built-ins plus the plugins installed under the `qsched.policies` entry point group (loaded once;
    a plugin that fails to load is logged and left out, the built-ins stay)."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in POLICIES:
                continue
            try:
                register(ep.name, ep.load())
            except Exception as e:         # a broken plugin must not take the daemon down
                log.error("policy plugin %s (%s) could not be loaded: %s", ep.name, ep.value, e)
    return POLICIES


def policy_class(name: str, path: str = "policy.name") -> type[Policy]:
    reg = registry()
    if name not in reg:
        raise ConfigError(f"{path}: unknown policy {name!r} (one of {', '.join(reg)})", field=path)
    return reg[name]


def make_policy(cfg: PolicyConfig) -> Policy:
    return policy_class(cfg.name)(cfg)


__all__ = ["Policy", "SessionInfo", "Option", "UsageLedger", "Fifo", "RoundRobin", "FairShare", "make_policy",
           "POLICIES", "register", "registry", "policy_class", "ENTRY_POINT_GROUP"]
