"""Who is asking, and may they: the caller's identity (peer uid on the unix socket, a MUNGE-proven uid
over TCP, a session's bearer token) and the checks every route makes with it."""
from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import Forbidden, NotFound, Unauthorized
from ..models import Session
from .connections import peer_uid
from .http import ADMIN, HOOKS, SCHEDULER

_TASK_ID = re.compile(r"[0-9a-f]{1,32}\.[0-9a-z]{1,32}")
_SESSION_ID = re.compile(r"[0-9a-f]{1,32}")


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


def _is_admin(request: web.Request, uid: int | None) -> bool:
    return uid is not None and uid in request.app[SCHEDULER].config.admin_uids \
        and (request.app[ADMIN] or uid == os.geteuid())


def caller(request: web.Request) -> Caller:
    uid = peer_uid(request.transport)
    auth = request.headers.get("Authorization", "")
    token = auth[7:].strip() if auth.startswith("Bearer ") else None
    return Caller(uid, token, _is_admin(request, uid))


async def munge_uid(request: web.Request, purpose: str) -> tuple[int, str] | None:
    """(uid, user) a MUNGE credential minted for `purpose` proves, if the request carries one and this
    daemon can verify it. Once per request: munged refuses the same credential twice."""
    cred = request.headers.get("X-Qsched-Munge")
    hook = request.app[HOOKS].identify
    if not cred or hook is None:
        return None
    return await hook(cred, purpose)


async def identify(request: web.Request, purpose: str) -> Caller:
    """caller(), where over TCP a MUNGE credential minted for `purpose` names the uid (a listing or a
    close from a login node)."""
    c = caller(request)
    if c.uid is None and request.headers.get("X-Qsched-Munge"):
        if request.app[HOOKS].identify is None:
            raise Unauthorized("authorization: this daemon cannot verify MUNGE credentials (munged does not "
                               "answer on its host; see slurm.munge_socket)", field="authorization")
        proved = await munge_uid(request, purpose)
        assert proved is not None
        c = Caller(proved[0], c.token, _is_admin(request, proved[0]))
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


def credentials(request: web.Request, c: Caller | None = None) -> Caller:
    """caller() (or c), refused when it shows no credential at all: before its body is read."""
    c = c or caller(request)
    if c.uid is None and not c.token:
        raise Unauthorized("authorization: a session token (Authorization: Bearer ...), a MUNGE credential "
                           "(X-Qsched-Munge) or the local unix socket is required", field="authorization")
    return c


def authorize(request: web.Request, session: Session, c: Caller | None = None) -> Caller:
    c = credentials(request, c)
    if c.admin or (c.uid is not None and c.uid == session.uid):
        return c
    if c.token and request.app[SCHEDULER].check_token(session.id, c.token):
        return c
    raise Forbidden(f"session: {session.id} belongs to another user", field="session")


async def authorize_session(request: web.Request, sid: str) -> None:
    """The caller may see session `sid`'s tasks (open, or closed and still in the store)."""
    sch = request.app[SCHEDULER]
    session = None
    if _SESSION_ID.fullmatch(sid):
        entry = sch.sessions.get(sid)
        session = entry.session if entry else await sch.store.get_session(sid)
    if session is None:
        raise NotFound(f"task: no session {sid[:80]!r}", field="task")
    authorize(request, session)


async def authorize_task(request: web.Request, tid: str) -> None:
    if not _TASK_ID.fullmatch(tid):
        raise NotFound(f"task: no task {tid[:80]!r}", field="task")
    await authorize_session(request, tid.split(".", 1)[0])


async def require_identity(request: web.Request) -> Caller:
    """A local user (peer uid), a MUNGE-proven uid, an admin, or a session's bearer token; over TCP
    nothing else is answered (an anonymous listing is a 401, never an empty list)."""
    c = await identify(request, "list")
    if c.uid is None and not c.admin and not (c.token and request.app[SCHEDULER].session_for_token(c.token)):
        raise Unauthorized("authorization: this needs the local unix socket, a MUNGE credential (X-Qsched-Munge; "
                           "is munged running on this host?) or a session token", field="authorization")
    return c


@web.middleware
async def admin_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The admin listener's gate (its socket is 0600 too): root or SlurmUser only."""
    if not caller(request).admin:
        raise Forbidden("admin: only root or SlurmUser on the admin socket", field="admin")
    return await handler(request)
