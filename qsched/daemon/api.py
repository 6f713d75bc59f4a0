"""The HTTP API (aiohttp): validation and identity here, scheduling in scheduler.py.

Every error is JSON naming the field and the limit; a bad request never stops the daemon."""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import pwd
import re
import socket
import struct
from dataclasses import dataclass

import numpy as np
from aiohttp import web
from redis.exceptions import RedisError

from .. import __version__, wire
from ..errors import (
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    QschedError,
    RequestTimeout,
    Unauthorized,
    Unavailable,
)
from ..integration import SlurmIntegration
from ..models import DeviceLimits, Task, TaskKind, TaskState
from .identity import session_account, session_weight
from .answers import AnswerBudget
from .parsing import Limits, TemplateParser
from .scheduler import Scheduler

log = logging.getLogger("qsched.api")

SCHEDULER = web.AppKey("scheduler", Scheduler)
ADMIN = web.AppKey("admin", bool)
HOOKS = web.AppKey("hooks", SlurmIntegration)
PARSER = web.AppKey("parser", TemplateParser)
ANSWERS = web.AppKey("answers", AnswerBudget)
RESERVED = web.ResponseKey("answer_bytes", int)      # its share of the AnswerBudget, given back once sent
KINDS = {k.value for k in TaskKind}
METHODS = {None, "adjoint", "parameter-shift"}
MAX_WAIT_S = 300.0
MAX_IDEMPOTENCY_KEY = 128
_SURROGATE = re.compile(rb"\\[uU][dD][89a-fA-F]")
_TASK_ID = re.compile(r"[0-9a-f]{1,32}\.[0-9a-z]{1,32}")


@dataclass
class Caller:
    uid: int | None       # peer uid on a unix socket, or the uid a MUNGE credential proved over TCP
    token: str | None     # bearer token
    admin: bool

    def user(self) -> str:
        if self.uid is None:
            return "None"
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)


