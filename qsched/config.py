"""YAML config -> validated dataclasses. Every error names the dotted field and what was expected."""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import redisurl
from .errors import ConfigError
from .models import DeviceLimits, DeviceSpec, Window

DEVICE_TYPES_BUILTIN = ("aer", "lightning", "emulated-qpu", "null", "qrmi")
CLASSES_DEFAULT = {"interactive": 4.0, "batch": 1.0, "debug": 2.0}
CLASS_LIMITS = ("max_sessions_per_user", "max_pending_per_user", "max_task_device_s", "max_session_device_s")


@dataclass(frozen=True)
class ClassSpec:
    """A class like a Slurm QOS: a priority tier (higher first, strictly, up to policy.max_wait_s), a
    weight within the tier, limits (None: none), and who may use it (empty lists: everyone; else a
    session's account must be listed in `accounts` or its user in `users`)."""
    name: str
    tier: int = 0
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
    max_pending_per_session: int = 10_000
    merge: bool = True
    # fair-share: a session back from its classical phase starts this many device-seconds (divided by
    # its weight) ahead of the pool's virtual time, so its short burst runs next instead of queueing
    # behind sessions that never stopped; bounded, so idling still banks no more than this
    return_credit_s: float = 0.5
    # the policy's quantum: one pick takes at most this many estimated device-seconds of a session's
    # merged tasks (a single larger task still runs whole), so weighted shares hold with merging on
    max_batch_s: float = 0.05
    # classes by name (ClassSpec); a class only in class_weights is tier 0 without limits
    classes: dict[str, ClassSpec] = field(default_factory=dict)
    # anti-starvation: a session of a lower tier waiting this long is picked before higher tiers
    max_wait_s: float | None = 300.0
    # usage per user and account decays with this half-life (PriorityDecayHalfLife); 0: no decay
    decay_half_life_s: float = 7 * 86_400.0
    # a batch of a lower tier still waiting in a device's inbox is taken back when a higher tier has
    # work (preemption at batch boundaries; a running batch is never interrupted)
    preempt: bool = True
    # parent/child account shares (an account tree like sshare's): account -> its parent account
    account_parents: dict[str, str] = field(default_factory=dict)
    # device-second quotas per account or user and period, by key ("chem", "user:alice")
    quotas: dict[str, QuotaSpec] = field(default_factory=dict)
    # the policy's own options (its OPTIONS, validated against the registry in qsched.policy)
    options: dict = field(default_factory=dict)

    def class_spec(self, name: str) -> ClassSpec:
        spec = self.classes.get(name)
        return spec if spec is not None else ClassSpec(name, weight=self.class_weights.get(name, 1.0))


@dataclass
class Config:
    state_dir: Path
    redis_url: str | None = None          # may hold the password (from redis.password_file): see redact()
    redis_max_connections: int = 64
    # the embedded Redis's socket is usable by this group too (workers run by systemd as an unprivileged
    # user in it); None: the daemon's user only
    redis_socket_group: str | None = None
    # WAIT before acknowledging a submission: that many replicas hold it, or it is answered 503 (retried
    # under its idempotency key); 0: acknowledge once the primary has it (async replication)
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 100
    tcp: str | None = "127.0.0.1:8765"
    # TLS on the TCP listener (daemon.tls): MUNGE credentials and session tokens cross it
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None      # verify client certificates against this CA
    tls_require_client_cert: bool = False
    # a standby daemon (daemon.leader_lease_s > 0): the one holding the lease in Redis serves, the
    # others wait; 0: one daemon, no lease
    leader_lease_s: float = 0.0
    socket: Path | None = None
    admin_socket: Path | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    drain_timeout_s: float = 30.0
    max_attempts: int = 3
    heartbeat_timeout_s: float = 5.0
    # untrusted circuits are parsed in a child process with these bounds (daemon/parsing.py)
    # connections: idle or half-sent requests are closed, slow readers of large answers are dropped
    idle_timeout_s: float = 30.0
    body_timeout_s: float = 60.0
    max_answer_bytes: int = 256 << 20        # large results held for sending at once (daemon/answers.py)
    # open connections per peer (uid on the socket, address on TCP) and in all (None: the fd limit)
    max_connections_per_peer: int = 512
    max_connections: int | None = None
    # a session no Slurm job owns, with nothing queued or running, is closed after this long idle (0: never)
    session_idle_timeout_s: float = 86_400.0
    parse_timeout_s: float = 10.0
    parse_memory_bytes: int = 2 << 30
    max_template_instructions: int = 1_000_000
    max_template_parameters: int = 100_000
    max_template_clbits: int = 10_000
    max_terms_per_task: int = 100_000
    max_terms_per_request: int = 200_000     # bounds the event loop's JSON parse (~0.1 s at the limit)
    start_workers: bool = True
    result_ttl_s: int = 86_400
    template_ttl_s: int = 7 * 86_400
    admin_uids: list[int] = field(default_factory=lambda: [0])
    trust_tcp: bool = False
    metrics_public: bool = True          # /metrics without a credential (Prometheus scrapes over TCP)
    slurm: dict = field(default_factory=dict)
    users: dict[str, list[str]] = field(default_factory=dict)     # user -> accounts; the first is the default
    local_workers: int = field(default_factory=lambda: os.cpu_count() or 1)   # `qsched submit --local` jobs at once
    devices: list[DeviceSpec] = field(default_factory=list)
    maintenance: list[Window] = field(default_factory=list)      # planned windows (models.Window)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    source: str = "<defaults>"

    @property
    def socket_path(self) -> Path:
        return self.socket or self.state_dir / "qsched.sock"

    @property
    def admin_socket_path(self) -> Path:
        return self.admin_socket or self.state_dir / "admin.sock"

    def pools(self) -> dict[str, list[DeviceSpec]]:
        out: dict[str, list[DeviceSpec]] = {}
        for d in self.devices:
            out.setdefault(d.pool, []).append(d)
        return out


