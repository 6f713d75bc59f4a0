"""The user listener's routes: each handler checks who asks (auth.py) and what (validate.py), then
hands over to the scheduler; answers with task results are built in results.py."""
from __future__ import annotations

import json
import math

from aiohttp import web

from .. import __version__, wire
from ..errors import BadRequest, Forbidden, NotFound, Unauthorized, Unavailable
from .auth import (authorize, authorize_session, authorize_task, caller, credentials, identify, munge_uid,
                   require_identity, visible_users)
from .http import HOOKS, PARSER, SCHEDULER, SMALL_BODY, WAIT_BODY, json_body, read_body
from .identity import check_slurm_job, session_account, session_weight
from .parsing import Limits
from .results import task_response, tasks_response
from . import replay
from .validate import (MAX_NAME, check_runnable, estimate_request, idempotency_key, parse_submission, pool_limits,
                       session_request, template_info, text, wait_request, wait_seconds)

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
    """The caller is known before the body is read, and the body is small."""
    c = caller(request)
    proved = None if c.uid is not None else await munge_uid(request, "open")
    if c.uid is None and proved is None and not request.app[SCHEDULER].config.trust_tcp:
        raise Unauthorized("authorization: opening a session over TCP needs a MUNGE credential "
                           "(X-Qsched-Munge) or the local unix socket", field="authorization")
    body = await json_body(request, max_bytes=SMALL_BODY)
    if c.uid is not None:
        user, uid = c.user(), c.uid
    elif proved is not None:
        uid, user = proved
    else:                     # trust_tcp: the client names itself
        user, uid = str(body.get("user", "anonymous")), -1
    return await open_for(request, body, user=user, uid=uid, admin=c.admin)


async def open_for(request, body: dict, *, user: str, uid: int, admin: bool):
    """A session naming a Slurm job must be the caller's running quantum job: the reconciler closes it
    with that job and writes its usage into that job's AdminComment, and the job's account is the one
    it is charged to, whatever the client claims."""
    sch = request.app[SCHEDULER]
    req = session_request(body)
    pool, cls = req["pool"] or next(iter(sch.pools)), req["class"] or "batch"
    job_account, job_name, slurm_accounts = None, "", None
    hooks = request.app[HOOKS]
    if hooks.verify_job and req["job_id"]:
        job = await hooks.verify_job(req["job_id"], uid) or {}
        # a session the plugin opens is named after its job, as squeue shows it (it listed as '-')
        job_account, job_name = job.get("account") or None, str(job.get("name") or "")[:MAX_NAME]
    policy = sch.policy.cfg
    check_slurm_job(pool=pool, cls=cls, pool_requires=policy.pool_spec(pool).require_slurm_job,
                    class_requires=policy.class_spec(cls).require_slurm_job,
                    job_verified=bool(hooks.verify_job and req["job_id"]), admin=admin)
    if job_account is None and hooks.user_accounts:
        try:
            slurm_accounts = await hooks.user_accounts(user)
        except Unavailable:
            if policy.quotas:       # charging the user's own name would escape the account's quota
                raise
    account = session_account(user=user, claimed=req["account"] or "", job_account=job_account,
                              users=sch.config.users, admin=admin, slurm_accounts=slurm_accounts)
    s = await sch.open_session(user=user, uid=uid, pool=pool,
                               cls=cls, weight=session_weight(req["weight"], admin=admin),
                               account=account, name=req["name"] or job_name, job_id=req["job_id"],
                               resume=req["resume"] or "")
    return web.json_response({**s.public(), "token": sch.token_for(s.id)}, status=201)


async def close(request, sid: str) -> dict:
    record = await request.app[SCHEDULER].close_session(sid)
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


@routes.get("/v1/sessions/{sid}/estimate")
async def session_estimate(request):
    """When the session's work is predicted to run (the dispatcher's planning run forward)."""
    sch, entry = await _session_entry(request, "list")
    return web.json_response(sch.views.session_estimate(entry))


@routes.post("/v1/sessions/{sid}/attach")
async def attach(request):
    """Inside a Slurm job: prove identity (MUNGE or peer uid) and get a token for the job's session."""
    sch = request.app[SCHEDULER]
    entry = sch.session(request.match_info["sid"])
    uid = caller(request).uid
    if uid is None and (proved := await munge_uid(request, "attach")) is not None:
        uid = proved[0]
    if uid is None:
        raise Unauthorized("authorization: attach needs a MUNGE credential or the local unix socket",
                           field="authorization")
    if uid != entry.session.uid and uid not in sch.config.admin_uids:
        raise Forbidden(f"session: {entry.session.id} belongs to another user", field="session")
    return web.json_response({**entry.session.public(), "token": sch.token_for(entry.session.id)})


