"""YAML config -> validated dataclasses. Every error names the dotted field and what was expected."""
from __future__ import annotations

import contextlib
import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import redisurl
from .errors import ConfigError
from .models import CONFIG_WINDOW, DeviceLimits, DeviceSpec, Window
from .options import Option, defaults, read_options
from .paths import daemon_socket, default_state_dir
from .policy import FairShare, policy_class
from .policy.config import (CLASS_OPTIONS, CLASSES_DEFAULT, POLICY_OPTIONS, POOL_OPTIONS, ClassSpec, PolicyConfig,
                            PoolSpec, QuotaSpec)

# The scalar knobs of each section, declared once (qsched.options): read, bounded and checked for unknown
# keys by parse_config, the dataclasses' defaults, and docs/policy-reference.md's tables. The other keys
# of a section (structured: addresses, paths, lists) are parsed by hand below.
REDIS_OPTIONS = (
    Option("max_connections", 64, "the daemon's pool; a request waits up to 5 s for a connection, then 503", lo=4,
           hi=10_000, kind="integer"),
    Option("socket_group", None, "the embedded Redis's socket is usable by this group too (workers run by "
           "systemd as an unprivileged user in it); none: the daemon's user only", kind="text"),
    Option("wait_replicas", 0, "WAIT before acknowledging a submission: that many replicas hold it, or 503 "
           "(retried under its idempotency key); 0: once the primary has it", lo=0, hi=100, kind="integer"),
    Option("wait_timeout_ms", 100, "how long that WAIT waits", lo=1, hi=60_000, kind="integer"),
)
DAEMON_OPTIONS = (
    Option("max_body_bytes", 64 * 1024 * 1024, "larger requests get 413 naming the limit", lo=1024,
           kind="integer"),
    Option("drain_timeout_s", 30.0, "SIGTERM drain: the longest wait for running batches (it ends as soon as "
           "they do)", lo=0),
    Option("max_attempts", 3, "starts of a batch before its tasks fail (worker deaths, lost workers)", lo=1,
           hi=100, kind="integer"),
    Option("heartbeat_timeout_s", 5.0, "a device whose worker sent no heartbeat this long is down: nothing is "
           "sent to it, and what it held is requeued to its pool", lo=0.5),
    Option("start_workers", True, "false when systemd runs `qsched-worker@DEVICE`", kind="bool"),
    Option("result_ttl_s", 3600, "how long a finished task's result, parameters and record, and a closed "
           "session, stay in Redis: the largest part of its size (docs/admin-guide.md, Sizing)", lo=1,
           kind="integer"),
    Option("events_retention_s", 600.0, "the workers' completion events (a Redis stream that carries results of "
           "up to 64 KB inline) are trimmed once the daemon has read them and they are this old", lo=10.0),
    Option("ledger_max_records", 500_000, "the accounting ledger (a Redis stream) keeps about this many newest "
           "records of closed sessions (about 0.5 KB each); export older ones with `qsched acct`",
           lo=1000, kind="integer"),
    Option("template_ttl_s", 7 * 86_400, "a template unused this long expires from Redis; clients upload it "
           "again when told it is gone", lo=7200, kind="integer"),
    # untrusted circuits are parsed in a child process with these bounds (daemon/parsing.py)
    Option("parse_timeout_s", 10.0, "the child process that parses an uploaded circuit: time", lo=0.1, hi=600),
    Option("parse_memory_bytes", 2 << 30, "the child process that parses an uploaded circuit: memory",
           lo=512 << 20, kind="integer"),
    Option("max_template_instructions", 1_000_000, "larger templates get 400 naming the limit", lo=1,
           kind="integer"),
    Option("max_template_parameters", 100_000, "larger templates get 400 naming the limit", lo=1, kind="integer"),
    Option("max_template_clbits", 10_000, "larger templates get 400 naming the limit", lo=0, kind="integer"),
    Option("max_terms_per_task", 100_000, "Pauli terms over all observables of one task", lo=1, kind="integer"),
    Option("max_terms_per_request", 200_000, "Pauli terms of one request (bounds the event loop's JSON parse, "
           "about 0.1 s at the limit)", lo=1, kind="integer"),
    # connections: idle or half-sent requests are closed, slow readers of large answers are dropped
    Option("idle_timeout_s", 30.0, "an idle connection is closed", lo=0.5, hi=3600),
    Option("body_timeout_s", 60.0, "a request whose body is still incomplete is closed", lo=0.5, hi=3600),
    Option("max_answer_bytes", 256 << 20, "large results held for sending at once (daemon/answers.py)",
           lo=1 << 20, kind="integer"),
    Option("max_connections_per_peer", 512, "open connections per peer (uid on the socket, address on TCP)",
           lo=1, kind="integer"),
    Option("max_connections", None, "open connections in all (none: the fd limit)", lo=8, kind="integer"),
    Option("max_sessions_per_user", 1_000, "open sessions of one user (a loop opening sessions starved the "
           "others); a class may set fewer", lo=1, kind="integer"),
    Option("session_idle_timeout_s", 86_400.0, "a session no Slurm job owns, with nothing queued or running, is "
           "closed after this long idle (0: never)", lo=0),
    # replay records (daemon/replay.py): a requeued or resumed job's identical requests answered from them
    Option("replay_ttl_s", 7 * 86_400, "a job's replay record is kept this long after its last write (0: no "
           "records, no replay)", lo=0, kind="integer"),
    Option("replay_max_tasks", 100_000, "tasks one replay record holds; past it the record stops growing",
           lo=1, kind="integer"),
    Option("replay_max_bytes", 256 << 20, "result bytes one replay record holds; past it the record stops "
           "growing", lo=1024, kind="integer"),
    Option("leader_lease_s", 0.0, "a standby daemon: the one holding the lease in Redis serves, the others wait "
           "(0: one daemon, no lease)", lo=0.0, hi=600.0),
)
AUTH_OPTIONS = (
    Option("trust_tcp", False, "test boxes only: TCP opens sessions without MUNGE", kind="bool"),
    Option("metrics_public", True, "`/metrics` without a credential (for Prometheus over TCP)", kind="bool"),
)
SLURM_OPTIONS = (
    Option("enabled", "auto", "auto: when the Slurm client and a slurm.conf are present", kind="choice",
           choices=("auto", True, False)),
    Option("backend", "auto", "how qsched talks to Slurm", kind="choice", choices=("auto", "cli", "pyslurm")),
    Option("munge_socket", None, "munged's socket, when not the default", kind="text"),
    Option("reconcile_interval_s", 1.0, "an ended job's session closes within this (plus one squeue)", lo=0.05,
           hi=60),
    Option("admin_comment", True, "usage into the job's AdminComment at close (needs operator rights)",
           kind="bool"),
    Option("require_qpu", True, "a job must ask for quantum access to get a session", kind="bool"),
    Option("mirror_maintenance", True, "with slurm.site: device states and maintenance windows as Slurm "
           "licence reservations", kind="bool"),
    Option("admission", False, "with slurm.site and mirror_maintenance: hold back a pool's licences "
           "(qsched_admit_POOL) while its predicted backlog exceeds admission_target_s per device", kind="bool"),
    Option("admission_target_s", 60.0, "device-seconds of queued quantum work per device that admission "
           "keeps the pool at", lo=1.0, hi=86_400.0),
    Option("admission_hysteresis", 0.25, "the hold grows above target x (1 + this), shrinks below target x "
           "(1 - this)", lo=0.0, hi=0.9),
    Option("admission_min_free", 1, "licences of a pool admission never holds back", lo=0, kind="integer"),
    Option("admission_max_held", None, "licences of a pool admission holds back at most (none: no bound)", lo=0,
           kind="integer"),
)
# (section path, its options), in the order of the reference table
SCHEMA = (("redis", REDIS_OPTIONS), ("daemon", DAEMON_OPTIONS), ("auth", AUTH_OPTIONS),
          ("slurm", SLURM_OPTIONS), ("policy", POLICY_OPTIONS), ("policy.classes.NAME", CLASS_OPTIONS),
          ("policy.pools.NAME", POOL_OPTIONS))
