"""A job's quantum usage into its Slurm AdminComment, so `sacct -o AdminComment`/`scontrol show job`
show it beside the classical usage.

Format (one line, machine-readable, keeps the request job_submit.lua wrote):
    qsched:qpu=1,pool=aer,class=batch,session=ab12,device_s=12.345,tasks=40,circuits=4000,shots=0
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from .adapter import SlurmAdapter, SlurmError
from .jobs import parse_admin_comment

log = logging.getLogger("qsched.slurm")

# usage key in the daemon's dict -> key in the comment (first alias present wins)
_USAGE_KEYS = (
    ("device_s", ("device_s", "device_seconds", "device_time_s")),
    ("tasks", ("tasks", "tasks_done", "n_tasks")),
    ("circuits", ("circuits", "bindings", "n_circuits")),
    ("shots", ("shots", "n_shots")),
)
_REQUEST_KEYS = ("qpu", "pool", "class")
_SAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def _number(text: str, kind: type):
    """A number a previous comment holds (0 when it is not one: a hand-edited comment must not stop
    the usage from being written)."""
    try:
        return kind(float(text)) if kind is int else kind(text)
    except (TypeError, ValueError):
        return kind(0)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return _SAFE.sub("_", str(v))


def format_admin_comment(usage: Mapping, *, previous: str = "", session_id: str | None = None) -> str:
    """usage: the daemon's session usage dict (device_s/device_seconds, tasks, circuits/bindings, shots).
    previous: the job's current AdminComment (its qsched: request keys are kept; other text is kept
    in front). A previous comment written for another session of the job (a run before `scontrol
    requeue`, a preemption or a node failure) keeps counting: its usage is added to this session's, and
    `runs` says over how many runs."""
    req = parse_admin_comment(previous)
    fields: dict = {k: req[k] for k in _REQUEST_KEYS if k in req}
    earlier_run = bool(session_id and req.get("session") and req["session"] != session_id)
    runs = _number(req.get("runs", "1"), int) + 1 if earlier_run else _number(req.get("runs", "1"), int)
    if runs > 1:
        fields["runs"] = runs
    if session_id:
        fields["session"] = session_id
    for out_key, aliases in _USAGE_KEYS:
        for a in aliases:
            if a in usage and usage[a] is not None:
                v = usage[a]
                if earlier_run and out_key in req:
                    v = v + _number(req[out_key], type(v) if isinstance(v, (int, float)) else float)
                fields[out_key] = v
                break
    other = re.sub(r"(?:^|\s)qsched:\S+", "", previous or "").strip()
    text = "qsched:" + ",".join(f"{k}={_fmt(v)}" for k, v in fields.items())
    return f"{other} {text}" if other else text


def write_usage(adapter: SlurmAdapter, job_id: int, usage: Mapping, *, session_id: str | None = None,
                previous: str | None = None) -> str | None:
    """Write the usage into the job's AdminComment; returns the text, or None when Slurm refused or could
    not be asked (logged: accounting in Redis stays the record, the comment is a convenience)."""
    try:
        if previous is None:
            job = adapter.job(job_id)
            previous = job.admin_comment if job else ""
        text = format_admin_comment(usage, previous=previous, session_id=session_id)
        adapter.set_admin_comment(job_id, text)
        return text
    except SlurmError as e:
        log.warning("AdminComment for job %s not written: %s", job_id, e.message)
        return None
