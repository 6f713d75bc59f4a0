"""The Slurm reconciler's decision, as a pure function: which open sessions belong to jobs that ended?

The daemon's loop (every ~1 s, so an ended job's session closes within 5 s):

    t0 = time.time()
    jobs = await asyncio.to_thread(adapter.jobs)         # one squeue --json
    refs = [SessionRef(s.id, s.job_id, s.opened_at) for s in open sessions with a job_id]
    for e in ended_sessions(refs, jobs, snapshot_time=t0):
        close session e.session_id (cancel its pending tasks), AdminComment with the usage
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .jobs import JobInfo

# Slurm states in which the job's processes may still use their session
LIVE_STATES = frozenset({"RUNNING", "SUSPENDED", "CONFIGURING", "RESIZING"})


@dataclass(frozen=True)
class SessionRef:
    session_id: str
    job_id: int
    opened_at: float | None = None  # epoch seconds; None: opened long ago


@dataclass(frozen=True)
class EndedSession:
    session_id: str
    job_id: int
    reason: str                     # the job's state (COMPLETED, CANCELLED, PENDING after requeue...) or GONE


def ended_sessions(sessions: Iterable[SessionRef | tuple], jobs: Mapping[int, JobInfo], *,
                   snapshot_time: float | None = None) -> list[EndedSession]:
    """Sessions whose job no longer runs: ended, completing, requeued (back to PENDING: the next run
    gets a new session), or unknown to Slurm (purged after MinJobAge).

    `jobs` must be a complete listing (adapter.jobs()); when Slurm could not be asked do not call this
    at all, or every session would look ended. A session opened after `snapshot_time` is skipped when
    its job is missing: the listing may predate the job."""
    out = []
    for ref in sessions:
        if not isinstance(ref, SessionRef):
            ref = SessionRef(*ref)
        if ref.job_id is None:
            continue  # not a Slurm session (local mode)
        job = jobs.get(int(ref.job_id))
        if job is None:
            if snapshot_time is not None and ref.opened_at is not None and ref.opened_at >= snapshot_time:
                continue
            out.append(EndedSession(ref.session_id, int(ref.job_id), "GONE"))
        elif job.state not in LIVE_STATES:
            out.append(EndedSession(ref.session_id, int(ref.job_id), job.state))
    return out