# the table in docs/policy-reference.md: the config's knobs and the default policy's own options
REFERENCE = (*SCHEMA, ("policy", FairShare.OPTIONS))
_R, _D, _A, _S = (defaults(o) for o in (REDIS_OPTIONS, DAEMON_OPTIONS, AUTH_OPTIONS, SLURM_OPTIONS))


@dataclass
class SlurmConfig:
    """The `slurm:` section, read by qsched.slurm.hooks (docs/admin/slurm.md)."""
    # SLURM_OPTIONS (their docs there)
    enabled: bool | str = _S["enabled"]
    backend: str = _S["backend"]
    munge_socket: str | None = _S["munge_socket"]
    reconcile_interval_s: float = _S["reconcile_interval_s"]
    admin_comment: bool = _S["admin_comment"]
    require_qpu: bool = _S["require_qpu"]
    mirror_maintenance: bool = _S["mirror_maintenance"]
    admission: bool = _S["admission"]
    admission_target_s: float = _S["admission_target_s"]
    admission_hysteresis: float = _S["admission_hysteresis"]
    admission_min_free: int = _S["admission_min_free"]
    admission_max_held: int | None = _S["admission_max_held"]
    env: dict[str, str] = field(default_factory=dict)    # extra environment for the Slurm commands
    # what `qsched slurm sync` writes for job_submit.lua; its keys are checked with the pools
    # (qsched.slurm.site, from the daemon's check)
    site: dict | None = None