def _peer_uid(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
    return uid


def _is_admin(request: web.Request, uid: int | None) -> bool:
    return uid is not None and uid in request.app[SCHEDULER].config.admin_uids \
        and (request.app[ADMIN] or uid == os.geteuid())


def caller(request: web.Request) -> Caller:
    uid = _peer_uid(request)
    auth = request.headers.get("Authorization", "")
    token = auth[7:].strip() if auth.startswith("Bearer ") else None
    return Caller(uid, token, _is_admin(request, uid))


async def identify(request: web.Request, purpose: str) -> Caller:
    """caller(), where over TCP a MUNGE credential minted for `purpose` names the uid (a listing or a
    close from a login node). Call it once per request: munged refuses the same credential twice."""
    c = caller(request)
    cred = request.headers.get("X-Qsched-Munge")
    if c.uid is None and cred:
        hook = request.app[HOOKS].identify
        if hook is None:
            raise Unauthorized("authorization: this daemon cannot verify MUNGE credentials (munged does not "
                               "answer on its host; see slurm.munge_socket)", field="authorization")
        uid, _ = await hook(cred, purpose)
        c = Caller(uid, c.token, _is_admin(request, uid))
    return c


def visible_users(request: web.Request, c: Caller) -> set[str] | None:
    """The `user` query (comma-separated names), checked: a user may ask for their own records only, so
    a listing is never empty merely because the caller may not see it. None: no filter asked for."""
    raw = request.query.get("user")
    if not raw:
        return None
    wanted = {u for u in raw.split(",") if u}
    if not c.admin:
        sch = request.app[SCHEDULER]
        sid = sch.session_for_token(c.token) if c.uid is None and c.token else None
        me = sch.sessions[sid].session.user if sid in sch.sessions else c.user()
        others = sorted(wanted - {me})
        if others:
            raise Forbidden(f"user: {others[0]}'s sessions and records are shown only to {others[0]} and admins "
                            f"(you are {me})", field="user")
    return wanted


def authorize(request: web.Request, session, c: Caller | None = None) -> Caller:
    c = c or caller(request)
    if c.admin or (c.uid is not None and c.uid == session.uid):
        return c
    if c.token and request.app[SCHEDULER].check_token(session.id, c.token):
        return c
    if c.uid is None and not c.token:
        raise Unauthorized("authorization: a session token (Authorization: Bearer ...), a MUNGE credential "
                           "(X-Qsched-Munge) or the local unix socket is required", field="authorization")
    raise Forbidden(f"session: {session.id} belongs to another user", field="session")


async def read_body(request: web.Request) -> bytes:
    """The body, within daemon.body_timeout_s: a client that announces a body and sends it slowly (or
    never) does not hold a handler forever."""
    limit = request.app[SCHEDULER].config.body_timeout_s
    try:
        return await asyncio.wait_for(request.read(), limit)       # over client_max_size: 413
    except asyncio.TimeoutError:
        raise RequestTimeout(f"body: not received within {limit:g} s", field="body", limit=limit) from None


async def json_body(request: web.Request, *, max_terms: int | None = None) -> dict:
    """The body as a JSON object. With max_terms (a task submission), a body that must hold more Pauli
    terms than that is refused before it is parsed: a 24 MB body of 2,000,000 terms took json.loads
    1.9 s of the event loop. Every term is a JSON array and so is every observable, and a task adds a
    few more, so a body with more '[' than 2 x max_terms + 4 per object cannot be within the limit."""
    raw = await read_body(request)
    if not raw:
        return {}
    if max_terms is not None and len(raw) > TERMS_PRESCAN_ABOVE and \
            raw.count(b"[") > 2 * max_terms + 4 * raw.count(b"{") + 256:
        raise PayloadTooLarge(f"observables: more than daemon.max_terms_per_request = {max_terms} Pauli terms in "
                              "one request; send fewer tasks per request", field="observables", limit=max_terms)
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadRequest(f"body: invalid JSON ({type(e).__name__})", field="body") from None
    if not isinstance(obj, dict):
        raise BadRequest("body: expected a JSON object", field="body")
    if _SURROGATE.search(raw):          # rare, so the whole body is checked only then
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("body: lone UTF-16 surrogates are not text", field="body") from None
    return obj


STREAM_ABOVE = 1 << 20
TERMS_PRESCAN_ABOVE = 1 << 20         # smaller bodies parse in well under a millisecond
STREAM_CHUNK = 256 << 10


async def _stream(request: web.Request, resp: web.Response) -> web.StreamResponse:
    """Send a large answer in chunks, each within body_timeout_s: the transport buffers one chunk, not
    the whole answer, and a client that stops reading is dropped (20 clients not reading a 27 MB
    result held 1.6 GB before)."""
    body = resp.body
    assert isinstance(body, (bytes, bytearray))
    out = web.StreamResponse(status=resp.status, headers={"Content-Type": resp.content_type})
    out.content_length = len(body)
    limit = request.app[SCHEDULER].config.body_timeout_s
    await out.prepare(request)
    view = memoryview(body)
    for i in range(0, len(body), STREAM_CHUNK):
        try:
            await asyncio.wait_for(out.write(view[i:i + STREAM_CHUNK]), limit)
        except (asyncio.TimeoutError, ConnectionResetError):
            log.warning("dropped a client that stopped reading a %d-byte answer", len(body))
            if request.transport is not None:
                request.transport.abort()
            return out
    await out.write_eof()
    return out


@web.middleware
async def errors_middleware(request, handler):
    try:
        resp = await handler(request)
        try:
            if isinstance(resp, web.Response) and isinstance(resp.body, (bytes, bytearray)) \
                    and len(resp.body) > STREAM_ABOVE:
                return await _stream(request, resp)
            return resp
        finally:
            await request.app[ANSWERS].release(resp.get(RESERVED, 0))
    except QschedError as e:
        if e.status < 500:
            request.app[SCHEDULER].metrics.rejected.labels(e.code).inc()
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return web.json_response(e.to_json(), status=e.status, headers=headers)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SCHEDULER].config.max_body_bytes
        too_large = PayloadTooLarge(f"body: larger than the limit of {limit} bytes", field="body", limit=limit)
        request.app[SCHEDULER].metrics.rejected.labels(too_large.code).inc()
        return web.json_response(too_large.to_json(), status=413)
    except RedisError as e:
        err = Unavailable(f"store: Redis is unavailable or saturated ({type(e).__name__}); retry", field="store")
        return web.json_response(err.to_json(), status=err.status, headers={"Retry-After": "1"})
    except web.HTTPException as e:
        if e.status >= 400:
            return web.json_response({"error": {"code": "http", "message": e.reason}}, status=e.status)
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return web.json_response({"error": {"code": "internal", "message": "internal error; see daemon log"}},
                                 status=500)


