"""Checks of request bodies, one place per rule: each refusal is a 400 naming the field and the limit,
made before the scheduler sees the request."""
from __future__ import annotations

import json
import math

import numpy as np
from aiohttp import web

from .. import wire
from ..errors import BadRequest, NotFound, PayloadTooLarge
from ..models import DeviceLimits, Task, TaskKind
from .index import SessionEntry
from .scheduler import Scheduler

KINDS = {k.value for k in TaskKind}
METHODS = {None, "adjoint", "parameter-shift"}
MAX_WAIT_S = 300.0
MAX_IDEMPOTENCY_KEY = 128
MAX_REASON = 200
MAX_ESTIMATE_BINDINGS = 1_000_000      # what GET /v1/estimate may ask a prediction for
MAX_NAME = 256           # pool, class, account, name, job_id: echoed in errors, logs and listings
MAX_WAIT_IDS = 100_000
ECHO = 80                 # characters of a refused value quoted back in an error


def echo(v: object) -> str:
    """A refused value as an error quotes it: never the whole of a large one."""
    r = repr(v)
    return r if len(r) <= ECHO else f"{r[:ECHO]}... ({len(r)} characters)"


def unknown_fields(body: dict, allowed: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise BadRequest(f"{echo(extra[0])}: unknown field (allowed: {', '.join(sorted(allowed))})",
                         field=extra[0][:ECHO])


def finite(v: object) -> float | None:
    """A JSON number as a finite float; None for anything else (a bool, NaN, 1e400, a 400-digit integer)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def number(body: dict, field: str, *, lo: float = -math.inf, what: str = "a number") -> float | None:
    """body[field] as a finite number >= lo, or None when absent or null."""
    v = body.get(field)
    if v is None:
        return None
    f = finite(v)
    if f is None or f < lo:
        raise BadRequest(f"{field}: expected {what}, got {echo(v)}", field=field)
    return f


def printable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return s.isprintable()


def text(body: dict, field: str, *, limit: int, default: str | None = None) -> str | None:
    """body[field] as printable text of at most `limit` characters: names reach admins' terminals
    (qsched session list), logs and Slurm's AdminComment."""
    v = body.get(field)
    if v is None:
        return default
    if not isinstance(v, str):
        raise BadRequest(f"{field}: expected a string", field=field)
    if len(v) > limit:
        raise BadRequest(f"{field}: {len(v)} characters, at most {limit}", field=field, limit=limit)
    if not printable(v):
        raise BadRequest(f"{field}: printable characters only (no control characters or lone surrogates)",
                         field=field)
    return v


def flag(body: dict, field: str) -> bool | None:
    v = body.get(field)
    if v is not None and not isinstance(v, bool):
        raise BadRequest(f"{field}: expected true or false", field=field)
    return v


def wait_seconds(request: web.Request) -> float:
    """The `wait` query (seconds), clamped to 0..MAX_WAIT_S."""
    try:
        f = finite(float(request.query.get("wait", 0)))
    except ValueError:
        f = None
    if f is None:
        raise BadRequest("wait: expected seconds", field="wait")
    return min(MAX_WAIT_S, max(0.0, f))


def idempotency_key(body: dict) -> str | None:
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY):
        raise BadRequest(f"idempotency_key: expected a string of 1..{MAX_IDEMPOTENCY_KEY} characters",
                         field="idempotency_key", limit=MAX_IDEMPOTENCY_KEY)
    return key


def pool_limits(sch: Scheduler, pool: str) -> DeviceLimits:
    devs = sch.pools[pool]
    return DeviceLimits(max_qubits=min(d.limits.max_qubits for d in devs),
                        max_shots=min(d.limits.max_shots for d in devs),
                        max_bindings=min(d.limits.max_bindings for d in devs),
                        max_result_bytes=min(d.limits.max_result_bytes for d in devs))


