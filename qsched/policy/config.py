"""The policy's configuration (the `policy:` section, parsed by qsched.config.parse_policy): the
dataclasses the policies read, and the knobs declared once (qsched.options)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..options import Option, defaults

CLASSES_DEFAULT = {"interactive": 4.0, "batch": 1.0, "debug": 2.0}

# a class's limits (None: none); checked at session open and submit (qsched.daemon.limits)
CLASS_OPTIONS = (
    Option("tier", 0, "priority tier: higher first, strictly (up to policy.max_wait_s)", lo=-1000, hi=1000,
           kind="integer"),
    Option("max_sessions_per_user", None, "a user's open sessions of the class", lo=1, kind="integer"),
    Option("max_pending_per_user", None, "a user's pending (not yet dispatched) tasks in the class", lo=1,
           kind="integer"),
    Option("max_task_device_s", None, "each task's estimated device-seconds", lo=0.0),
    Option("max_session_device_s", None, "a session's measured plus estimated device-seconds", lo=0.0),
)
CLASS_LIMITS = tuple(o.name for o in CLASS_OPTIONS if o.name != "tier")
_C = defaults(CLASS_OPTIONS)

POLICY_OPTIONS = (
    Option("max_pending_per_session", 10_000, "more is refused (400, field tasks, with the limit)", lo=1,
           kind="integer"),
    Option("merge", True, "a session's consecutive tasks over one template share a simulator call", kind="bool"),
    # fair-share: a session back from its classical phase starts this many device-seconds (divided by
    # its weight) ahead of the pool's virtual time, so its short burst runs next instead of queueing
    # behind sessions that never stopped; bounded, so idling still banks no more than this
    Option("return_credit_s", 0.5, "fair-share: credit (device-seconds) of a session back from idle", lo=0.0,
           hi=3600.0),
    # so weighted shares hold with merging on (a single larger task still runs whole)
    Option("max_batch_s", 0.05, "the quantum: one pick merges at most this many estimated device-seconds",
           lo=0.0, hi=3600.0),
    Option("max_wait_s", 300.0, "a lower-tier session waiting this long is picked first (anti-starvation)",
           lo=1e-3),
    Option("decay_half_life_s", 7 * 86_400.0, "usage decays with this half-life (PriorityDecayHalfLife); 0: none",
           lo=0.0),
    # preemption at batch boundaries: a running batch is never interrupted
    Option("preempt", True, "take back a lower tier's batch still waiting in a device's inbox", kind="bool"),
)
_P = defaults(POLICY_OPTIONS)


@dataclass(frozen=True)
class ClassSpec:
    """A class like a Slurm QOS: a priority tier (higher first, strictly, up to policy.max_wait_s), a
    weight within the tier, limits (None: none), and who may use it (empty lists: everyone; else a
    session's account must be listed in `accounts` or its user in `users`)."""
    name: str
    tier: int = _C["tier"]
    weight: float = 1.0
    max_sessions_per_user: int | None = None
    max_pending_per_user: int | None = None
    max_task_device_s: float | None = None
    max_session_device_s: float | None = None
    accounts: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    # while every device of a session's pool is draining, paused or in maintenance, the class's
    # sessions run on this pool instead (e.g. dev work to a simulator pool)
    spill_to: str | None = None


@dataclass(frozen=True)
class QuotaSpec:
    """Device-seconds an account (kind "account") or a user ("user") may use per period. Periods are
    fixed windows aligned to the Unix epoch (a 1d quota resets at 00:00 UTC), like Slurm's
    PriorityUsageResetPeriod; `key` is how the config names it: "chem" or "user:alice"."""
    key: str
    kind: str
    name: str
    device_s: float
    period_s: float


@dataclass
class PolicyConfig:
    name: str = "fair-share"
    # weights multiply: account x user x class x session's own weight
    account_weights: dict[str, float] = field(default_factory=dict)
    user_weights: dict[str, float] = field(default_factory=dict)
    class_weights: dict[str, float] = field(default_factory=lambda: dict(CLASSES_DEFAULT))
    # POLICY_OPTIONS (their docs there)
    max_pending_per_session: int = _P["max_pending_per_session"]
    merge: bool = _P["merge"]
    return_credit_s: float = _P["return_credit_s"]
    max_batch_s: float = _P["max_batch_s"]
    # classes by name (ClassSpec); a class only in class_weights is tier 0 without limits
    classes: dict[str, ClassSpec] = field(default_factory=dict)
    max_wait_s: float | None = _P["max_wait_s"]
    decay_half_life_s: float = _P["decay_half_life_s"]
    preempt: bool = _P["preempt"]
    # parent/child account shares (an account tree like sshare's): account -> its parent account
    account_parents: dict[str, str] = field(default_factory=dict)
    # device-second quotas per account or user and period, by key ("chem", "user:alice")
    quotas: dict[str, QuotaSpec] = field(default_factory=dict)
    # the policy's own options (its OPTIONS, validated against the registry in qsched.policy)
    options: dict = field(default_factory=dict)

    def class_spec(self, name: str) -> ClassSpec:
        spec = self.classes.get(name)
        return spec if spec is not None else ClassSpec(name, weight=self.class_weights.get(name, 1.0))