def pool_limits(sch: Scheduler, pool: str) -> DeviceLimits:
    devs = sch.pools[pool]
    return DeviceLimits(max_qubits=min(d.limits.max_qubits for d in devs),
                        max_shots=min(d.limits.max_shots for d in devs),
                        max_bindings=min(d.limits.max_bindings for d in devs))


# ----------------------------------------------------------------------------------------------- routes
routes = web.RouteTableDef()


@routes.get("/v1/health")
async def health(request):
    sch = request.app[SCHEDULER]
    status = "draining" if not sch.accepting else "ok" if sch.store_ok and sch.store_writable else "degraded"
    redis = "down" if not sch.store_ok else "ok" if sch.store_writable else "read-only"
    return web.json_response({"status": status, "redis": redis, "version": __version__,
                              "devices": len(sch.devices), "sessions": len(sch.sessions)})


@routes.get("/metrics")
async def metrics(request):
    if not request.app[SCHEDULER].config.metrics_public:
        await require_identity(request)
    return web.Response(body=request.app[SCHEDULER].metrics.render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


@routes.post("/v1/sessions")
async def open_session(request):
    sch = request.app[SCHEDULER]
    body = await json_body(request)
    c = caller(request)
    hooks = request.app[HOOKS]
    if c.uid is not None:
        user, uid = c.user(), c.uid
    elif hooks.identify and request.headers.get("X-Qsched-Munge"):
        uid, user = await hooks.identify(request.headers["X-Qsched-Munge"], "open")
    elif sch.config.trust_tcp:
        user, uid = str(body.get("user", "anonymous")), -1
    else:
        raise Unauthorized("authorization: opening a session over TCP needs a MUNGE credential "
                           "(X-Qsched-Munge) or the local unix socket", field="authorization")
    return await _open(request, body, user=user, uid=uid, admin=c.admin)


async def _open(request, body, *, user: str, uid: int, admin: bool):
    """A session naming a Slurm job must be the caller's running quantum job: the reconciler closes it
    with that job and writes its usage into that job's AdminComment, and the job's account is the one
    it is charged to, whatever the client claims."""
    sch = request.app[SCHEDULER]
    weight = body.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool):
        raise BadRequest("weight: expected a number", field="weight")
    for f in ("pool", "class", "account", "name", "job_id"):       # null means "the default"
        v = body.get(f)
        if f == "job_id" and isinstance(v, int) and not isinstance(v, bool):
            continue
        if v is not None and not isinstance(v, str):
            raise BadRequest(f"{f}: expected a string", field=f)
        if isinstance(v, str) and not _printable(v):
            # names reach admins' terminals (qsched session list) and Slurm's AdminComment
            raise BadRequest(f"{f}: printable characters only (no control characters or lone surrogates)",
                             field=f)
    job_id = "" if body.get("job_id") is None else str(body["job_id"])
    job_account = None
    verify = request.app[HOOKS].verify_job
    if verify and job_id:
        job = await verify(job_id, uid)
        job_account = (job or {}).get("account") or None
    account = session_account(user=user, claimed=body.get("account") or "", job_account=job_account,
                              users=sch.config.users, admin=admin)
    pool = body.get("pool") or next(iter(sch.pools))
    s = await sch.open_session(user=user, uid=uid, pool=pool, cls=body.get("class") or "batch",
                               weight=session_weight(float(weight), admin=admin), account=account,
                               name=body.get("name") or "", job_id=job_id)
    return web.json_response({**s.public(), "token": sch.token_for(s.id)}, status=201)


def _printable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return s.isprintable()


# Admin routes exist only on the admin listener (a 0600 socket; the middleware checks the peer too).
admin_routes = web.RouteTableDef()


@admin_routes.post("/v1/admin/sessions")
async def admin_open(request):
    """Used by the SPANK plugin from slurmstepd: opens the job's session for the job's user."""
    body = await json_body(request)
    for f, types in (("user", str), ("uid", int), ("job_id", (int, str))):
        if not isinstance(body.get(f), types) or isinstance(body.get(f), bool):
            raise BadRequest(f"{f}: required ({'an integer' if f == 'uid' else 'a string'})", field=f)
    # the job's account (from Slurm) is the record: the plugin names none
    return await _open(request, body, user=str(body["user"]), uid=int(body["uid"]), admin=True)


