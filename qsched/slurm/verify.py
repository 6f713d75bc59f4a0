"""Binding sessions to Slurm jobs: may this uid open (or attach to) a session for this job?"""
from __future__ import annotations

import re

from ..errors import BadRequest, Conflict, Forbidden, NotFound
from .adapter import SlurmAdapter
from .jobs import JobInfo

# a job whose allocation is being set up (cloud nodes) counts as starting, not ended
OPENABLE_STATES = frozenset({"RUNNING", "CONFIGURING"})


def parse_job_id(job_id) -> int:
    """'123', 123 -> 123; array/het forms ('123_4', '123+1') are refused: sessions bind to a plain id."""
    if isinstance(job_id, bool):
        raise BadRequest("job_id must be a positive integer", field="job_id")
    text = str(job_id).strip()
    # digits only: int() would also take "12_3" (= 123), "+5" and " 7 "
    if not re.fullmatch(r"[0-9]{1,10}", text):
        raise BadRequest(f"job_id must be a positive integer, got {job_id!r}", field="job_id")
    n = int(text)
    if n <= 0 or n >= 2 ** 32:
        raise BadRequest(f"job_id out of range: {n}", field="job_id", limit=2 ** 32 - 1)
    return n


def verify_job_for_session(adapter: SlurmAdapter, job_id, uid: int, *, require_qpu: bool = True) -> JobInfo:
    """The job exists, is RUNNING, belongs to `uid`, and asked for quantum access (GRES, license or
    --qpu). Returns its JobInfo. Raises BadRequest (bad id), NotFound (Slurm does not know it),
    Conflict (not running), Forbidden (another user's job, or no quantum request), SlurmError
    (Slurm cannot be asked: a 503, the caller may retry)."""
    jid = parse_job_id(job_id)
    job = adapter.job(jid)
    if job is None:
        raise NotFound(f"Slurm job {jid} does not exist", field="job_id")
    # ownership before state: do not tell a stranger whether someone else's job is running
    if int(job.uid) != int(uid):
        raise Forbidden(f"Slurm job {jid} does not belong to uid {uid}", field="job_id")
    if job.state not in OPENABLE_STATES:
        raise Conflict(f"Slurm job {jid} is {job.state}, not RUNNING", field="job_id")
    if require_qpu and not job.wants_qpu:
        raise Forbidden(f"Slurm job {jid} did not ask for quantum access "
                        "(--gres=qpu:N, -L qpu:N or --qpu)", field="job_id")
    return job


def job_facts(job: JobInfo) -> dict:
    """What the scheduler of record says about a verified job, for the session opened for it: the
    account is Slurm's (`sbatch -A`, or the user's default association), never the client's claim.
    Without slurmdbd Slurm keeps whatever -A named, unchecked; '' when the job has none."""
    return {"account": job.account or "", "user": job.user, "uid": int(job.uid), "job_id": str(job.job_id),
            "name": job.name or ""}
