"""Slurm side of qsched: adapters (CLI, pyslurm), job info, session verification, MUNGE auth, the
reconciler's decision and AdminComment accounting. The daemon wires these in; nothing here holds a
connection or a global."""
from .accounting import format_admin_comment, write_usage
from .adapter import (CliSlurmAdapter, SlurmAdapter, SlurmError, SubmitRejected, get_adapter,
                      parse_sbatch_parsable)
from .hooks import slurm_integration
from .jobs import JobInfo, QpuRequest, job_from_scontrol, job_from_squeue_json, parse_scontrol_record
from .reconcile import EndedSession, SessionRef, ended_sessions
from .verify import job_facts, parse_job_id, verify_job_for_session

__all__ = [
    "CliSlurmAdapter", "EndedSession", "JobInfo", "QpuRequest", "SessionRef", "SlurmAdapter", "SlurmError",
    "SubmitRejected", "ended_sessions", "format_admin_comment", "get_adapter", "job_facts",
    "job_from_scontrol",
    "job_from_squeue_json", "parse_job_id", "parse_sbatch_parsable", "parse_scontrol_record",
    "slurm_integration", "verify_job_for_session", "write_usage",
]