@admin_routes.delete("/v1/admin/sessions/{sid}")
async def admin_close(request):
    sch = request.app[SCHEDULER]
    return web.json_response(await _close(request, sch, request.match_info["sid"]))


@admin_routes.post("/v1/admin/devices/{name}/state")
async def set_device_state(request):
    sch = request.app[SCHEDULER]
    body = await json_body(request)
    state, reason = body.get("state"), body.get("reason", "")
    if not isinstance(state, str) or not isinstance(reason, str) or not _printable(reason) or len(reason) > 200:
        raise BadRequest("state: a string; reason: printable text of at most 200 characters", field="state")
    dev = await sch.set_device_state(request.match_info["name"], state, reason, who=caller(request).user())
    return web.json_response({"name": dev.spec.name, "state": dev.public_state(), "reason": dev.reason})


@admin_routes.post("/v1/admin/devices/{name}/windows")
async def add_window(request):
    """A planned maintenance window: {"start": epoch s, "end": epoch s | null, "reason": text}."""
    sch = request.app[SCHEDULER]
    body = await json_body(request)
    _unknown_fields(body, {"start", "end", "reason"})
    start, end, reason = body.get("start"), body.get("end"), body.get("reason", "")
    for f, v in (("start", start), ("end", end)):
        if not (v is None and f == "end") and (isinstance(v, bool) or not isinstance(v, (int, float))
                                                or not math.isfinite(v)):
            raise BadRequest(f"{f}: epoch seconds", field=f)
    assert isinstance(start, (int, float))
    if not isinstance(reason, str) or not _printable(reason) or len(reason) > 200:
        raise BadRequest("reason: printable text of at most 200 characters", field="reason", limit=200)
    w = await sch.add_window(request.match_info["name"], float(start), None if end is None else float(end), reason,
                             who=caller(request).user())
    return web.json_response(w.to_json(), status=201)


@admin_routes.post("/v1/admin/sessions/{sid}")
async def admin_update_session(request):
    """`qsched session update SID --class C --weight W --hold [--reason R] | --release` (as scontrol
    update / hold / release): logged with the admin who made the change."""
    sch = request.app[SCHEDULER]
    body = await json_body(request)
    _unknown_fields(body, {"class", "weight", "hold", "reason", "release"})
    cls, weight, hold, reason, release = (body.get(k) for k in ("class", "weight", "hold", "reason", "release"))
    if cls is not None and not isinstance(cls, str):
        raise BadRequest("class: expected a class name", field="class")
    if weight is not None and (not isinstance(weight, (int, float)) or isinstance(weight, bool)):
        raise BadRequest("weight: expected a number", field="weight")
    for f, v in (("hold", hold), ("release", release)):
        if v is not None and not isinstance(v, bool):
            raise BadRequest(f"{f}: expected true or false", field=f)
    reason = "" if reason is None else reason
    if not isinstance(reason, str) or not _printable(reason) or len(reason) > 200:
        raise BadRequest("reason: printable text of at most 200 characters", field="reason", limit=200)
    entry = await sch.update_session(request.match_info["sid"], who=caller(request).user(), cls=cls,
                                     weight=None if weight is None else float(weight),
                                     hold=reason if hold else None, release=bool(release))
    return web.json_response(sch.session_view(entry))


