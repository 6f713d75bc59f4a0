"""Who a session belongs to and what it is charged as: pure rules, tested without a daemon.

The account comes from the scheduler of record, never from the client's claim: the Slurm job's account
when the session belongs to a job, else the user's Slurm accounts (so a session without a job is still
bound by its person's account quota), else the config's `users:` mapping, else the user's own name. A
client may name an account only if it is one of those; admins may name any."""
from __future__ import annotations

from ..errors import Forbidden


def session_account(*, user: str, claimed: str, job_account: str | None, users: dict[str, list[str]],
                    admin: bool, slurm_accounts: list[str] | None = None) -> str:
    allowed = [job_account] if job_account else (slurm_accounts or users.get(user) or [user])
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


def check_slurm_job(*, pool: str, cls: str, pool_requires: bool, class_requires: bool, job_verified: bool,
                    admin: bool) -> None:
    """policy.pools.NAME / policy.classes.NAME require_slurm_job: such a session must belong to a Slurm job
    verified through Slurm (so its quantum time is inside Slurm's accounting and limits); admins are exempt."""
    if admin or job_verified or not (pool_requires or class_requires):
        return
    where = f"pool {pool!r}" if pool_requires else f"class {cls!r}"
    raise Forbidden(f"job_id: sessions of {where} need the caller's running Slurm job, verified through Slurm "
                    f"(require_slurm_job); open it from inside the job", field="job_id")
