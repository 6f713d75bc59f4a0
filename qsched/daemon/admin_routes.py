"""Routes that exist only on the admin listener (a 0600 socket; auth.admin_only checks the peer too)."""
from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest
from .auth import caller
from .http import SCHEDULER, SMALL_BODY, json_body
from .routes import close, open_for
from .validate import device_state_request, session_update, window_request

admin_routes = web.RouteTableDef()


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