def default_state_dir() -> Path:
    env = os.environ.get("QSCHED_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/qsched")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "qsched"


# --- small typed readers: each names the field it rejects --------------------------------------------

def _type(value, types, path, what):
    if not isinstance(value, types) or isinstance(value, bool) and bool not in (
            types if isinstance(types, tuple) else (types,)):
        raise ConfigError(f"{path}: expected {what}, got {value!r}", field=path)
    return value


def _num(d: dict, key: str, path: str, default, *, lo=None, hi=None, integer=False):
    if key not in d or d[key] is None:
        return default
    v = _type(d[key], int if integer else (int, float), f"{path}.{key}",
              "an integer" if integer else "a number")
    if lo is not None and v < lo:
        raise ConfigError(f"{path}.{key}: must be >= {lo}, got {v}", field=f"{path}.{key}", limit=lo)
    if hi is not None and v > hi:
        raise ConfigError(f"{path}.{key}: must be <= {hi}, got {v}", field=f"{path}.{key}", limit=hi)
    return v


def _map(d, path) -> dict:
    if d is None:
        return {}
    return _type(d, dict, path, "a mapping")


def _unknown(d: dict, allowed: set, path: str):
    extra = sorted(set(d) - allowed)
    if extra:
        raise ConfigError(f"{path}.{extra[0]}: unknown field (allowed: {', '.join(sorted(allowed))})",
                          field=f"{path}.{extra[0]}")


def _weights(d, path) -> dict[str, float]:
    out = {}
    for k, v in _map(d, path).items():
        out[str(k)] = _num({k: v}, k, path, 1.0, lo=1e-6)
    return out


POLICY_KEYS = {"name", "weights", "classes", "max_pending_per_session", "merge", "return_credit_s", "max_batch_s",
               "max_wait_s", "decay_half_life_s", "preempt", "quotas", "account_parents"}
CLASS_KEYS = {"tier", "weight", *CLASS_LIMITS, "accounts", "users", "spill_to"}


def _names(v, path) -> tuple[str, ...]:
    if v is None:
        return ()
    lst = [v] if isinstance(v, str) else v
    if not isinstance(lst, list) or not all(isinstance(x, str) and x for x in lst):
        raise ConfigError(f"{path}: expected a name or a list of names, got {v!r}", field=path)
    return tuple(lst)


def _parse_class(name: str, d, path: str, weight: float) -> ClassSpec:
    d = _map(d, path)
    _unknown(d, CLASS_KEYS, path)
    return ClassSpec(
        name=name,
        tier=_num(d, "tier", path, 0, lo=-1000, hi=1000, integer=True),
        weight=_num(d, "weight", path, weight, lo=1e-6),
        max_sessions_per_user=_num(d, "max_sessions_per_user", path, None, lo=1, integer=True),
        max_pending_per_user=_num(d, "max_pending_per_user", path, None, lo=1, integer=True),
        max_task_device_s=_num(d, "max_task_device_s", path, None, lo=0.0),
        max_session_device_s=_num(d, "max_session_device_s", path, None, lo=0.0),
        accounts=_names(d.get("accounts"), f"{path}.accounts"),
        users=_names(d.get("users"), f"{path}.users"),
        spill_to=None if d.get("spill_to") is None else _type(d["spill_to"], str, f"{path}.spill_to", "a pool name"),
    )


