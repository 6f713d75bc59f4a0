"""What qsched needs to know about a Slurm job, parsed from `squeue --json` or `scontrol show job -o`.

The quantum request of a job comes from (in this order of trust):
  * AdminComment `qsched:qpu=N,pool=P,class=C` written by job_submit.lua (only admins can set it),
  * the pool's licence `qpu_POOL:N` (count and pool), the licence `qpu:N` or the GRES `gres:qpu:N` (count).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from .site import pool_of_license

# Slurm base states (flags like +COMPLETING are stripped)
ACTIVE_STATES = frozenset({"RUNNING", "SUSPENDED", "COMPLETING", "STAGE_OUT", "SIGNALING"})
PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                            "RESV_DEL_HOLD", "RESIZING"})
ENDED_STATES = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                          "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"})

QPU_RESOURCE = "qpu"
ADMIN_COMMENT_PREFIX = "qsched:"


@dataclass(frozen=True)
class QpuRequest:
    count: int
    pool: str | None = None
    klass: str | None = None
    source: str = "license"  # "admin_comment" | "license" | "gres"


@dataclass(frozen=True)
class JobInfo:
    job_id: int
    state: str                      # base state, e.g. RUNNING, PENDING, COMPLETED
    user: str
    uid: int
    gid: int | None = None
    name: str = ""
    partition: str = ""
    nodes: str = ""
    batch_host: str = ""
    account: str = ""
    licenses: dict[str, int] = field(default_factory=dict)
    gres: dict[str, int] = field(default_factory=dict)
    comment: str = ""
    admin_comment: str = ""
    reason: str = ""
    submit_time: int | None = None
    start_time: int | None = None
    end_time: int | None = None
    exit_code: int | None = None    # the exit status (not the raw wait status)
    qpu: QpuRequest | None = None

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"

    @property
    def active(self) -> bool:
        """Still holding its allocation (a session of it may still be used)."""
        return self.state in ACTIVE_STATES

    @property
    def pending(self) -> bool:
        return self.state in PENDING_STATES

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES

    @property
    def wants_qpu(self) -> bool:
        return self.qpu is not None and self.qpu.count > 0


# --- small parsers ------------------------------------------------------------------------------------

def base_state(state) -> str:
    """'RUNNING', ['RUNNING'], 'CANCELLED by 0', 'COMPLETING+...' -> the base state name."""
    if isinstance(state, (list, tuple)):
        state = state[0] if state else ""
    state = str(state or "").strip().upper()
    return re.split(r"[\s+,]", state, maxsplit=1)[0] if state else "UNKNOWN"


def parse_counts(text: str | None) -> dict[str, int]:
    """Licenses 'qpu:2,foo' / 'qpu=2' -> {'qpu': 2, 'foo': 1}. '(null)' and '' -> {}."""
    out: dict[str, int] = {}
    if not text or text in ("(null)", "N/A"):
        return out
    for item in re.split(r"[,|]", text):
        item = item.strip()
        if not item:
            continue
        m = re.fullmatch(r"([\w.@-]+)(?:[:=](\d+))?", item)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(2) or 1)
    return out


def parse_gres(*texts: str | None) -> dict[str, int]:
    """TRES-per-x strings 'gres:qpu:2', 'gres/qpu=2', 'gres:gpu:a100:1,gres:qpu' -> {'qpu': 2, 'gpu': 1}."""
    out: dict[str, int] = {}
    for text in texts:
        if not text or text in ("(null)", "N/A"):
            continue
        for item in text.split(","):
            item = re.sub(r"^gres[:/]", "", item.strip())
            if not item:
                continue
            name, eq, count = item.partition("=")       # gres/qpu=2 (TRES form)
            parts = name.split(":")                      # qpu, qpu:2, gpu:a100:1
            if not eq:
                count = parts[-1] if len(parts) > 1 and parts[-1].isdigit() else "1"
            if re.fullmatch(r"[\w.-]+", parts[0]) and count.isdigit():
                out[parts[0]] = out.get(parts[0], 0) + int(count)
    return out


def parse_admin_comment(text: str | None) -> dict[str, str]:
    """'qsched:qpu=1,pool=aer,class=batch ...' -> {'qpu': '1', 'pool': 'aer', 'class': 'batch'}."""
    if not text:
        return {}
    m = re.search(r"(?:^|\s)qsched:(\S+)", text)
    if not m:
        return {}
    out = {}
    for kv in m.group(1).split(","):
        k, sep, v = kv.partition("=")
        if sep:
            out[k] = v
    return out


def qpu_request(licenses: dict[str, int], gres: dict[str, int], admin_comment: str) -> QpuRequest | None:
    meta = parse_admin_comment(admin_comment)
    if meta.get("qpu", "").isdigit():
        return QpuRequest(int(meta["qpu"]), meta.get("pool") or None, meta.get("class") or None,
                          "admin_comment")
    per_pool = {p: n for name, n in licenses.items() if n and (p := pool_of_license(name))}
    if per_pool:
        # one pool's licence (job_submit.lua gives exactly one); several: the count only
        pool = next(iter(per_pool)) if len(per_pool) == 1 else None
        return QpuRequest(sum(per_pool.values()), pool, source="license")
    if licenses.get(QPU_RESOURCE):
        return QpuRequest(licenses[QPU_RESOURCE], source="license")
    if gres.get(QPU_RESOURCE):
        return QpuRequest(gres[QPU_RESOURCE], source="gres")
    return None


def _num(v) -> int | None:
    """squeue --json numbers: plain ints, or {"set": bool, "number": n} in newer formats; 0 = unset."""
    if isinstance(v, dict):
        if not v.get("set", True) or v.get("infinite"):
            return None
        v = v.get("number")
    if v is None or isinstance(v, bool):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _time(v) -> int | None:
    t = _num(v)
    return t if t else None


# --- squeue --json ------------------------------------------------------------------------------------

def job_from_squeue_json(j: dict) -> JobInfo:
    """One element of `squeue --json`'s "jobs" (data_parser v0.0.38 in 22.05; later formats tolerated)."""
    licenses = parse_counts(j.get("licenses"))
    gres = parse_gres(j.get("tres_per_node"), j.get("tres_per_job"), j.get("tres_per_task"),
                      j.get("tres_per_socket"))
    admin_comment = j.get("admin_comment") or ""
    if isinstance(admin_comment, dict):  # 23.x: {"administrator": ...}
        admin_comment = admin_comment.get("administrator") or ""
    comment = j.get("comment") or ""
    if isinstance(comment, dict):
        comment = comment.get("job") or ""
    raw_exit = j.get("exit_code")
    if isinstance(raw_exit, dict):  # 23.x: {"status": [...], "return_code": n}
        exit_code = _num(raw_exit.get("return_code"))
    else:
        n = _num(raw_exit)
        # 22.05 reports the raw wait status here (exit 3 -> 768)
        exit_code = (n >> 8) & 0xFF if n is not None else None
    return JobInfo(
        job_id=int(_num(j.get("job_id")) or 0),
        state=base_state(j.get("job_state")),
        user=j.get("user_name") or "",
        uid=int(_num(j.get("user_id")) or 0),
        gid=_num(j.get("group_id")),
        name=j.get("name") or "",
        partition=j.get("partition") or "",
        nodes=j.get("nodes") or "",
        batch_host=j.get("batch_host") or "",
        account=j.get("account") or "",
        licenses=licenses,
        gres=gres,
        comment=comment,
        admin_comment=admin_comment,
        reason=j.get("state_reason") or "",
        submit_time=_time(j.get("submit_time")),
        start_time=_time(j.get("start_time")),
        end_time=_time(j.get("end_time")),
        exit_code=exit_code,
        qpu=qpu_request(licenses, gres, admin_comment),
    )


