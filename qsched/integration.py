"""The daemon's contract with the site's scheduler of record (Slurm) and its identity service (MUNGE):
qsched.slurm.hooks builds a SlurmIntegration from the config, the daemon (qsched.daemon) calls it. Every
hook is optional: an empty SlurmIntegration() is a daemon without Slurm or MUNGE."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# (credential, purpose: "open" | "attach") -> (uid, user): the X-Qsched-Munge header over TCP
Identify = Callable[[str, str], Awaitable[tuple[int, str]]]
# (job id, uid) -> the job's facts (account, user, uid, job_id): admin open by the SPANK plugin; refuses a
# job that is not RUNNING, not the uid's, or that did not ask for quantum access
VerifyJob = Callable[[str, int], Awaitable[dict]]
# a closed session's usage record -> written to the job's AdminComment
OnClose = Callable[[dict], Awaitable[None]]
# a loop the daemon runs (supervised) with its scheduler: the reconciler, the sshare importer, the mirror
Background = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True)
class SlurmIntegration:
    identify: Identify | None = None
    verify_job: VerifyJob | None = None
    on_close: OnClose | None = None
    background: tuple[Background, ...] = ()