PERIOD_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 7 * 86_400.0}


def parse_period(v, path: str) -> float:
    """Seconds, or a number with a unit: 90s, 30m, 12h, 30d, 2w."""
    if isinstance(v, str) and v[-1:] in PERIOD_UNITS:
        try:
            v = float(v[:-1]) * PERIOD_UNITS[v[-1]]
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{path}: expected seconds or a duration like 12h, 30d, 2w, got {v!r}", field=path)
    if not 60 <= v <= 366 * 86_400:
        raise ConfigError(f"{path}: must be between 60 s and 366 days, got {v:g} s", field=path, limit=366 * 86_400)
    return float(v)


def parse_instant(v, path: str) -> float:
    """Epoch seconds, or an ISO-8601 date and time (YAML may have made it a datetime already; without an
    offset it is local time)."""
    import datetime as dt
    if isinstance(v, str):
        try:
            v = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{path}: expected an ISO-8601 time like 2026-12-02T08:00:00Z, got {v!r}",
                              field=path) from None
    if isinstance(v, dt.datetime):
        return v.timestamp()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{path}: expected an ISO-8601 time or epoch seconds, got {v!r}", field=path)
    return float(v)


def parse_window(d, path: str, devices: list[DeviceSpec]) -> Window:
    """{pool: P | devices: [D, ...], start: T, duration: 4h | end: T, reason: text}."""
    d = _map(d, path)
    _unknown(d, {"pool", "devices", "start", "duration", "end", "reason"}, path)
    pools = {x.pool for x in devices}
    by_name = {x.name: x for x in devices}
    names = tuple(_type(d.get("devices") or [], list, f"{path}.devices", "a list of device names"))
    for n in names:
        if n not in by_name:
            raise ConfigError(f"{path}.devices: no device {n!r}", field=f"{path}.devices")
    pool = d.get("pool") or (by_name[names[0]].pool if names else None)
    if pool not in pools or any(by_name[n].pool != pool for n in names):
        raise ConfigError(f"{path}.pool: a configured pool, or devices of one pool (pools: {', '.join(sorted(pools))})",
                          field=f"{path}.pool")
    if "start" not in d:
        raise ConfigError(f"{path}.start: required", field=f"{path}.start")
    start = parse_instant(d["start"], f"{path}.start")
    if "end" in d and "duration" in d:
        raise ConfigError(f"{path}: end or duration, not both", field=f"{path}.end")
    end = parse_instant(d["end"], f"{path}.end") if "end" in d else \
        start + parse_period(d["duration"], f"{path}.duration") if "duration" in d else None
    if end is not None and end <= start:
        raise ConfigError(f"{path}.end: must be after start", field=f"{path}.end")
    reason = _type(d.get("reason", ""), str, f"{path}.reason", "text")
    return Window(pool=str(pool), start=start, end=end, devices=names, reason=reason[:200], id=f"config-{path}")


def parse_windows(raw, devices: list[DeviceSpec]) -> list[Window]:
    return [parse_window(w, f"maintenance[{i}]", devices)
            for i, w in enumerate(_type(raw or [], list, "maintenance", "a list of windows"))]


MAX_ACCOUNT_DEPTH = 16


def _parse_parents(d, path: str) -> dict[str, str]:
    """`account_parents: {chem: science, phys: science, science: root-org}`: a tree, no cycles."""
    out = {}
    for child, parent in _map(d, path).items():
        if not isinstance(parent, str) or not parent:
            raise ConfigError(f"{path}.{child}: expected the parent account's name, got {parent!r}",
                              field=f"{path}.{child}")
        out[str(child)] = parent
    for child in out:
        seen = [child]
        while seen[-1] in out:
            seen.append(out[seen[-1]])
            if seen[-1] in seen[:-1]:
                raise ConfigError(f"{path}.{child}: the account tree has a cycle ({' -> '.join(seen)})",
                                  field=f"{path}.{child}")
            if len(seen) > MAX_ACCOUNT_DEPTH:
                raise ConfigError(f"{path}.{child}: the account tree is deeper than {MAX_ACCOUNT_DEPTH} levels",
                                  field=f"{path}.{child}", limit=MAX_ACCOUNT_DEPTH)
    return out


