"""Every Prometheus metric qsched exports. Base units, `_total` counters, no job/task/user ids as labels
(labels are devices, pools, kinds and states: all bounded by the config)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .errors import CLIENT_ERROR_CODES

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                    60, 300, 1800)


DEVICE_STATES = ("online", "draining", "paused", "maintenance", "offline")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.device_busy = Counter("qsched_device_busy_seconds", "Seconds a device spent executing batches",
                                   ["device"], registry=r)
        self.device_state = Gauge("qsched_device_state", "1 for the device's current state (online, draining, "
                                  "paused, maintenance, offline), 0 for the others", ["device", "state"], registry=r)
        self.device_up = Gauge("qsched_device_up", "1 while the device's worker process is running",
                               ["device"], registry=r)
        self.worker_memory = Gauge("qsched_worker_resident_memory_bytes", "Resident memory of the device's worker",
                                   ["device"], registry=r)
        self.worker_restarts = Counter("qsched_worker_restarts", "Worker processes restarted after an exit",
                                       ["device"], registry=r)
        self.workers_lost = Counter("qsched_workers_lost", "Workers whose heartbeat stopped (stopped, hung or dead)",
                                    ["device"], registry=r)
        self.batches_requeued = Counter("qsched_batches_requeued",
                                        "Batches taken back and requeued to their pool (reason: recall, worker_lost)",
                                        ["device", "reason"], registry=r)
        self.preemptions = Counter("qsched_preemptions", "Lower-tier batches taken back from a device's inbox "
                                   "because a higher tier had work (preemption at batch boundaries)", ["pool"],
                                   registry=r)
        self.quota_used_ratio = Gauge("qsched_quota_used_ratio", "Device time used in the current period / the "
                                      "quota (label: the quota's key in policy.quotas: an account, or user:NAME)",
                                      ["account"], registry=r)
        self.background_errors = Counter("qsched_background_task_errors",
                                         "Exceptions in the daemon's background tasks (each is logged and the task "
                                         "restarted)", ["task"], registry=r)
        self.batches = Counter("qsched_batches", "Batches dispatched to a device", ["device"], registry=r)
        self.tasks_submitted = Counter("qsched_tasks_submitted", "Tasks accepted (durable in Redis)",
                                       ["pool", "kind"], registry=r)
        self.tasks_replayed = Counter("qsched_tasks_replayed", "Tasks answered from their job's replay record "
                                      "(no device time)", ["pool"], registry=r)
        self.tasks_completed = Counter("qsched_tasks_completed", "Tasks that reached a final state",
                                       ["device", "status"], registry=r)
        self.bindings = Counter("qsched_bindings", "Parameter bindings (circuits) executed", ["device"],
                                registry=r)
        self.tasks_pending = Gauge("qsched_tasks_pending", "Tasks waiting for a device", ["pool"], registry=r)
        self.pool_backlog = Gauge("qsched_pool_backlog_seconds", "Predicted device-seconds of the work queued "
                                  "and running on the pool (its forecast, daemon/forecast.py)", ["pool"], registry=r)
        self.predicted_wait = Gauge("qsched_pool_predicted_wait_seconds", "Predicted wait before a new session "
                                    "of the class runs its first task (+Inf: not predicted, e.g. no live device)",
                                    ["pool", "class"], registry=r)
        self.store_up = Gauge("qsched_store_up", "1 while Redis answers the daemon", registry=r)
        self.store_writable = Gauge("qsched_store_writable", "0 after a write failed (full disk, refused), until "
                                    "one succeeds", registry=r)
        self.store_writable.set(1)
        self.sessions_open = Gauge("qsched_sessions_open", "Open sessions", registry=r)
        self.queue_wait = Histogram("qsched_queue_wait_seconds", "Submission to start of execution",
                                    ["pool"], buckets=_LATENCY_BUCKETS, registry=r)
        self.execution = Histogram("qsched_batch_execution_seconds", "Device time of a batch", ["device"],
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("qsched_requests_rejected", "Requests answered with a 4xx error", ["code"],
                                registry=r)
        self.connections_refused = Counter("qsched_connections_refused", "Connections answered 503 at accept: "
                                           "a connection cap was reached", ["limit"], registry=r)
        self.sessions_expired = Counter("qsched_sessions_expired", "Sessions closed after "
                                        "daemon.session_idle_timeout_s idle", registry=r)

    def prelabel(self, devices, pools) -> None:
        """Export every configured device's and pool's series from the start, at 0: panels show the
        device before its first batch and `increase()` sees the first restart."""
        for d in devices:
            for c in (self.device_busy, self.worker_restarts, self.workers_lost, self.batches, self.bindings):
                c.labels(d).inc(0)
            for reason in ("recall", "worker_lost", "preempt"):
                self.batches_requeued.labels(d, reason).inc(0)
            for status in ("DONE", "FAILED"):
                self.tasks_completed.labels(d, status).inc(0)
            self.device_up.labels(d).set(0)
            self.set_device_state(d, "offline")
            self.execution.labels(d)
        for p in pools:
            self.preemptions.labels(p).inc(0)
            self.tasks_pending.labels(p).set(0)
            self.queue_wait.labels(p)
            self.tasks_replayed.labels(p)
            for kind in ("sample", "estimate", "gradient"):
                self.tasks_submitted.labels(p, kind).inc(0)
        for code in CLIENT_ERROR_CODES:
            self.rejected.labels(code).inc(0)
        for limit in ("max_connections_per_peer", "max_connections"):
            self.connections_refused.labels(limit).inc(0)
        for task in ("dispatcher", "events", "device-watch", "session-expiry"):
            self.background_errors.labels(task).inc(0)

    def set_device_state(self, device: str, state: str) -> None:
        for s in DEVICE_STATES:
            self.device_state.labels(device, s).set(1 if s == state else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