def _unknown_fields(body: dict, allowed: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise BadRequest(f"{extra[0]}: unknown field (allowed: {', '.join(sorted(allowed))})", field=extra[0])


@web.middleware
async def admin_only(request, handler):
    if not caller(request).admin:
        raise Forbidden("admin: only root or SlurmUser on the admin socket", field="admin")
    return await handler(request)


async def _close(request, sch, sid):
    record = await sch.close_session(sid)
    on_close = request.app[HOOKS].on_close
    if on_close:
        await on_close(record)
    return record


@routes.get("/v1/sessions")
async def list_sessions(request):
    sch = request.app[SCHEDULER]
    c = await require_identity(request)
    users = visible_users(request, c)
    if c.admin:
        entries = list(sch.sessions.values())
    elif c.uid is not None:
        entries = [e for e in sch.sessions.values() if e.session.uid == c.uid]
    else:                 # a bearer token names one session: no per-session HMAC for whoever asks
        sid = sch.session_for_token(c.token) if c.token else None
        entries = [sch.sessions[sid]] if sid in sch.sessions else []
    if users is not None:
        entries = [e for e in entries if e.session.user in users]
    return web.json_response({"sessions": [sch.session_view(e) for e in entries]})


async def require_identity(request: web.Request) -> Caller:
    """A local user (peer uid), a MUNGE-proven uid, an admin, or a session's bearer token; over TCP
    nothing else is answered (an anonymous listing is a 401, never an empty list)."""
    c = await identify(request, "list")
    if c.uid is None and not c.admin and not (c.token and request.app[SCHEDULER].session_for_token(c.token)):
        raise Unauthorized("authorization: this needs the local unix socket, a MUNGE credential (X-Qsched-Munge; "
                           "is munged running on this host?) or a session token", field="authorization")
    return c


async def _session_entry(request, purpose: str | None = None):
    """purpose: this route also takes a MUNGE credential for it over TCP (else a token or the socket)."""
    sch = request.app[SCHEDULER]
    entry = sch.session(request.match_info["sid"])
    authorize(request, entry.session, await identify(request, purpose) if purpose else None)
    return sch, entry


@routes.get("/v1/sessions/{sid}")
async def get_session(request):
    sch, entry = await _session_entry(request, "list")
    usage = await sch.store.session_usage(entry.session.id)
    return web.json_response({**sch.session_view(entry), "usage": usage.__dict__})


@routes.post("/v1/sessions/{sid}/attach")
async def attach(request):
    """Inside a Slurm job: prove identity (MUNGE or peer uid) and get a token for the job's session."""
    sch = request.app[SCHEDULER]
    entry = sch.session(request.match_info["sid"])
    c = caller(request)
    uid = c.uid
    if uid is None and request.app[HOOKS].identify and request.headers.get("X-Qsched-Munge"):
        uid, _ = await request.app[HOOKS].identify(request.headers["X-Qsched-Munge"], "attach")
    if uid is None:
        raise Unauthorized("authorization: attach needs a MUNGE credential or the local unix socket",
                           field="authorization")
    if uid != entry.session.uid and uid not in sch.config.admin_uids:
        raise Forbidden(f"session: {entry.session.id} belongs to another user", field="session")
    return web.json_response({**entry.session.public(), "token": sch.token_for(entry.session.id)})


@routes.delete("/v1/sessions/{sid}")
async def close_session(request):
    sch, entry = await _session_entry(request, "close")
    return web.json_response(await _close(request, sch, entry.session.id))


@routes.post("/v1/sessions/{sid}/templates")
async def upload_template(request):
    sch, entry = await _session_entry(request)
    limit = pool_limits(sch, entry.session.pool)
    raw = await read_body(request)
    if request.content_type == "application/json":
        try:
            text = json.loads(raw)["qasm3"]
        except (ValueError, KeyError, TypeError):
            text = None
        if not isinstance(text, str):
            raise BadRequest("qasm3: expected {\"qasm3\": \"OPENQASM 3.0; ...\"}", field="qasm3")
        kind, data = "qasm3", text.encode(errors="replace")
    else:
        if not raw:
            raise BadRequest("template: empty body; send QPY bytes", field="template")
        kind, data = "qpy", raw
    cfg = sch.config
    qpy, info = await request.app[PARSER].parse(kind, data, Limits(
        max_qubits=limit.max_qubits, max_clbits=cfg.max_template_clbits,
        max_instructions=cfg.max_template_instructions, max_parameters=cfg.max_template_parameters))
    digest = wire.digest(qpy)
    await _check_runnable(sch, info, entry.session.pool, "template")
    await sch.templates.add(digest, qpy, info)      # (re)written: an upload also renews its expiry
    sch.session(entry.session.id)                   # active until now: parsing can take seconds
    return web.json_response({"hash": digest, **info}, status=201)


@routes.get("/v1/templates/{digest}")
async def get_template(request):
    await require_identity(request)
    sch = request.app[SCHEDULER]
    info = await _template_info(sch, request.match_info["digest"], "template")
    return web.json_response({"hash": request.match_info["digest"], **info})


async def _check_runnable(sch, info: dict, pool: str, field: str) -> None:
    """Refuse now what the pool's devices say they cannot run, rather than fail the task later."""
    unsupported = await sch.unsupported(pool)
    for name in info.get("instructions", ()):
        if name in unsupported:
            raise BadRequest(f"{field}: instruction {name!r} cannot run on pool {pool!r} (device "
                             f"{unsupported[name]}); use another pool or remove it", field=field)


async def _template_info(sch, digest, field):
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


async def parse_task(sch, sid, entry, obj, field, limit: DeviceLimits):
    if not isinstance(obj, dict):
        raise BadRequest(f"{field}: expected an object", field=field)
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise BadRequest(f"{field}.kind: one of {', '.join(sorted(KINDS))}", field=f"{field}.kind")
    info = await _template_info(sch, obj.get("template"), f"{field}.template")
    await _check_runnable(sch, info, entry.session.pool, f"{field}.template")
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
        raise BadRequest(f"{field}.shots: must be an integer in 1..{limit.max_shots}, got {shots!r}",
                         field=f"{field}.shots", limit=limit.max_shots)
    if kind == "sample" and shots is None:
        raise BadRequest(f"{field}.shots: sample tasks need shots", field=f"{field}.shots")
    observables = "[]"
    if kind != "sample":
        raw_obs = obj.get("observables")
        if isinstance(raw_obs, list) and all(isinstance(o, list) for o in raw_obs):
            _check_terms(sum(len(o) for o in raw_obs), sch.config.max_terms_per_task, field)   # before the walk
        checked = wire.check_observables(raw_obs, info["num_qubits"], f"{field}.observables")
        _check_terms(sum(len(o) for o in checked), sch.config.max_terms_per_task, field)
        observables = json.dumps(checked)
    method = obj.get("method")
    if not (method is None or isinstance(method, str)) or method not in METHODS or (method and kind != "gradient"):
        raise BadRequest(f"{field}.method: gradient tasks take 'adjoint' or 'parameter-shift'",
                         field=f"{field}.method")
    t = Task(sch.new_task_id(sid), sid, kind, obj["template"], params.shape[0], shots, 0, 0.0, method=method)
    return t, observables, params.tobytes()


@routes.post("/v1/sessions/{sid}/tasks")
async def submit(request):
    sch, entry = await _session_entry(request)
    cap = sch.config.max_terms_per_request
    body = await json_body(request, max_terms=cap)
    many = "tasks" in body
    raw = body["tasks"] if many else [body]
    if not isinstance(raw, list) or not raw:
        raise BadRequest("tasks: expected a non-empty list", field="tasks")
    limit = pool_limits(sch, entry.session.pool)
    items = [await parse_task(sch, entry.session.id, entry, obj, f"tasks[{i}]" if many else "task", limit)
             for i, obj in enumerate(raw)]
    terms = sum(len(o) for (t, _, _), obj in zip(items, raw) if t.kind != "sample" for o in obj["observables"])
    if terms > cap:
        raise PayloadTooLarge(f"observables: {terms} Pauli terms in one request, at most "
                              f"daemon.max_terms_per_request = {cap}; send fewer tasks per request",
                              field="observables", limit=cap)
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY):
        raise BadRequest(f"idempotency_key: expected a string of 1..{MAX_IDEMPOTENCY_KEY} characters",
                         field="idempotency_key", limit=MAX_IDEMPOTENCY_KEY)
    ids, new = await sch.submit(entry.session.id, items, key)
    status = 201 if new else 200              # 200: a retry of an accepted submission, nothing new
    wait = _wait_arg(request)
    if wait:
        ready = await sch.wait(ids, wait)
        return await _tasks_response(request, ids, status=status, extra={"ids": ids}, ready=ready)
    return web.json_response({"ids": ids}, status=status)