@dataclass
class Config:
    # the scalar knobs come from REDIS_OPTIONS, DAEMON_OPTIONS and AUTH_OPTIONS (their docs there)
    state_dir: Path
    redis_url: str | None = None          # may hold the password (from redis.password_file): see redact()
    redis_max_connections: int = _R["max_connections"]
    redis_socket_group: str | None = _R["socket_group"]
    redis_wait_replicas: int = _R["wait_replicas"]
    redis_wait_timeout_ms: int = _R["wait_timeout_ms"]
    tcp: str | None = "127.0.0.1:8765"
    # TLS on the TCP listener (daemon.tls): MUNGE credentials and session tokens cross it
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None      # verify client certificates against this CA
    tls_require_client_cert: bool = False
    socket: Path | None = None
    admin_socket: Path | None = None
    leader_lease_s: float = _D["leader_lease_s"]
    max_body_bytes: int = _D["max_body_bytes"]
    drain_timeout_s: float = _D["drain_timeout_s"]
    max_attempts: int = _D["max_attempts"]
    heartbeat_timeout_s: float = _D["heartbeat_timeout_s"]
    idle_timeout_s: float = _D["idle_timeout_s"]
    body_timeout_s: float = _D["body_timeout_s"]
    max_answer_bytes: int = _D["max_answer_bytes"]
    max_connections_per_peer: int = _D["max_connections_per_peer"]
    max_connections: int | None = _D["max_connections"]
    max_sessions_per_user: int = _D["max_sessions_per_user"]
    session_idle_timeout_s: float = _D["session_idle_timeout_s"]
    parse_timeout_s: float = _D["parse_timeout_s"]
    parse_memory_bytes: int = _D["parse_memory_bytes"]
    max_template_instructions: int = _D["max_template_instructions"]
    max_template_parameters: int = _D["max_template_parameters"]
    max_template_clbits: int = _D["max_template_clbits"]
    max_terms_per_task: int = _D["max_terms_per_task"]
    max_terms_per_request: int = _D["max_terms_per_request"]
    start_workers: bool = _D["start_workers"]
    result_ttl_s: int = _D["result_ttl_s"]
    ledger_max_records: int = _D["ledger_max_records"]
    events_retention_s: float = _D["events_retention_s"]
    replay_ttl_s: int = _D["replay_ttl_s"]
    replay_max_tasks: int = _D["replay_max_tasks"]
    replay_max_bytes: int = _D["replay_max_bytes"]
    template_ttl_s: int = _D["template_ttl_s"]
    admin_uids: list[int] = field(default_factory=lambda: [0])
    trust_tcp: bool = _A["trust_tcp"]
    metrics_public: bool = _A["metrics_public"]
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    users: dict[str, list[str]] = field(default_factory=dict)     # user -> accounts; the first is the default
    local_workers: int = field(default_factory=lambda: os.cpu_count() or 1)   # `qsched submit --local` jobs at once
    devices: list[DeviceSpec] = field(default_factory=list)
    maintenance: list[Window] = field(default_factory=list)      # planned windows (models.Window)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    source: str = "<defaults>"
    # the top-level mapping as read: a reload names the sections that changed (qsched.daemon.app)
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def socket_path(self) -> Path:
        return self.socket or daemon_socket(self.state_dir)

    @property
    def admin_socket_path(self) -> Path:
        return self.admin_socket or self.state_dir / "admin.sock"

    def pools(self) -> dict[str, list[DeviceSpec]]:
        out: dict[str, list[DeviceSpec]] = {}
        for d in self.devices:
            out.setdefault(d.pool, []).append(d)
        return out


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


