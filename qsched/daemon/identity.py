"""Who a session belongs to and what it is charged as: pure rules, tested without a daemon.

The account comes from the scheduler of record, never from the client's claim: the Slurm job's account
when the session belongs to a job, else the config's `users:` mapping, else the user's own name. A
client may name an account only if it is one of those; admins may name any."""
from __future__ import annotations

from ..errors import Forbidden


def session_account(*, user: str, claimed: str, job_account: str | None, users: dict[str, list[str]],
                    admin: bool) -> str:
    allowed = [job_account] if job_account else (users.get(user) or [user])
    if not claimed:
        return allowed[0]
    if claimed in allowed or admin:
        return claimed
    raise Forbidden(f"account: user {user!r} may not use account {claimed!r} (allowed: {', '.join(allowed)})",
                    field="account")


def session_weight(requested: float, *, admin: bool) -> float:
    """A session may lower its own weight; raising it above 1 is for admins."""
    if requested > 1.0 and not admin:
        raise Forbidden(f"weight: a session's own weight above 1 is for admins only, got {requested:g}",
                        field="weight", limit=1.0)
    return requested