def _wait_arg(request) -> float:
    try:
        wait = float(request.query.get("wait", 0))
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait):
        raise BadRequest("wait: expected seconds", field="wait")
    return min(MAX_WAIT_S, max(0.0, wait))


async def _authorize_task(request, sch, tid: str):
    if not _TASK_ID.fullmatch(tid):
        raise NotFound(f"task: no task {tid[:80]!r}", field="task")
    sid = tid.split(".", 1)[0]
    entry = sch.sessions.get(sid)
    session = entry.session if entry else await sch.store.get_session(sid)
    if session is None:
        raise NotFound(f"task: no task {tid!r}", field="task")
    authorize(request, session)


async def _tasks_response(request, tids, *, status=200, extra=None, ready=None):
    """Results are stored as JSON fragments; splice them in without decoding (they can be large).
    `ready` holds results that came inline with completion events: no need to read them again. Large
    ones are read only within the AnswerBudget (answers.py)."""
    sch = request.app[SCHEDULER]
    ready = ready or {}
    missing = [t for t in tids if t not in ready]
    reserved = 0
    if missing and (size := sum(await sch.store.result_sizes(missing))) > STREAM_ABOVE:
        # held twice while the body is built (Redis's copy and the body), once while it is sent
        reserved = await request.app[ANSWERS].reserve(2 * size, sch.config.body_timeout_s)
    try:
        resp = await _splice(sch, tids, ready, missing, status, extra)
    except BaseException:
        await request.app[ANSWERS].release(reserved)
        raise
    resp[RESERVED] = reserved
    return resp


