"""The daemon's core without Redis or workers: an index, a policy and a scheduler over an in-memory
store that answers the reads a rebuild makes (what `Store` would read back from Redis). Imported by
the tests beside it (their conftest puts this directory on the path)."""
from __future__ import annotations

from collections import deque

from qsched.config import parse_config, parse_policy
from qsched.daemon.index import Index
from qsched.daemon.scheduler import Scheduler
from qsched.metrics import Metrics
from qsched.models import Batch, DeviceSpec, Session, Task, TaskState, Window
from qsched.policy import FairShare

POLICY = {"merge": False, "preempt": True, "classes": {"interactive": {"tier": 1}},
          "quotas": {"chem": {"device_s": 1, "period": "1d"}}}


def task(sid: str, n: int, *, seq: int | None = None, kind: str = "estimate", bindings: int = 1,
         state: TaskState = TaskState.PENDING) -> Task:
    t = Task(f"{sid}.t{n}", sid, kind, "tmpl", bindings, None, n if seq is None else seq, 0.0)
    t.state = state
    return t


def session(sid: str, *, cls: str = "batch", account: str = "phys", user: str = "ann", pool: str = "p") -> Session:
    return Session(id=sid, user=user, uid=1000, pool=pool, cls=cls, weight=1.0, account=account, created=1.0)


def devices(n: int = 2, pool: str = "p") -> list[DeviceSpec]:
    return [DeviceSpec(name=f"d{i}", type="null", pool=pool) for i in range(n)]


def policy() -> FairShare:
    return FairShare(parse_policy(POLICY))


def index() -> Index:
    specs = devices()
    ix = Index(specs, {"p": specs})
    for d in ix.devices.values():
        d.alive = True
    return ix


class FakeStore:
    """What a rebuild reads, held in memory; writes the tests reach are recorded."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.pending: dict[str, list[str]] = {}
        self.tasks: list[Task] = []
        self.outstanding: dict[str, list[Batch]] = {}
        self.states: dict[str, dict] = {}
        self.windows_: list[Window] = []
        self.commits: list[list[Batch]] = []
        self.taken: set[str] = set()         # batches a worker took (a recall from the inbox fails)
        self.recalled: list[str] = []

    async def last_event_id(self) -> str:
        return "7-0"

    async def load_cost_model(self, devices: list[str]) -> dict:
        return {}

    async def device_states(self, devices: list[str]) -> dict:
        return self.states

    async def windows(self) -> list[Window]:
        return list(self.windows_)

    async def load_state(self, devices: list[str]):
        return self.sessions, self.pending, self.tasks, self.outstanding

    async def load_usage(self) -> dict:
        return {"user": {}, "account": {}, "assoc": {}}

    async def load_quota_usage(self) -> dict:
        return {}

    async def sessions_device_seconds(self, sids: list[str]) -> dict:
        return {}

    async def commit(self, sid, items, batches, idempotency_key=None) -> None:
        self.commits.append(batches)

    async def recall(self, batch: Batch, device: str, source: str, *, attempt: bool = False) -> bool:
        if batch.id in self.taken:
            return False
        self.recalled.append(batch.id)
        return True


def scheduler(store: FakeStore, *, maintenance: list[dict] | None = None) -> Scheduler:
    cfg = parse_config({"state_dir": "/nonexistent/qsched-unit", "policy": POLICY, "maintenance": maintenance or [],
                        "devices": [{"name": f"d{i}", "type": "null", "pool": "p"} for i in range(2)]})
    return Scheduler(store, cfg, FairShare(cfg.policy), Metrics(), b"k" * 32)  # type: ignore[arg-type]


def pending_ids(q: deque[Task]) -> list[str]:
    return [t.id for t in q]