def _parse_quotas(d, path: str) -> dict[str, QuotaSpec]:
    """`quotas: {chem: {device_s: 36000, period: 30d}, "user:alice": {device_s: 3600, period: 1d}}`."""
    out = {}
    for key, spec in _map(d, path).items():
        key = str(key)
        qpath = f"{path}.{key}"
        kind, _, name = key.partition(":") if key.startswith("user:") else ("account", "", key)
        if not name:
            raise ConfigError(f"{qpath}: a quota is keyed by an account name or user:NAME", field=qpath)
        spec = _map(spec, qpath)
        _unknown(spec, {"device_s", "period"}, qpath)
        for req in ("device_s", "period"):
            if req not in spec:
                raise ConfigError(f"{qpath}.{req}: required", field=f"{qpath}.{req}")
        out[key] = QuotaSpec(key=key, kind=kind, name=name,
                             device_s=float(_num(spec, "device_s", qpath, None, lo=0.0)),
                             period_s=parse_period(spec["period"], f"{qpath}.period"))
    return out


def parse_policy(d, path: str = "policy") -> PolicyConfig:
    from .policy import policy_class          # the registry of policies (imports this module)
    d = _map(d, path)
    name = d.get("name", "fair-share")
    if not isinstance(name, str):
        raise ConfigError(f"{path}.name: expected a policy name, got {name!r}", field=f"{path}.name")
    cls = policy_class(name, f"{path}.name")
    _unknown(d, POLICY_KEYS | {o.name for o in cls.OPTIONS}, path)
    options = {o.name: o.parse(d[o.name], path) for o in cls.OPTIONS if o.name in d}
    w = _map(d.get("weights"), f"{path}.weights")
    _unknown(w, {"accounts", "users", "classes"}, f"{path}.weights")
    class_w = dict(CLASSES_DEFAULT)
    legacy = _weights(w.get("classes"), f"{path}.weights.classes")
    class_w.update(legacy)
    raw_classes = _map(d.get("classes"), f"{path}.classes")
    classes = {}
    for cname, spec in raw_classes.items():
        cname = str(cname)
        cpath = f"{path}.classes.{cname}"
        if cname in legacy and isinstance(spec, dict) and "weight" in spec:
            raise ConfigError(f"{cpath}.weight: the class's weight is also set in {path}.weights.classes; "
                              "set it in one place", field=f"{cpath}.weight")
        classes[cname] = _parse_class(cname, spec, cpath, class_w.get(cname, 1.0))
    for cname, weight in class_w.items():
        classes.setdefault(cname, ClassSpec(cname, weight=weight))
    merge = d.get("merge", True)
    _type(merge, bool, f"{path}.merge", "true or false")
    preempt = d.get("preempt", True)
    _type(preempt, bool, f"{path}.preempt", "true or false")
    return PolicyConfig(
        name=name,
        account_weights=_weights(w.get("accounts"), f"{path}.weights.accounts"),
        user_weights=_weights(w.get("users"), f"{path}.weights.users"),
        class_weights={n: c.weight for n, c in classes.items()},
        max_pending_per_session=_num(d, "max_pending_per_session", path, 10_000, lo=1, integer=True),
        merge=merge,
        return_credit_s=_num(d, "return_credit_s", path, 0.5, lo=0.0, hi=3600.0),
        max_batch_s=_num(d, "max_batch_s", path, 0.05, lo=0.0, hi=3600.0),
        classes=classes,
        max_wait_s=_num(d, "max_wait_s", path, 300.0, lo=1e-3),
        decay_half_life_s=_num(d, "decay_half_life_s", path, 7 * 86_400.0, lo=0.0),
        preempt=preempt,
        quotas=_parse_quotas(d.get("quotas"), f"{path}.quotas"),
        account_parents=_parse_parents(d.get("account_parents"), f"{path}.account_parents"),
        options=options,
    )


def check_spill(policy: PolicyConfig, pools: set[str]) -> None:
    """A class's spill_to must name a configured pool."""
    for c in policy.classes.values():
        if c.spill_to is not None and c.spill_to not in pools:
            f = f"policy.classes.{c.name}.spill_to"
            raise ConfigError(f"{f}: no pool {c.spill_to!r} (pools: {', '.join(sorted(pools))})", field=f)


SLURM_BACKENDS = ("auto", "cli", "pyslurm")