async def _splice(sch, tids, ready, missing, status, extra) -> web.Response:
    found = dict(zip(missing, await sch.store.results(missing))) if missing else {}
    head = json.dumps(extra)[:-1].encode() + b',' if extra else b'{'
    out: list = [head, b'"tasks":[']          # one join: a large result is copied once, into the body
    for i, tid in enumerate(tids):
        if i:
            out.append(b",")
        res = ready.get(tid) or found.get(tid)
        if res is not None:
            state = TaskState.DONE.value if res.startswith(b'{"result"') else TaskState.FAILED.value
            out += [b'{"id":"', tid.encode(), b'","state":"', state.encode(), b'",', memoryview(res)[1:]]
            continue
        t = sch.tasks.get(tid)
        if t is not None:
            state, error = t.state.value, None
            if t.state == TaskState.SCHEDULED and t.batch in await _running(sch, t.batch):
                state = TaskState.RUNNING.value
        else:
            state, error = await sch.store.task_fields(tid, "state", "error")
            if state is None:
                raise NotFound(f"task: no task {tid!r}", field="task")
        d = {"id": tid, "state": state}
        if error:
            d["error"] = {"code": "task_failed", "message": error}
        out.append(json.dumps(d).encode())
    out.append(b"]}")
    return web.Response(body=b"".join(out), status=status, content_type="application/json")


async def _running(sch, bid: str) -> set[str]:
    """A scheduled task is RUNNING once its device's worker has taken its batch."""
    for dev in sch.devices.values():
        if bid in dev.outstanding:
            return await sch.store.running_batch_ids(dev.spec.name)
    return set()


@routes.get("/v1/tasks/{tid}")
async def get_task(request):
    sch = request.app[SCHEDULER]
    tid = request.match_info["tid"]
    await _authorize_task(request, sch, tid)
    wait = _wait_arg(request)
    ready = await sch.wait([tid], wait) if wait else None
    resp = await _tasks_response(request, [tid], ready=ready)
    resp.body = resp.body[len(b'{"tasks":['):-2]        # one task: unwrap the list
    return resp


@routes.post("/v1/tasks/wait")
async def wait_tasks(request):
    sch = request.app[SCHEDULER]
    body = await json_body(request)
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > 100_000:
        raise BadRequest("ids: expected a list of at most 100000 task ids", field="ids", limit=100_000)
    for sid in {i.split(".", 1)[0] for i in ids}:
        await _authorize_task(request, sch, sid + ".x")
    timeout = body.get("timeout", 0)
    if not isinstance(timeout, (int, float)) or timeout < 0:
        raise BadRequest("timeout: expected seconds >= 0", field="timeout")
    ready = await sch.wait(ids, min(float(timeout), MAX_WAIT_S))
    return await _tasks_response(request, ids, ready=ready)


@routes.delete("/v1/tasks/{tid}")
async def cancel_task(request):
    sch = request.app[SCHEDULER]
    tid = request.match_info["tid"]
    await _authorize_task(request, sch, tid)
    return web.json_response({"id": tid, "state": await sch.cancel(tid)})


@routes.get("/v1/acct")
async def accounting(request):
    """The usage ledger (one record per closed session): a user sees their own, an admin everyone's."""
    sch = request.app[SCHEDULER]
    c = await identify(request, "list")
    try:
        since = float(request.query.get("since", 0))
        limit = int(request.query.get("limit", 10_000))
    except ValueError:
        raise BadRequest("since/limit: expected numbers", field="since") from None
    if not math.isfinite(since) or not 1 <= limit <= 100_000:
        raise BadRequest("since/limit: since a finite Unix time, limit in 1..100000", field="since", limit=100_000)
    wanted = {f: request.query[f] for f in ("account", "session", "job_id") if request.query.get(f)}
    if not c.admin and c.uid is None:
        raise Unauthorized("authorization: the ledger is read over the unix socket or with a MUNGE credential "
                           "(X-Qsched-Munge)", field="authorization")
    users = visible_users(request, c)          # a user sees only their own records
    if users is None and not c.admin:
        users = {c.user()}
    rows = await sch.store.accounting(
        since, limit, newest_first=request.query.get("order") == "desc",
        match=lambda r: all(str(r.get(f, "")) == v for f, v in wanted.items())
        and (users is None or str(r.get("user", "")) in users))
    return web.json_response({"records": rows})