POLICY_KEYS = {"name", "weights", "classes", "pools", "quotas", "account_parents", *(o.name for o in POLICY_OPTIONS)}
CLASS_KEYS = {"weight", "accounts", "users", "spill_to", *(o.name for o in CLASS_OPTIONS)}


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
        **read_options(d, CLASS_OPTIONS, path),
        weight=_num(d, "weight", path, weight, lo=1e-6),
        accounts=_names(d.get("accounts"), f"{path}.accounts"),
        users=_names(d.get("users"), f"{path}.users"),
        spill_to=None if d.get("spill_to") is None else _type(d["spill_to"], str, f"{path}.spill_to", "a pool name"),
    )


def _parse_pools(d, path: str) -> dict[str, PoolSpec]:
    out = {}
    for name, spec in _map(d, path).items():
        ppath = f"{path}.{name}"
        spec = _map(spec, ppath)
        _unknown(spec, {o.name for o in POOL_OPTIONS}, ppath)
        out[str(name)] = PoolSpec(str(name), **read_options(spec, POOL_OPTIONS, ppath))
    return out


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
    return Window(pool=str(pool), start=start, end=end, devices=names, reason=reason[:200], id=f"{CONFIG_WINDOW}{path}")


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
    return PolicyConfig(
        name=name,
        **read_options(d, POLICY_OPTIONS, path),
        account_weights=_weights(w.get("accounts"), f"{path}.weights.accounts"),
        user_weights=_weights(w.get("users"), f"{path}.weights.users"),
        class_weights={n: c.weight for n, c in classes.items()},
        classes=classes,
        pools=_parse_pools(d.get("pools"), f"{path}.pools"),
        quotas=_parse_quotas(d.get("quotas"), f"{path}.quotas"),
        account_parents=_parse_parents(d.get("account_parents"), f"{path}.account_parents"),
        options=options,
    )


def check_pools(policy: PolicyConfig, pools: set[str]) -> None:
    """A class's spill_to and each of policy.pools must name a configured pool."""
    for name in policy.pools:
        if name not in pools:
            f = f"policy.pools.{name}"
            raise ConfigError(f"{f}: no pool {name!r} (pools: {', '.join(sorted(pools))})", field=f)
    for c in policy.classes.values():
        if c.spill_to is not None and c.spill_to not in pools:
            f = f"policy.classes.{c.name}.spill_to"
            raise ConfigError(f"{f}: no pool {c.spill_to!r} (pools: {', '.join(sorted(pools))})", field=f)


def parse_slurm(d, path: str = "slurm") -> SlurmConfig:
    d = _map(d, path)
    _unknown(d, {"env", "site", *(o.name for o in SLURM_OPTIONS)}, path)
    return SlurmConfig(
        **read_options(d, SLURM_OPTIONS, path),
        env={str(k): str(v) for k, v in _map(d.get("env"), f"{path}.env").items()},
        site=None if d.get("site") is None else _map(d["site"], f"{path}.site"),
    )


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
    if typ == "emulated-qpu" and not cost_prior:
        # the daemon's cost model starts from the device's timing profile until it has measured it
        from .devices.profiles import cost_prior as profile_prior
        with contextlib.suppress(ValueError, TypeError):       # a bad option is its worker's error to report
            cost_prior = profile_prior(options)
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