def parse_slurm(d, path: str = "slurm") -> dict:
    """The `slurm:` section (used by qsched.slurm.hooks): checked here so that `daemon check`, `policy
    validate`, start and reload all refuse the same mistakes."""
    d = _map(d, path)
    _unknown(d, {"enabled", "backend", "env", "munge_socket", "reconcile_interval_s", "admin_comment",
                 "require_qpu", "site", "mirror_maintenance"}, path)
    _map(d.get("site"), f"{path}.site")         # its keys: qsched.slurm.site (checked with the pools)
    if d.get("enabled", "auto") not in ("auto", True, False):
        raise ConfigError(f"{path}.enabled: expected auto, true or false, got {d['enabled']!r}",
                          field=f"{path}.enabled")
    if d.get("backend", "auto") not in SLURM_BACKENDS:
        raise ConfigError(f"{path}.backend: expected one of {', '.join(SLURM_BACKENDS)}, got {d['backend']!r}",
                          field=f"{path}.backend")
    _map(d.get("env"), f"{path}.env")
    if d.get("munge_socket") is not None:
        _type(d["munge_socket"], str, f"{path}.munge_socket", "a path")
    _num(d, "reconcile_interval_s", path, 1.0, lo=0.05, hi=60)
    for flag in ("admin_comment", "require_qpu", "mirror_maintenance"):
        if flag in d:
            _type(d[flag], bool, f"{path}.{flag}", "true or false")
    return d


def parse_users(d, path: str = "users") -> dict[str, list[str]]:
    """`users: {alice: chem, bob: [phys, chem]}`: the accounts a user may charge outside Slurm."""
    out = {}
    for user, accts in _map(d, path).items():
        lst = [accts] if isinstance(accts, str) else accts
        if not isinstance(lst, list) or not lst or not all(isinstance(a, str) and a for a in lst):
            raise ConfigError(f"{path}.{user}: expected an account name or a list of them, got {accts!r}",
                              field=f"{path}.{user}")
        out[str(user)] = lst
    return out


REMOTE_TYPES = ("qrmi",)      # devices behind a vendor's service (qsched/devices/remote.py)

# cross-session batching by default where a device call has a fixed per-job overhead
MERGE_BATCHES = {"emulated-qpu": 8, "qrmi": 8}


def _parse_device(d, path: str, known_types) -> DeviceSpec:
    d = _map(d, path)
    _unknown(d, {"name", "type", "pool", "max_qubits", "max_shots", "max_bindings",
                 "max_batch_bindings", "max_result_bytes", "merge_batches", "merge_wait_s", "options", "start_worker",
                 "credentials_file", "cost_prior"}, path)
    for req in ("name", "type"):
        if req not in d:
            raise ConfigError(f"{path}.{req}: required", field=f"{path}.{req}")
    name = _type(d["name"], str, f"{path}.name", "a string")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{path}.name: letters, digits, '-' and '_' only, got {name!r}",
                          field=f"{path}.name")
    # YAML reads an unquoted `type: null` as None: that can only mean the null device
    typ = "null" if d["type"] is None else _type(d["type"], str, f"{path}.type", "a string")
    if known_types is not None and typ not in known_types:
        raise ConfigError(f"{path}.type: unknown device type {typ!r} (known: {', '.join(sorted(known_types))})",
                          field=f"{path}.type")
    limits = DeviceLimits(
        # a simulator's state vector tops out long before 64 qubits; a QPU's qubits are not simulated
        max_qubits=_num(d, "max_qubits", path, 30, lo=1, hi=10_000 if typ in REMOTE_TYPES else 64, integer=True),
        max_shots=_num(d, "max_shots", path, 100_000, lo=1, integer=True),
        max_bindings=_num(d, "max_bindings", path, 100_000, lo=1, integer=True),
        max_batch_bindings=_num(d, "max_batch_bindings", path, 20_000, lo=1, integer=True),
        max_result_bytes=_num(d, "max_result_bytes", path, 64 << 20, lo=1024, integer=True),
    )
    options = _map(d.get("options"), f"{path}.options")
    for key in options:
        if _SECRET_KEY.search(str(key)):
            # options are shown by `daemon check`, the API and logs: a secret belongs in credentials_file
            raise ConfigError(f"{path}.options.{key}: looks like a secret; put it in the device's "
                              f"credentials_file (mode 0600, read only by its worker)", field=f"{path}.options.{key}")
    if typ == "emulated-qpu" and options.get("profile") is not None:
        from .devices.profiles import profile
        profile(str(options["profile"]), f"{path}.options.profile")
    creds = d.get("credentials_file")
    if creds is not None:
        creds = os.path.expanduser(_type(creds, str, f"{path}.credentials_file", "a path"))
        if os.path.exists(creds):        # stat only; a worker on another host checks it there
            from .credentials import check_private
            check_private(creds, f"{path}.credentials_file")
    prior = _map(d.get("cost_prior"), f"{path}.cost_prior")
    _unknown(prior, {"setup_s", "per_shot_s", "per_binding_s", "shots"}, f"{path}.cost_prior")
    cost_prior = {k: _num(prior, k, f"{path}.cost_prior", None, lo=0.0, hi=86_400.0) for k in prior}
    if "per_shot_s" in cost_prior and "per_binding_s" in cost_prior:
        raise ConfigError(f"{path}.cost_prior.per_binding_s: give per_shot_s or per_binding_s, not both",
                          field=f"{path}.cost_prior.per_binding_s")
    return DeviceSpec(name=name, type=typ, pool=str(d.get("pool") or typ), limits=limits, options=options,
                      merge_batches=_num(d, "merge_batches", path, MERGE_BATCHES.get(typ, 1), lo=1, hi=64,
                                         integer=True),
                      merge_wait_s=_num(d, "merge_wait_s", path, 0.0, lo=0, hi=60),
                      start_worker=_type(d.get("start_worker", True), bool, f"{path}.start_worker",
                                         "true or false"),
                      credentials_file=creds, cost_prior=cost_prior)