@routes.post("/v1/sessions/{sid}/resume")
async def resume(request):
    """{"resume": KEY}: the job's session replays (and records) under a resume key (daemon/replay.py)."""
    sch, entry = await _session_entry(request)
    key = text(await json_body(request, max_bytes=SMALL_BODY), "resume", limit=MAX_NAME, default="")
    await replay.resume(sch, entry.session, key or "")
    return web.json_response(sch.session_view(entry))


@routes.delete("/v1/sessions/{sid}")
async def close_session(request):
    _, entry = await _session_entry(request, "close")
    return web.json_response(await close(request, entry.session.id))


@routes.post("/v1/sessions/{sid}/templates")
async def upload_template(request):
    sch, entry = await _session_entry(request)
    limit = pool_limits(sch, entry.session.pool)
    raw = await read_body(request)
    if request.content_type == "application/json":
        try:
            text = json.loads(raw)["qasm3"]
        except (ValueError, KeyError, TypeError, RecursionError):
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
    await check_runnable(sch, info, entry.session.pool, "template")
    await sch.templates.add(digest, qpy, info)      # (re)written: an upload also renews its expiry
    sch.session(entry.session.id)                   # active until now: parsing can take seconds
    return web.json_response({"hash": digest, **info}, status=201)


@routes.get("/v1/templates/{digest}")
async def get_template(request):
    await require_identity(request)
    info = await template_info(request.app[SCHEDULER], request.match_info["digest"], "template")
    return web.json_response({"hash": request.match_info["digest"], **info})


@routes.post("/v1/sessions/{sid}/tasks")
async def submit(request):
    sch, entry = await _session_entry(request)
    body = await json_body(request, max_terms=sch.config.max_terms_per_request)
    items = await parse_submission(sch, entry, body)
    ids, new = await sch.submit(entry.session.id, items, idempotency_key(body))
    status = 201 if new else 200              # 200: a retry of an accepted submission, nothing new
    wait = wait_seconds(request)
    if wait:
        return await tasks_response(request, ids, status=status, extra={"ids": ids}, ready=await sch.wait(ids, wait))
    return web.json_response({"ids": ids}, status=status)


@routes.get("/v1/tasks/{tid}")
async def get_task(request):
    sch = request.app[SCHEDULER]
    tid = request.match_info["tid"]
    await authorize_task(request, tid)
    wait = wait_seconds(request)
    return await task_response(request, tid, await sch.wait([tid], wait) if wait else None)


@routes.post("/v1/tasks/wait")
async def wait_tasks(request):
    credentials(request)
    ids, timeout = wait_request(await json_body(request, max_bytes=WAIT_BODY))
    for sid in {i.split(".", 1)[0] for i in ids}:
        await authorize_session(request, sid)
    return await tasks_response(request, ids, ready=await request.app[SCHEDULER].wait(ids, timeout))


@routes.delete("/v1/tasks/{tid}")
async def cancel_task(request):
    tid = request.match_info["tid"]
    await authorize_task(request, tid)
    return web.json_response({"id": tid, "state": await request.app[SCHEDULER].cancel(tid)})


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
    entries = [e for e in sch.sessions.values()
               if (c.admin or c.uid == e.session.uid) and (users is None or e.session.user in users)]
    sessions = [sch.session_view(e) for e in entries]
    if request.query.get("start") in ("1", "true"):      # as squeue --start: predicted by planning forward
        fc = sch.views.forecast()
        for e, view in zip(entries, sessions):
            when = fc.session(e, sch.tasks)
            view["start"], view["end"] = when["next_start"], when["backlog_end"]
    return web.json_response({"policy": sch.policy.name, "pools": pools, "sessions": sessions})


@routes.get("/v1/estimate")
async def estimate(request):
    """As sbatch --test-only: the pool's backlog and when a new session of the class and account would
    run a task of `bindings` bindings (a what-if: any account may be named)."""
    sch = request.app[SCHEDULER]
    c = await require_identity(request)
    q = estimate_request(dict(request.query))
    user = c.user() if c.uid is not None else ""
    account = session_account(user=user, claimed=q["account"] or "", job_account=None, users=sch.config.users,
                              admin=True)
    return web.json_response(sch.views.pool_estimate(q["pool"] or next(iter(sch.pools)), cls=q["class"] or "batch",
                                                     account=account, user=user, bindings=q["bindings"]))


async def not_admin_listener(request):
    """An admin route asked on the user listener: not here (404, as before), and the answer says where."""
    raise NotFound("admin: admin requests go to the admin socket (daemon.admin_socket), for root or SlurmUser "
                   "only", field="admin")