# the top-level keys of a config: a file with any of them is a whole config (else a bare policy mapping)
CONFIG_KEYS = frozenset({"state_dir", "redis", "daemon", "auth", "devices", "policy", "slurm", "users", "local",
                         "maintenance"})


def parse_config(raw, *, source: str = "<dict>", known_types=None) -> Config:
    raw = _map(raw, "config")
    _unknown(raw, set(CONFIG_KEYS), "config")
    local = _map(raw.get("local"), "local")
    _unknown(local, {"workers"}, "local")
    state_dir = Path(os.path.expanduser(raw["state_dir"])) if raw.get("state_dir") else default_state_dir()
    redis_cfg = _map(raw.get("redis"), "redis")
    _unknown(redis_cfg, {"url", "password_file", "username", "sentinel", "tls", *(o.name for o in REDIS_OPTIONS)},
             "redis")
    redis_opts = {f"redis_{k}": v for k, v in read_options(redis_cfg, REDIS_OPTIONS, "redis").items()}
    redis_url = parse_redis_url(redis_cfg, os.environ.get("QSCHED_REDIS_URL"))
    dm = _map(raw.get("daemon"), "daemon")
    _unknown(dm, {"tcp", "socket", "admin_socket", "tls", *(o.name for o in DAEMON_OPTIONS)}, "daemon")
    daemon_opts = read_options(dm, DAEMON_OPTIONS, "daemon")
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
    _unknown(auth, {"admin_uids", *(o.name for o in AUTH_OPTIONS)}, "auth")
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
    check_pools(policy, {d.pool for d in devices})
    return Config(
        state_dir=state_dir,
        redis_url=redis_url,
        **redis_opts,
        tcp=tcp,
        tls_cert_file=tls.get("cert_file"),
        tls_key_file=tls.get("key_file"),
        tls_client_ca_file=tls.get("client_ca_file"),
        tls_require_client_cert=require_cert,
        socket=Path(dm["socket"]) if dm.get("socket") else None,
        admin_socket=Path(dm["admin_socket"]) if dm.get("admin_socket") else None,
        **daemon_opts,
        **read_options(auth, AUTH_OPTIONS, "auth"),
        admin_uids=[int(u) for u in _type(auth.get("admin_uids", [0]), list, "auth.admin_uids", "a list")],
        slurm=parse_slurm(raw.get("slurm")),
        users=parse_users(raw.get("users")),
        local_workers=_num(local, "workers", "local", os.cpu_count() or 1, lo=1, hi=1024, integer=True),
        devices=devices,
        maintenance=parse_windows(raw.get("maintenance"), devices),
        policy=policy,
        source=source,
        raw=raw,
    )


def _read_yaml(path: Path):
    """The file's YAML. An empty file is refused: a config truncated by an editor or a failed copy must
    not silently become the built-in defaults (at start, or at a reload, where it would reset the policy)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})", field=str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})",
                          field=str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}", field=str(path)) from None
    if raw is None:
        raise ConfigError(f"{path}: empty (no settings); to run on the built-in defaults, give no config file",
                          field=str(path))
    return raw


def load_config(path: str | Path | None = None, *, known_types=None) -> Config:
    """Load `path`, else $QSCHED_CONFIG, else built-in defaults (embedded Redis, local devices)."""
    path = path or os.environ.get("QSCHED_CONFIG")
    if not path:
        return parse_config({}, source="<defaults>", known_types=known_types)
    return parse_config(_read_yaml(Path(path)), source=str(path), known_types=known_types)


def load_policy_file(path: str | Path, *, known_types=None) -> Config | PolicyConfig:
    """A policy file is either a whole config (any top-level config key: the daemon's file, which the
    caller must then check as the daemon does, qsched.daemon.check) or a bare policy mapping."""
    raw = _read_yaml(Path(path))
    if isinstance(raw, dict) and CONFIG_KEYS & set(raw):
        return parse_config(raw, source=str(path), known_types=known_types)
    return parse_policy(raw)
