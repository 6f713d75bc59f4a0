"""The nouns the daemon, the policies and the workers share: sessions, tasks, batches, devices."""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field


class TaskKind(str, enum.Enum):
    SAMPLE = "sample"
    ESTIMATE = "estimate"
    GRADIENT = "gradient"


class TaskState(str, enum.Enum):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"      # in a batch in a device inbox
    RUNNING = "RUNNING"          # the worker took the batch
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)


class SessionState(str, enum.Enum):
    OPEN = "OPEN"
    CLOSED = "CLOSED"


class Task:
    """A pending or running task as the scheduler indexes it: metadata only, payload stays in Redis."""
    __slots__ = ("id", "session", "kind", "template", "bindings", "shots", "seq", "submitted",
                 "attempts", "state", "batch", "method", "seed")

    def __init__(self, id: str, session: str, kind: str, template: str, bindings: int,
                 shots: int | None, seq: int, submitted: float, attempts: int = 0,
                 state: TaskState = TaskState.PENDING, method: str | None = None, seed: int | None = None):
        self.id = id
        self.session = session
        self.kind = kind
        self.template = template
        self.bindings = bindings
        self.shots = shots
        self.seq = seq
        self.submitted = submitted
        self.attempts = attempts
        self.state = state
        self.batch: str | None = None
        self.method = method
        self.seed = seed            # the simulator's seed for this task alone (reproducible samples)

    def merge_key(self) -> tuple:
        """Tasks with equal keys can run in one simulator call."""
        return (self.template, self.kind, self.shots, self.method)

    def to_redis(self) -> dict:
        d = {"id": self.id, "session": self.session, "kind": self.kind, "template": self.template,
             "bindings": self.bindings, "shots": "" if self.shots is None else self.shots,
             "seq": self.seq, "submitted": self.submitted, "attempts": self.attempts,
             "state": self.state.value, "method": self.method or "", "seed": "" if self.seed is None else self.seed}
        return d

    @classmethod
    def from_redis(cls, h: dict) -> "Task":
        t = cls(h["id"], h["session"], h["kind"], h["template"], int(h["bindings"]),
                int(h["shots"]) if h.get("shots") else None, int(h["seq"]), float(h["submitted"]),
                int(h.get("attempts", 0)), TaskState(h["state"]), h.get("method") or None,
                int(h["seed"]) if h.get("seed") else None)
        t.batch = h.get("batch") or None
        return t


@dataclass
class Session:
    id: str
    user: str
    uid: int
    pool: str
    cls: str = "batch"
    weight: float = 1.0
    account: str = ""
    name: str = ""
    job_id: str = ""
    created: float = 0.0
    state: SessionState = SessionState.OPEN
    hold: str = ""            # an admin's hold ("" when none): why, and who set it

    def to_redis(self) -> dict:
        return {"id": self.id, "user": self.user, "uid": self.uid, "pool": self.pool, "class": self.cls,
                "weight": self.weight, "account": self.account, "name": self.name,
                "job_id": self.job_id, "created": self.created, "state": self.state.value, "hold": self.hold}

    @classmethod
    def from_redis(cls, h: dict) -> "Session":
        return cls(id=h["id"], user=h["user"], uid=int(h["uid"]), pool=h["pool"], cls=h["class"],
                   weight=float(h["weight"]), account=h.get("account", ""), name=h.get("name", ""),
                   job_id=h.get("job_id", ""), created=float(h["created"]), state=SessionState(h["state"]),
                   hold=h.get("hold", ""))

    def public(self) -> dict:
        return self.to_redis()


@dataclass
class Batch:
    """What the daemon dispatches at once: tasks of one session for one device. A worker of a device
    with merge_batches > 1 runs waiting batches of other sessions with the same `merge` key in the same
    device call (cross-session batching), and still answers and charges each batch on its own."""
    id: str
    device: str
    session: str
    tasks: list[str]
    created: float
    # the tasks' payloads, when the batch was dispatched in the same commit that accepted them: the
    # worker then needs no read before it runs (fields in store.INLINE_FIELDS order)
    inline: list | None = None
    merge: str = ""          # the tasks' merge key, set where the device merges across sessions
    bindings: int = 0

    def to_json(self) -> dict:
        d = {"id": self.id, "device": self.device, "session": self.session, "tasks": self.tasks,
             "created": self.created}
        if self.inline:
            d["inline"] = self.inline
        if self.merge:
            d["merge"], d["bindings"] = self.merge, self.bindings
        return d

    def entry(self) -> str:
        """The batch as it sits in a device inbox (and moves, unchanged, to the processing list)."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_entry(cls, raw) -> "Batch":
        return cls(**json.loads(raw))


@dataclass
class Usage:
    """A session's quantum usage, charged with measured device time."""
    device_seconds: float = 0.0
    tasks: int = 0
    circuits: int = 0
    shots: int = 0

    @classmethod
    def from_redis(cls, h: dict) -> "Usage":
        return cls(float(h.get("device_seconds", 0)), int(h.get("tasks", 0)),
                   int(h.get("circuits", 0)), int(h.get("shots", 0)))


@dataclass
class DeviceLimits:
    max_qubits: int = 30
    max_shots: int = 100_000
    max_bindings: int = 100_000
    max_batch_bindings: int = 20_000   # merging stops here
    max_result_bytes: int = 64 << 20   # a task whose result would be larger is refused at submit


@dataclass
class DeviceSpec:
    name: str
    type: str
    pool: str
    limits: DeviceLimits = field(default_factory=DeviceLimits)
    options: dict = field(default_factory=dict)
    # batches (of any sessions) one device call may take: > 1 where a job has a fixed overhead (a QPU)
    merge_batches: int = 1
    # how long a call that could take more batches waits for them (0: run what is waiting now)
    merge_wait_s: float = 0.0
    start_worker: bool = True       # false: its worker runs on another host (`qsched worker --device`)
    credentials_file: str | None = None     # read by the device's worker only (qsched/credentials.py)
    # seeds the cost model until measurements replace it: setup_s per batch, per_binding_s per binding
    cost_prior: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Window:
    """A maintenance window over a pool, or some of its devices (`devices` empty: the whole pool); end
    None: until an admin resumes the devices. While it is on, its devices are in state maintenance."""
    pool: str
    start: float
    end: float | None = None
    devices: tuple[str, ...] = ()
    reason: str = ""
    id: str = ""

    def covers(self, device: str, pool: str) -> bool:
        return pool == self.pool and (not self.devices or device in self.devices)

    def on(self, now: float) -> bool:
        return self.start <= now and (self.end is None or now < self.end)

    def to_json(self) -> dict:
        return {"id": self.id, "pool": self.pool, "start": self.start, "end": self.end,
                "devices": list(self.devices), "reason": self.reason}

    @classmethod
    def from_json(cls, d: dict) -> "Window":
        return cls(pool=d["pool"], start=float(d["start"]), end=None if d.get("end") is None else float(d["end"]),
                   devices=tuple(d.get("devices") or ()), reason=d.get("reason", ""), id=d.get("id", ""))

