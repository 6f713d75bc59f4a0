"""A class's access rules and limits (like a Slurm QOS's): pure checks, tested without a daemon.

The scheduler counts (sessions, pending tasks, device time) and calls these at session open and at
submit. A refusal names the class, the limit and its value: 403 for who may use a class and for work
that can never fit (a task or a session larger than the class allows), 409 for limits that depend on
what else is queued now (a retry after other work ends may pass)."""
from __future__ import annotations

from collections.abc import Iterable

from ..config import ClassSpec
from ..errors import Conflict, Forbidden


def may_use(spec: ClassSpec, *, user: str, account: str) -> bool:
    """Everyone when the class lists nobody; else the account is listed or the user is."""
    if not spec.accounts and not spec.users:
        return True
    return account in spec.accounts or user in spec.users


def check_open(spec: ClassSpec, *, user: str, account: str, open_sessions: int) -> None:
    """open_sessions: the user's sessions of this class open now (this one not counted)."""
    if not may_use(spec, user=user, account=account):
        who = [f"accounts {', '.join(spec.accounts)}" if spec.accounts else "",
               f"users {', '.join(spec.users)}" if spec.users else ""]
        raise Forbidden(f"class: class {spec.name!r} is for {' and '.join(w for w in who if w)} only; "
                        f"user {user!r} with account {account!r} may not use it", field="class")
    lim = spec.max_sessions_per_user
    if lim is not None and open_sessions + 1 > lim:
        raise Conflict(f"class: class {spec.name!r} allows max_sessions_per_user={lim}; user {user!r} has "
                       f"{open_sessions} open", field="class.max_sessions_per_user", limit=lim)


def check_submit(spec: ClassSpec, *, user: str, pending_for_user: int, new_tasks: int,
                 task_estimates_s: Iterable[float] = (), session_used_s: float = 0.0) -> None:
    """pending_for_user: the user's pending tasks in sessions of this class; task_estimates_s: the
    estimated device-seconds of each new task (cost model); session_used_s: the device time the
    session has used so far."""
    lim = spec.max_pending_per_user
    if lim is not None and pending_for_user + new_tasks > lim:
        raise Conflict(f"tasks: class {spec.name!r} allows max_pending_per_user={lim}; user {user!r} would have "
                       f"{pending_for_user + new_tasks} pending", field="class.max_pending_per_user", limit=lim)
    est = list(task_estimates_s)
    tlim = spec.max_task_device_s
    if tlim is not None and est and max(est) > tlim:
        raise Forbidden(f"tasks: class {spec.name!r} allows max_task_device_s={tlim:g}; a task is estimated at "
                        f"{max(est):.3g} device-seconds", field="class.max_task_device_s", limit=tlim)
    slim = spec.max_session_device_s
    if slim is not None and session_used_s + sum(est) > slim:
        raise Forbidden(f"tasks: class {spec.name!r} allows max_session_device_s={slim:g}; the session has used "
                        f"{session_used_s:.3g} and these tasks are estimated at {sum(est):.3g} device-seconds",
                        field="class.max_session_device_s", limit=slim)


def needs_estimates(spec: ClassSpec) -> bool:
    return spec.max_task_device_s is not None or spec.max_session_device_s is not None