def result_bytes(kind: str, info: dict, bindings: int, shots: int, observables: int) -> tuple[int, str]:
    """The size of a task's result arrays, from its shape alone (before it runs), and how it was counted.
    Samples: one packed bit array per classical register (the whole register measured when it has none);
    estimates: evs and stds; gradients: evs and the jacobian (observables x parameters)."""
    if kind == "sample":
        per_shot = sum((size + 7) // 8 for _, size in info.get("cregs", ())) or (info["num_qubits"] + 7) // 8
        return shots * bindings * per_shot, f"shots {shots} x bindings {bindings} x {per_shot} bytes per shot"
    floats = 2 if kind == "estimate" else 1 + len(info["parameters"])
    return (8 * floats * observables * bindings,
            f"observables {observables} x bindings {bindings} x {8 * floats} bytes")


async def check_runnable(sch: Scheduler, info: dict, pool: str, field: str) -> None:
    """Refuse now what the pool's devices say they cannot run, rather than fail the task later."""
    unsupported = await sch.unsupported(pool)
    for name in info.get("instructions", ()):
        if name in unsupported:
            raise BadRequest(f"{field}: instruction {name!r} cannot run on pool {pool!r} (device "
                             f"{unsupported[name]}); use another pool or remove it", field=field)


async def template_info(sch: Scheduler, digest: object, field: str) -> dict:
    if not isinstance(digest, str) or len(digest) != 64:
        raise BadRequest(f"{field}: expected a 64-character sha256 hex digest", field=field)
    info = await sch.templates.get(digest)
    if info is None:
        raise NotFound(f"{field}: unknown or expired template {digest[:12]}...; upload it", field=field)
    return info


def _check_terms(terms: int, limit: int, field: str) -> None:
    if terms > limit:
        raise BadRequest(f"{field}.observables: {terms} Pauli terms, at most daemon.max_terms_per_task = {limit}",
                         field=f"{field}.observables", limit=limit)


async def parse_task(sch: Scheduler, sid: str, pool: str, obj: object, field: str,
                     limit: DeviceLimits) -> tuple[Task, str, bytes]:
    """One task of a submission -> (Task, observables JSON, raw float64 params)."""
    if not isinstance(obj, dict):
        raise BadRequest(f"{field}: expected an object", field=field)
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise BadRequest(f"{field}.kind: one of {', '.join(sorted(KINDS))}", field=f"{field}.kind")
    info = await template_info(sch, obj.get("template"), f"{field}.template")
    await check_runnable(sch, info, pool, f"{field}.template")
    if info["num_qubits"] > limit.max_qubits:
        raise BadRequest(f"{field}.template: {info['num_qubits']} qubits, pool has at most {limit.max_qubits}",
                         field=f"{field}.template", limit=limit.max_qubits)
    P = len(info["parameters"])
    params = wire.decode_array(obj.get("params") or {"dtype": "float64", "shape": [1, 0], "data": ""},
                               f"{field}.params", dtype="float64", ndim=2)
    if not np.isfinite(params).all():
        raise BadRequest(f"{field}.params: parameters must be finite (no NaN or infinity)", field=f"{field}.params")
    if params.shape[1] != P:
        raise BadRequest(f"{field}.params: the template has {P} parameters, got {params.shape[1]} columns",
                         field=f"{field}.params", limit=P)
    if not 1 <= params.shape[0] <= limit.max_bindings:
        raise BadRequest(f"{field}.params: {params.shape[0]} bindings, limit 1..{limit.max_bindings}",
                         field=f"{field}.params", limit=limit.max_bindings)
    shots = obj.get("shots")
    if shots is not None and (not isinstance(shots, int) or isinstance(shots, bool)
                              or not 1 <= shots <= limit.max_shots):
        raise BadRequest(f"{field}.shots: must be an integer in 1..{limit.max_shots}, got {echo(shots)}",
                         field=f"{field}.shots", limit=limit.max_shots)
    if kind == "sample" and shots is None:
        raise BadRequest(f"{field}.shots: sample tasks need shots", field=f"{field}.shots")
    observables, n_obs = "[]", 0
    if kind != "sample":
        raw_obs = obj.get("observables")
        if isinstance(raw_obs, list) and all(isinstance(o, list) for o in raw_obs):
            _check_terms(sum(len(o) for o in raw_obs), sch.config.max_terms_per_task, field)   # before the walk
        checked = wire.check_observables(raw_obs, info["num_qubits"], f"{field}.observables")
        _check_terms(sum(len(o) for o in checked), sch.config.max_terms_per_task, field)
        observables, n_obs = json.dumps(checked), len(checked)
    method = obj.get("method")
    if not (method is None or isinstance(method, str)) or method not in METHODS or (method and kind != "gradient"):
        raise BadRequest(f"{field}.method: gradient tasks take 'adjoint' or 'parameter-shift'",
                         field=f"{field}.method")
    seed = obj.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise BadRequest(f"{field}.seed: an integer in 0..2**63-1, got {echo(seed)}", field=f"{field}.seed",
                         limit=2**63 - 1)
    size, how = result_bytes(kind, info, params.shape[0], shots or 1, n_obs)
    if size > limit.max_result_bytes:
        raise BadRequest(f"{field}: its result would be {size} bytes ({how}), at most max_result_bytes = "
                         f"{limit.max_result_bytes} on pool {pool!r}; split it into smaller tasks",
                         field=field, limit=limit.max_result_bytes)
    t = Task(sch.new_task_id(sid), sid, kind, obj["template"], params.shape[0], shots, 0, 0.0, method=method,
             seed=seed)
    return t, observables, params.tobytes()


async def parse_submission(sch: Scheduler, entry: SessionEntry, body: dict) -> list:
    """A submission ({"tasks": [...]} or one task) -> parse_task's items, within the per-request terms."""
    cap = sch.config.max_terms_per_request
    many = "tasks" in body
    raw = body["tasks"] if many else [body]
    if not isinstance(raw, list) or not raw:
        raise BadRequest("tasks: expected a non-empty list", field="tasks")
    pool = entry.session.pool
    limit = pool_limits(sch, pool)
    items = [await parse_task(sch, entry.session.id, pool, obj, f"tasks[{i}]" if many else "task", limit)
             for i, obj in enumerate(raw)]
    terms = sum(len(o) for (t, _, _), obj in zip(items, raw) if t.kind != "sample" for o in obj["observables"])
    if terms > cap:
        raise PayloadTooLarge(f"observables: {terms} Pauli terms in one request, at most "
                              f"daemon.max_terms_per_request = {cap}; send fewer tasks per request",
                              field="observables", limit=cap)
    return items


def estimate_request(query: dict) -> dict:
    """`GET /v1/estimate`'s query: pool, class, account (null: the defaults) and bindings (1 to
    MAX_ESTIMATE_BINDINGS)."""
    unknown_fields(query, {"pool", "class", "account", "bindings"})
    out: dict = {f: text(query, f, limit=MAX_NAME) for f in ("pool", "class", "account")}
    raw = query.get("bindings", "1")
    n = int(raw) if raw.isdigit() else 0
    if not 1 <= n <= MAX_ESTIMATE_BINDINGS:
        raise BadRequest(f"bindings: must be an integer from 1 to {MAX_ESTIMATE_BINDINGS} (got {echo(raw)})",
                         field="bindings")
    out["bindings"] = n
    return out


def session_request(body: dict) -> dict:
    """An open's fields (null means "the default"): weight, pool, class, account, name, job_id, resume
    (a replay record's key, chained jobs: daemon/replay.py)."""
    weight = number(body, "weight", what="a finite number")
    out: dict = {"weight": 1.0 if weight is None else weight}
    for f in ("pool", "class", "account", "name", "resume"):
        out[f] = text(body, f, limit=MAX_NAME)
    job_id = body.get("job_id")
    out["job_id"] = str(job_id) if isinstance(job_id, int) and not isinstance(job_id, bool) and 0 <= job_id < 2**63 \
        else text(body, "job_id", limit=MAX_NAME, default="")
    return out


def session_update(body: dict) -> dict:
    """An admin's update of a session: class, weight, hold (with a reason) or release."""
    unknown_fields(body, {"class", "weight", "hold", "reason", "release"})
    return {"cls": text(body, "class", limit=MAX_NAME), "weight": number(body, "weight", what="a finite number"),
            "hold": flag(body, "hold"), "release": flag(body, "release"),
            "reason": text(body, "reason", limit=MAX_REASON, default="")}


def window_request(body: dict) -> tuple[float, float | None, str]:
    """A maintenance window: {"start": epoch s, "end": epoch s | null, "reason": text}."""
    unknown_fields(body, {"start", "end", "reason"})
    start = number(body, "start", what="epoch seconds")
    if start is None:
        raise BadRequest("start: epoch seconds", field="start")
    return start, number(body, "end", what="epoch seconds"), text(body, "reason", limit=MAX_REASON, default="") or ""


def device_state_request(body: dict) -> tuple[str, str]:
    state = text(body, "state", limit=MAX_NAME)
    if state is None:
        raise BadRequest("state: expected a string", field="state")
    return state, text(body, "reason", limit=MAX_REASON, default="") or ""


def wait_request(body: dict) -> tuple[list[str], float]:
    """POST /v1/tasks/wait: distinct task ids, at most MAX_WAIT_IDS, and a timeout."""
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > MAX_WAIT_IDS:
        raise BadRequest(f"ids: expected a list of at most {MAX_WAIT_IDS} task ids", field="ids", limit=MAX_WAIT_IDS)
    if len(set(ids)) != len(ids):
        raise BadRequest(f"ids: {len(ids) - len(set(ids))} repeated task ids; name each task once", field="ids")
    timeout = number(body, "timeout", lo=0, what="seconds >= 0")
    return ids, min(timeout or 0.0, MAX_WAIT_S)