def jobs_from_squeue_json(doc: dict) -> dict[int, JobInfo]:
    out = {}
    for j in doc.get("jobs") or []:
        info = job_from_squeue_json(j)
        out[info.job_id] = info
    return out


# --- scontrol show job -o -----------------------------------------------------------------------------

class AmbiguousRecord(ValueError):
    """A key appeared twice: free text (job name, comment) imitated a field. Never trust such a record."""


_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_scontrol_record(line: str) -> dict[str, str]:
    """`scontrol show job -o` key=value line -> dict. Values may contain spaces (JobName, Comment), so a
    key starts at whitespace + Name=; a repeated key means a user-written value forged one, so the
    whole record is refused (AmbiguousRecord)."""
    line = line.strip()
    keys = list(_KEY.finditer(line))
    out: dict[str, str] = {}
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
        key = m.group(1)
        if key in out:
            raise AmbiguousRecord(f"field {key} appears twice in scontrol output")
        out[key] = line[m.end():end].strip()
    return out


def _id_pair(text: str) -> tuple[str, int | None]:
    """'alice(1001)' -> ('alice', 1001)."""
    m = re.fullmatch(r"(.*)\((\d+)\)", text or "")
    return (m.group(1), int(m.group(2))) if m else (text or "", None)


def _scontrol_time(text: str | None) -> int | None:
    if not text or text in ("Unknown", "None", "N/A", "(null)"):
        return None
    import datetime as _dt
    try:
        return int(_dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp())
    except ValueError:
        return None


def _null(v: str | None) -> str:
    return "" if v in (None, "(null)", "N/A") else v


def job_from_scontrol(rec: dict[str, str]) -> JobInfo:
    user, uid = _id_pair(rec.get("UserId", ""))
    _, gid = _id_pair(rec.get("GroupId", ""))
    if uid is None:
        raise ValueError("scontrol record without a numeric UserId")
    licenses = parse_counts(rec.get("Licenses"))
    gres = parse_gres(rec.get("TresPerNode"), rec.get("TresPerJob"), rec.get("TresPerTask"),
                      rec.get("TresPerSocket"))
    admin_comment = _null(rec.get("AdminComment"))
    exit_code = None
    if rec.get("ExitCode"):
        code, _, _sig = rec["ExitCode"].partition(":")
        exit_code = int(code) if code.isdigit() else None
    return JobInfo(
        job_id=int(rec["JobId"]),
        state=base_state(rec.get("JobState")),
        user=user,
        uid=uid,
        gid=gid,
        name=_null(rec.get("JobName")),
        partition=_null(rec.get("Partition")),
        nodes=_null(rec.get("NodeList")),
        batch_host=_null(rec.get("BatchHost")),
        account=_null(rec.get("Account")),
        licenses=licenses,
        gres=gres,
        comment=_null(rec.get("Comment")),
        admin_comment=admin_comment,
        reason=_null(rec.get("Reason")),
        submit_time=_scontrol_time(rec.get("SubmitTime")),
        start_time=_scontrol_time(rec.get("StartTime")),
        end_time=_scontrol_time(rec.get("EndTime")),
        exit_code=exit_code,
        # Only fields scontrol always prints are safe from forgery by a job name or comment (a forged
        # duplicate is caught by parse_scontrol_record); AdminComment and TresPerNode are printed only
        # when set, so here the quantum request is the license alone.
        qpu=qpu_request(licenses, {}, ""),
    )


def with_state(job: JobInfo, state: str) -> JobInfo:
    return replace(job, state=state)
