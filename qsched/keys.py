"""Every Redis key name qsched uses, and nothing else.

A session's keys share the hash tag ``{sid}`` (tasks are keyed under their session: a task id embeds
its session id), which keeps one session's keys together. That does not make qsched run on a Redis
Cluster: the atomic scripts in store.py (commit, complete, recall) touch a device's inbox, a batch and
the events stream along with a session's keys, which a cluster refuses across hash slots. One primary
(with replicas and Sentinel for failover) holds everything; the daemon refuses a cluster node at start
(redisconn.check_store).
"""
PREFIX = "qsched:"

SESSIONS = PREFIX + "sessions"                 # set of open session ids
EVENTS = PREFIX + "events"                     # stream: task/batch completions from workers
SECRET = PREFIX + "secret"                     # HMAC key for session tokens
ACCOUNTING = PREFIX + "acct"                   # stream: usage records of closed sessions
DEVICES = PREFIX + "devices"                   # set of device names the last daemon ran (finds removed ones)
LEADER = PREFIX + "leader"                     # the leader lease: "EPOCH HOLDER", expires unless renewed
LEADER_EPOCH = PREFIX + "leader:epoch"         # counter: each new leader's fencing token


def session(sid: str) -> str:
    return f"{PREFIX}session:{{{sid}}}"


def session_pending(sid: str) -> str:
    """List of the session's pending task ids, oldest first."""
    return f"{PREFIX}session:{{{sid}}}:pending"


def session_usage(sid: str) -> str:
    return f"{PREFIX}session:{{{sid}}}:usage"


def session_submit(sid: str, key: str) -> str:
    """A submission's idempotency key -> the task ids it was answered with (a retry gets the same)."""
    return f"{PREFIX}session:{{{sid}}}:submit:{key}"


def task(tid: str) -> str:
    sid = tid.split(".", 1)[0]
    return f"{PREFIX}task:{{{sid}}}:{tid}"


def task_params(tid: str) -> str:
    sid = tid.split(".", 1)[0]
    return f"{PREFIX}task:{{{sid}}}:{tid}:params"


def task_result(tid: str) -> str:
    sid = tid.split(".", 1)[0]
    return f"{PREFIX}task:{{{sid}}}:{tid}:result"


def template(digest: str) -> str:
    return f"{PREFIX}template:{digest}"


def batch(bid: str) -> str:
    return f"{PREFIX}batch:{bid}"


def device_inbox(device: str) -> str:
    return f"{PREFIX}device:{device}:inbox"


def device_processing(device: str) -> str:
    return f"{PREFIX}device:{device}:processing"


def device_heartbeat(device: str) -> str:
    return f"{PREFIX}device:{device}:heartbeat"


def device_worker(device: str) -> str:
    """String with a TTL: the lease of the one worker serving the device ("host:pid:nonce")."""
    return f"{PREFIX}device:{device}:worker"


def device_state(device: str) -> str:
    """Hash: the admin's state for the device (online, draining, paused, maintenance), reason, since."""
    return f"{PREFIX}device:{device}:state"


# Hash: maintenance window id -> its JSON (models.Window): those added with `qsched device maintenance
# --start/--duration`, and config windows an admin ended early (the stored end overrides the config's)
MAINTENANCE = f"{PREFIX}maintenance"


def device_model(device: str) -> str:
    """Learned cost model: hash of task kind -> estimated device-seconds per binding."""
    return f"{PREFIX}device:{device}:model"


def usage(kind: str) -> str:
    """Hash: decayed usage of each user (kind "user") or account ("account"): name -> "value t", the
    device-seconds as of Unix time t (they decay with policy.decay_half_life_s from there)."""
    return f"{PREFIX}usage:{kind}"


# hash: quota key ("chem", "user:alice") -> "device-s window-start period-s since"
QUOTA_USED = PREFIX + "quota:used"


def quota_hours(key: str) -> str:
    """Hash: a quota's device-seconds per hour (hour start -> seconds), what a period change recomputes from."""
    return f"{PREFIX}quota:hours:{key}"


RQ_QUEUE = "qsched-jobs"     # RQ's own keys derive from it (rq:queue:qsched-jobs): `qsched submit --local`
# sorted set: one entry per local-mode worker process, started or starting (token -> lease expiry,
# Unix time), so simultaneous submissions start at most local.workers in all
LOCAL_WORKERS = PREFIX + "local:workers"
LOCAL_WORKERS_LOCK = PREFIX + "local:workers:lock"   # held while a job is queued and while a worker leaves


def remote_job(token: str) -> str:
    """Hash: one remote (vendor) job, written before it is submitted (write-ahead): its idempotency
    token, state (submitting, submitted, done, failed, cancelled, lost, unknown), the vendor's job id,
    the task ids it answers, when it was first seen running."""
    return f"{PREFIX}remote:{token}"


def task_remote(tid: str) -> str:
    """The token of the remote job that answers this task (a requeued task resumes it, never resubmits)."""
    sid = tid.split(".", 1)[0]
    return f"{PREFIX}task:{{{sid}}}:{tid}:remote"


def device_remote_jobs(device: str) -> str:
    """Set: tokens of the device's remote jobs not yet known to have ended (swept by its worker)."""
    return f"{PREFIX}device:{device}:remote"


def device_vendor(device: str) -> str:
    """Hash: what the device's vendor says of it (status online|paused|offline, reason, at), written by
    its worker; the daemon moves the device's state from it."""
    return f"{PREFIX}device:{device}:vendor"


# Replay records (daemon/replay.py): one per Slurm job ("job:ID") or per resume key ("resume:KEY");
# all three expire daemon.replay_ttl_s after the record's last write.
def replay_addrs(name: str) -> str:
    """Hash: position in the job's submission order -> the content address of the request answered there."""
    return f"{PREFIX}replay:{name}:addrs"


def replay_results(name: str) -> str:
    """Hash: position -> the recorded result (the "result" value of the stored body, as its bytes)."""
    return f"{PREFIX}replay:{name}:results"


def replay_meta(name: str) -> str:
    """Hash: the record's user, account, owner session, bytes, top (highest position + 1), full."""
    return f"{PREFIX}replay:{name}:meta"


REPLAY_OFF = PREFIX + "replay:off"             # hash: pool -> who turned replay off there, and when
