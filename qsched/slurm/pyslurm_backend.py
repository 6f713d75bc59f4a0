"""pyslurm backend: job queries and updates through libslurm, no subprocess per call.

Chosen by get_adapter() only when pyslurm imports and matches the installed Slurm (pyslurm 23.2+ API:
pyslurm.Jobs.load(), pyslurm.Job.load(id), job.modify(JobSubmitDescription)). sbatch with passthrough
options stays on the CLI (its argv is the interface users know). Any pyslurm call that fails in a way
that says "wrong API" falls back to the CLI adapter it wraps, so a partial match never breaks the daemon.
"""
from __future__ import annotations

import logging

from .adapter import CliSlurmAdapter, SlurmAdapter, SlurmError
from .jobs import JobInfo, base_state, parse_counts, parse_gres, qpu_request

log = logging.getLogger("qsched.slurm")


def _job_from_pyslurm(j) -> JobInfo:
    licenses_raw = getattr(j, "licenses", None) or ""
    if isinstance(licenses_raw, (list, tuple)):
        licenses_raw = ",".join(licenses_raw)
    elif isinstance(licenses_raw, dict):
        licenses_raw = ",".join(f"{k}:{v}" for k, v in licenses_raw.items())
    gres_raw = getattr(j, "gres_per_node", None) or getattr(j, "tres_per_node", None) or ""
    if isinstance(gres_raw, dict):
        gres = {k.split(":")[0]: int(v) for k, v in gres_raw.items()}
    else:
        gres = parse_gres(str(gres_raw))
    licenses = parse_counts(str(licenses_raw))
    admin_comment = getattr(j, "admin_comment", None) or ""
    return JobInfo(
        job_id=int(j.id),
        state=base_state(getattr(j, "state", "")),
        user=getattr(j, "user_name", "") or "",
        uid=int(j.user_id),
        gid=getattr(j, "group_id", None),
        name=getattr(j, "name", "") or "",
        partition=getattr(j, "partition", "") or "",
        nodes=getattr(j, "nodes", "") or "",
        batch_host=getattr(j, "batch_host", "") or "",
        account=getattr(j, "account", "") or "",
        licenses=licenses,
        gres=gres,
        comment=getattr(j, "comment", "") or "",
        admin_comment=admin_comment,
        reason=getattr(j, "state_reason", "") or "",
        submit_time=getattr(j, "submit_time", None),
        start_time=getattr(j, "start_time", None),
        end_time=getattr(j, "end_time", None),
        exit_code=getattr(j, "exit_code", None),
        qpu=qpu_request(licenses, gres, admin_comment),
    )


class PyslurmAdapter(SlurmAdapter):
    name = "pyslurm"

    def __init__(self, cli: CliSlurmAdapter):
        import pyslurm
        self._ps = pyslurm
        self.cli = cli

    def _fallback(self, what: str, err: Exception):
        log.warning("pyslurm %s failed (%s); using the CLI", what, err)

    def jobs(self) -> dict[int, JobInfo]:
        try:
            loaded = self._ps.Jobs.load()
            items = loaded.values() if hasattr(loaded, "values") else loaded
            return {info.job_id: info for info in map(_job_from_pyslurm, items)}
        except (AttributeError, TypeError) as e:
            self._fallback("Jobs.load", e)
            return self.cli.jobs()
        except Exception as e:  # pyslurm.RPCError and friends: slurmctld trouble
            raise SlurmError(f"pyslurm: {e}") from e

    def job(self, job_id: int) -> JobInfo | None:
        try:
            return _job_from_pyslurm(self._ps.Job.load(int(job_id)))
        except (AttributeError, TypeError) as e:
            self._fallback("Job.load", e)
            return self.cli.job(job_id)
        except Exception as e:
            if "invalid job id" in str(e).lower():
                return None
            raise SlurmError(f"pyslurm: {e}") from e

    def submit(self, script, args=(), *, env=None, cwd=None) -> int:
        return self.cli.submit(script, args, env=env, cwd=cwd)

    def cancel(self, job_id: int, *, signal: str | None = None) -> None:
        if signal:
            return self.cli.cancel(job_id, signal=signal)
        try:
            self._ps.Job(int(job_id)).cancel()
        except (AttributeError, TypeError) as e:
            self._fallback("Job.cancel", e)
            self.cli.cancel(job_id)
        except Exception as e:
            raise SlurmError(f"pyslurm: {e}") from e

    def set_admin_comment(self, job_id: int, text: str) -> None:
        try:
            self._ps.Job(int(job_id)).modify(self._ps.JobSubmitDescription(admin_comment=text))
        except (AttributeError, TypeError) as e:
            self._fallback("Job.modify", e)
            self.cli.set_admin_comment(job_id, text)
        except Exception as e:
            raise SlurmError(f"pyslurm: {e}") from e

    def version(self) -> str:
        return self.cli.version()

    def sshare(self) -> str:
        return self.cli.sshare()

    def reservations(self) -> dict[str, dict[str, int]]:
        return self.cli.reservations()

    def user_accounts(self, user: str) -> list[str]:
        return self.cli.user_accounts(user)

    def scontrol(self, *args: str) -> str:
        return self.cli.scontrol(*args)