_SECRET_KEY = re.compile(r"(api_?key|secret|password|passwd|token(?!_url)|credential)", re.I)


def _secret_file(path_value, path: str) -> str:
    """A password read from a file only its owner can read (never from the YAML, argv or environment)."""
    p = Path(os.path.expanduser(_type(path_value, str, path, "a path")))
    try:
        st = p.stat()
        if st.st_mode & 0o077:
            raise ConfigError(f"{path}: {p} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it",
                              field=path)
        return p.read_text().strip()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {p} ({e.strerror})", field=path) from None


def parse_redis_url(d: dict, env_url: str | None) -> str | None:
    """The store's one URL (see qsched.redisurl) from `redis.url` or a `redis.sentinel:` block, with the
    password files and TLS files of the block merged in. None: the embedded Redis."""

    url = env_url or d.get("url")
    sentinel = _map(d.get("sentinel"), "redis.sentinel")
    tls = _map(d.get("tls"), "redis.tls")
    _unknown(sentinel, {"addresses", "service", "db", "password_file"}, "redis.sentinel")
    _unknown(tls, {"ca_file", "cert_file", "key_file"}, "redis.tls")
    if sentinel and not env_url:
        if d.get("url"):
            raise ConfigError("redis.sentinel: set either redis.url or redis.sentinel, not both",
                              field="redis.sentinel")
        addrs = _names(sentinel.get("addresses"), "redis.sentinel.addresses")
        if not addrs:
            raise ConfigError("redis.sentinel.addresses: required (HOST:PORT of each sentinel)",
                              field="redis.sentinel.addresses")
        service = _type(sentinel.get("service", "mymaster"), str, "redis.sentinel.service", "a name")
        url = redisurl.sentinel_url(list(addrs), service, db=_num(sentinel, "db", "redis.sentinel", 0, lo=0,
                                                                     integer=True), tls=bool(tls))
    if url is None:
        if d.get("password_file") or tls:
            raise ConfigError("redis: password_file and tls need redis.url or redis.sentinel", field="redis.url")
        return None
    _type(url, str, "redis.url", "a URL")
    if redisurl.is_sentinel(url):
        redisurl.parse_sentinel_url(url)             # refuse a malformed one here, naming the field
    elif url.split("://", 1)[0] not in ("redis", "rediss", "unix"):
        raise ConfigError(f"redis.url: expected redis://, rediss://, unix:// or redis+sentinel://, got "
                          f"{redisurl.redact(url)}", field="redis.url")
    if sentinel.get("password_file"):
        url = redisurl.with_query(url, sentinel_password=_secret_file(sentinel["password_file"],
                                                                       "redis.sentinel.password_file"))
    if tls:
        if url.startswith("redis://"):
            url = "rediss://" + url[len("redis://"):]
        url = redisurl.with_query(url, ssl_ca_certs=tls.get("ca_file"), ssl_certfile=tls.get("cert_file"),
                                   ssl_keyfile=tls.get("key_file"))
    if d.get("password_file"):
        user = _type(d["username"], str, "redis.username", "a name") if d.get("username") else None
        url = redisurl.with_password(url, _secret_file(d["password_file"], "redis.password_file"), username=user)
    return url