@routes.get("/v1/devices")
async def devices(request):
    await require_identity(request)
    sch = request.app[SCHEDULER]
    out = []
    heartbeats = await sch.store.heartbeats(list(sch.devices))
    for (name, d), hb in zip(sch.devices.items(), heartbeats):
        lim = d.spec.limits
        out.append({"name": name, "type": d.spec.type, "pool": d.spec.pool, "up": hb is not None,
                    "state": d.public_state(), "reason": d.reason, "state_since": d.since or None,
                    "outstanding": len(d.outstanding), "max_qubits": lim.max_qubits, "max_shots": lim.max_shots,
                    "max_bindings": lim.max_bindings,
                    "windows": [w.to_json() for w in sch.windows_of(d)],
                    "worker_rss_mb": round(hb["rss_bytes"] / 2**20) if hb and "rss_bytes" in hb else None,
                    "worker": hb})
    return web.json_response({"devices": out})


@routes.get("/v1/share")
async def share(request):
    """As sshare: every account and user with shares, decayed usage and fair-share factor."""
    await require_identity(request)
    return web.json_response({"shares": request.app[SCHEDULER].share_view()})


@routes.get("/v1/prio")
async def prio(request):
    """As sprio: the priority factors of each backlogged session (users see their own, admins all)."""
    sch = request.app[SCHEDULER]
    c = await require_identity(request)
    mine = {sid for sid, e in sch.sessions.items() if c.admin or (c.uid is not None and c.uid == e.session.uid)
            or (c.token and sch.session_for_token(c.token) == sid)}
    return web.json_response({"sessions": [r for r in sch.prio_view() if r["id"] in mine]})


@routes.get("/v1/policy")
async def policy(request):
    """The effective policy: every weight, class, limit and quota."""
    await require_identity(request)
    return web.json_response(request.app[SCHEDULER].policy_view())


@routes.get("/v1/queue")
async def queue(request):
    sch = request.app[SCHEDULER]
    c = await require_identity(request)
    users = visible_users(request, c)
    pools = {}
    for pool, devs in sch.pools.items():
        pools[pool] = {"devices": [d.name for d in devs],
                       "pending": sum(len(e.pending) for e in sch.sessions.values() if e.session.pool == pool),
                       "running": sum(len(sch.devices[d.name].outstanding) for d in devs)}
    sessions = [sch.session_view(e) for e in sch.sessions.values()
                if (c.admin or c.uid == e.session.uid) and (users is None or e.session.user in users)]
    return web.json_response({"policy": sch.policy.name, "pools": pools, "sessions": sessions})


def make_app(sch: Scheduler, *, admin: bool = False, hooks: SlurmIntegration | None = None,
             parser: TemplateParser | None = None, answers: AnswerBudget | None = None) -> web.Application:
    middlewares = [errors_middleware, admin_only] if admin else [errors_middleware]
    app = web.Application(client_max_size=sch.config.max_body_bytes, middlewares=middlewares)
    app[SCHEDULER] = sch
    app[ADMIN] = admin
    app[HOOKS] = hooks if hooks is not None else SlurmIntegration()
    app[PARSER] = parser or TemplateParser(timeout_s=sch.config.parse_timeout_s,
                                           memory_bytes=sch.config.parse_memory_bytes)
    app[ANSWERS] = answers or AnswerBudget(sch.config.max_answer_bytes)
    app.add_routes(routes)
    if admin:
        app.add_routes(admin_routes)
    else:
        app.router.add_route("*", "/v1/admin/{tail:.*}", not_admin_listener)
    return app


async def not_admin_listener(request):
    """An admin route asked on the user listener: not here (404, as before), and the answer says where."""
    raise NotFound("admin: admin requests go to the admin socket (daemon.admin_socket), for root or SlurmUser "
                   "only", field="admin")
