"""Routes that exist only on the admin listener (a 0600 socket; auth.admin_only checks the peer too)."""
from __future__ import annotations

import logging
import time

from aiohttp import web

from ..errors import BadRequest, NotFound
from .auth import caller
from .http import SCHEDULER, SMALL_BODY, json_body
from .routes import close, open_for
from .validate import device_state_request, flag, session_update, window_request

admin_routes = web.RouteTableDef()
log = logging.getLogger("qsched.scheduler")


@admin_routes.post("/v1/admin/sessions")
async def admin_open(request: web.Request) -> web.Response:
    """Used by the SPANK plugin from slurmstepd: opens the job's session for the job's user."""
    body = await json_body(request, max_bytes=SMALL_BODY)
    for f, types in (("user", str), ("uid", int), ("job_id", (int, str))):
        if not isinstance(body.get(f), types) or isinstance(body.get(f), bool):
            raise BadRequest(f"{f}: required ({'an integer' if f == 'uid' else 'a string'})", field=f)
    # the job's account (from Slurm) is the record: the plugin names none
    return await open_for(request, body, user=str(body["user"]), uid=int(body["uid"]), admin=True)


@admin_routes.delete("/v1/admin/sessions/{sid}")
async def admin_close(request: web.Request) -> web.Response:
    return web.json_response(await close(request, request.match_info["sid"]))


@admin_routes.post("/v1/admin/devices/{name}/state")
async def set_device_state(request: web.Request) -> web.Response:
    state, reason = device_state_request(await json_body(request, max_bytes=SMALL_BODY))
    dev = await request.app[SCHEDULER].set_device_state(request.match_info["name"], state, reason,
                                                        who=caller(request).user())
    return web.json_response({"name": dev.spec.name, "state": dev.public_state(), "reason": dev.reason})


@admin_routes.post("/v1/admin/devices/{name}/windows")
async def add_window(request: web.Request) -> web.Response:
    """A planned maintenance window: {"start": epoch s, "end": epoch s | null, "reason": text}."""
    start, end, reason = window_request(await json_body(request, max_bytes=SMALL_BODY))
    w = await request.app[SCHEDULER].add_window(request.match_info["name"], start, end, reason,
                                                who=caller(request).user())
    return web.json_response(w.to_json(), status=201)


@admin_routes.post("/v1/admin/sessions/{sid}")
async def admin_update_session(request: web.Request) -> web.Response:
    """`qsched session update SID --class C --weight W --hold [--reason R] | --release` (as scontrol
    update / hold / release): logged with the admin who made the change."""
    sch = request.app[SCHEDULER]
    u = session_update(await json_body(request, max_bytes=SMALL_BODY))
    entry = await sch.update_session(request.match_info["sid"], who=caller(request).user(), cls=u["cls"],
                                     weight=u["weight"], hold=u["reason"] if u["hold"] else None,
                                     release=bool(u["release"]))
    return web.json_response(sch.session_view(entry))


def _record(request: web.Request) -> str:
    """/v1/admin/replay/{kind}/{key}: a job's record (kind job) or a resume key's (kind resume)."""
    kind, key = request.match_info["kind"], request.match_info["key"]
    if kind not in ("job", "resume"):
        raise BadRequest(f"kind: 'job' or 'resume', got {kind!r}", field="kind")
    return f"{kind}:{key}"


@admin_routes.get("/v1/admin/replay/{kind}/{key}")
async def replay_record(request: web.Request) -> web.Response:
    """A replay record's owner, entries and bytes (daemon/replay.py)."""
    info = await request.app[SCHEDULER].store.replay_info(_record(request))
    if not info:
        raise NotFound(f"record: no replay record {_record(request)!r}", field="record")
    return web.json_response({"record": _record(request), **info})


@admin_routes.delete("/v1/admin/replay/{kind}/{key}")
async def purge_replay_record(request: web.Request) -> web.Response:
    """Purge a record: the job's next session replays nothing and records afresh."""
    sch, name = request.app[SCHEDULER], _record(request)
    if not await sch.store.replay_purge(name):
        raise NotFound(f"record: no replay record {name!r}", field="record")
    log.warning("replay record %s purged by %s", name, caller(request).user())
    return web.json_response({"record": name, "purged": True})


@admin_routes.post("/v1/admin/replay/pools/{pool}")
async def set_pool_replay(request: web.Request) -> web.Response:
    """{"enabled": false}: sessions opened on the pool from now on get no replay record; true: back on."""
    sch, pool = request.app[SCHEDULER], request.match_info["pool"]
    enabled = flag(await json_body(request, max_bytes=SMALL_BODY), "enabled")
    if pool not in sch.pools:
        raise NotFound(f"pool: unknown pool {pool!r} (pools: {', '.join(sorted(sch.pools))})", field="pool")
    if enabled is None:
        raise BadRequest("enabled: expected true or false", field="enabled")
    who = caller(request).user()
    await sch.store.set_replay_off(pool, None if enabled else f"turned off by {who} at {time.time():.0f}")
    log.warning("replay on pool %s turned %s by %s", pool, "on" if enabled else "off", who)
    return web.json_response({"pool": pool, "replay": enabled})