# with no `devices:`; configs/qsched.yaml spells out the same (tests/unit/test_config.py keeps them equal).
# 28 qubits: a 30-qubit state vector is 16 GiB per worker, more than a small host has
DEFAULT_DEVICES = [
    {"name": "aer0", "type": "aer", "pool": "aer", "max_qubits": 28, "max_shots": 100_000, "max_bindings": 100_000,
     "options": {"max_parallel_threads": 1}},
    {"name": "lightning0", "type": "lightning", "pool": "lightning", "max_qubits": 28},
    {"name": "null0", "type": "null", "pool": "null"},
]


def parse_config(raw, *, source: str = "<dict>", known_types=None) -> Config:
    raw = _map(raw, "config")
    _unknown(raw, {"state_dir", "redis", "daemon", "auth", "devices", "policy", "slurm", "users", "local",
                   "maintenance"}, "config")
    local = _map(raw.get("local"), "local")
    _unknown(local, {"workers"}, "local")
    state_dir = Path(os.path.expanduser(raw["state_dir"])) if raw.get("state_dir") else default_state_dir()
    redis_cfg = _map(raw.get("redis"), "redis")
    _unknown(redis_cfg, {"url", "max_connections", "socket_group", "password_file", "username", "sentinel", "tls",
                         "wait_replicas", "wait_timeout_ms"}, "redis")
    socket_group = redis_cfg.get("socket_group")
    if socket_group is not None:
        _type(socket_group, str, "redis.socket_group", "a group name")
    redis_url = parse_redis_url(redis_cfg, os.environ.get("QSCHED_REDIS_URL"))
    dm = _map(raw.get("daemon"), "daemon")
    _unknown(dm, {"tcp", "socket", "admin_socket", "max_body_bytes", "drain_timeout_s", "max_attempts",
                  "heartbeat_timeout_s", "start_workers", "result_ttl_s", "template_ttl_s", "parse_timeout_s",
                  "idle_timeout_s", "body_timeout_s", "max_connections_per_peer", "max_connections",
                  "session_idle_timeout_s", "max_answer_bytes",
                  "parse_memory_bytes", "max_template_instructions", "max_template_parameters",
                  "max_template_clbits", "max_terms_per_task", "max_terms_per_request",
                  "tls", "leader_lease_s"}, "daemon")
    tls = _map(dm.get("tls"), "daemon.tls")
    _unknown(tls, {"cert_file", "key_file", "client_ca_file", "require_client_cert"}, "daemon.tls")
    if tls and not (tls.get("cert_file") and tls.get("key_file")):
        raise ConfigError("daemon.tls: cert_file and key_file are required", field="daemon.tls")
    for k in ("cert_file", "key_file", "client_ca_file"):
        if tls.get(k) is not None:
            _type(tls[k], str, f"daemon.tls.{k}", "a path")
    require_cert = _type(tls.get("require_client_cert", False), bool, "daemon.tls.require_client_cert",
                         "true or false")
    if require_cert and not tls.get("client_ca_file"):
        raise ConfigError("daemon.tls.require_client_cert: needs daemon.tls.client_ca_file",
                          field="daemon.tls.require_client_cert")
    tcp = dm.get("tcp", "127.0.0.1:8765")
    if tcp is not None:
        host, _, port = str(tcp).rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"daemon.tcp: expected HOST:PORT, got {tcp!r}", field="daemon.tcp")
    auth = _map(raw.get("auth"), "auth")
    _unknown(auth, {"admin_uids", "trust_tcp", "metrics_public"}, "auth")
    devs_raw = raw.get("devices")
    if devs_raw is None:
        devs_raw = copy.deepcopy(DEFAULT_DEVICES)
    _type(devs_raw, list, "devices", "a list")
    devices = [_parse_device(d, f"devices[{i}]", known_types) for i, d in enumerate(devs_raw)]
    names = [d.name for d in devices]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"devices: duplicate device name {n!r}", field="devices")
    policy = parse_policy(raw.get("policy"))
    check_spill(policy, {d.pool for d in devices})
    start_workers = dm.get("start_workers", True)
    _type(start_workers, bool, "daemon.start_workers", "true or false")
    return Config(
        state_dir=state_dir,
        redis_url=redis_url,
        redis_max_connections=_num(redis_cfg, "max_connections", "redis", 64, lo=4, hi=10_000, integer=True),
        redis_socket_group=socket_group,
        redis_wait_replicas=_num(redis_cfg, "wait_replicas", "redis", 0, lo=0, hi=100, integer=True),
        redis_wait_timeout_ms=_num(redis_cfg, "wait_timeout_ms", "redis", 100, lo=1, hi=60_000, integer=True),
        tcp=tcp,
        tls_cert_file=tls.get("cert_file"),
        tls_key_file=tls.get("key_file"),
        tls_client_ca_file=tls.get("client_ca_file"),
        tls_require_client_cert=require_cert,
        leader_lease_s=_num(dm, "leader_lease_s", "daemon", 0.0, lo=0.0, hi=600.0),
        socket=Path(dm["socket"]) if dm.get("socket") else None,
        admin_socket=Path(dm["admin_socket"]) if dm.get("admin_socket") else None,
        max_body_bytes=_num(dm, "max_body_bytes", "daemon", 64 * 1024 * 1024, lo=1024, integer=True),
        drain_timeout_s=_num(dm, "drain_timeout_s", "daemon", 30.0, lo=0),
        max_attempts=_num(dm, "max_attempts", "daemon", 3, lo=1, hi=100, integer=True),
        heartbeat_timeout_s=_num(dm, "heartbeat_timeout_s", "daemon", 5.0, lo=0.5),
        parse_timeout_s=_num(dm, "parse_timeout_s", "daemon", 10.0, lo=0.1, hi=600),
        idle_timeout_s=_num(dm, "idle_timeout_s", "daemon", 30.0, lo=0.5, hi=3600),
        body_timeout_s=_num(dm, "body_timeout_s", "daemon", 60.0, lo=0.5, hi=3600),
        max_connections_per_peer=_num(dm, "max_connections_per_peer", "daemon", 512, lo=1, integer=True),
        max_connections=_num(dm, "max_connections", "daemon", None, lo=8, integer=True),
        session_idle_timeout_s=_num(dm, "session_idle_timeout_s", "daemon", 86_400.0, lo=0),
        max_answer_bytes=_num(dm, "max_answer_bytes", "daemon", 256 << 20, lo=1 << 20, integer=True),
        parse_memory_bytes=_num(dm, "parse_memory_bytes", "daemon", 2 << 30, lo=512 << 20, integer=True),
        max_template_instructions=_num(dm, "max_template_instructions", "daemon", 1_000_000, lo=1, integer=True),
        max_template_parameters=_num(dm, "max_template_parameters", "daemon", 100_000, lo=1, integer=True),
        max_template_clbits=_num(dm, "max_template_clbits", "daemon", 10_000, lo=0, integer=True),
        max_terms_per_task=_num(dm, "max_terms_per_task", "daemon", 100_000, lo=1, integer=True),
        max_terms_per_request=_num(dm, "max_terms_per_request", "daemon", 200_000, lo=1, integer=True),
        start_workers=start_workers,
        result_ttl_s=_num(dm, "result_ttl_s", "daemon", 86_400, lo=1, integer=True),
        template_ttl_s=_num(dm, "template_ttl_s", "daemon", 7 * 86_400, lo=7200, integer=True),
        admin_uids=[int(u) for u in _type(auth.get("admin_uids", [0]), list, "auth.admin_uids", "a list")],
        trust_tcp=bool(auth.get("trust_tcp", False)),
        metrics_public=_type(auth.get("metrics_public", True), bool, "auth.metrics_public", "true or false"),
        slurm=parse_slurm(raw.get("slurm")),
        users=parse_users(raw.get("users")),
        local_workers=_num(local, "workers", "local", os.cpu_count() or 1, lo=1, hi=1024, integer=True),
        devices=devices,
        maintenance=parse_windows(raw.get("maintenance"), devices),
        policy=policy,
        source=source,
    )


def _read_yaml(path: Path):
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})", field=str(path)) from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}", field=str(path)) from None


def load_config(path: str | Path | None = None, *, known_types=None) -> Config:
    """Load `path`, else $QSCHED_CONFIG, else built-in defaults (embedded Redis, local devices)."""
    path = path or os.environ.get("QSCHED_CONFIG")
    if not path:
        return parse_config({}, source="<defaults>", known_types=known_types)
    return parse_config(_read_yaml(Path(path)), source=str(path), known_types=known_types)


def load_policy_file(path: str | Path, *, known_types=None) -> PolicyConfig:
    """A policy file is either a bare policy mapping or a full config with a `policy:` section. A full
    config is checked whole, as the daemon's SIGHUP reload reads it: a bad key anywhere refuses it."""
    raw = _map(_read_yaml(Path(path)), "policy")
    if "policy" in raw:
        return parse_config(raw, source=str(path), known_types=known_types).policy
    return parse_policy(raw)
