"""The Python client, used directly and by the Qiskit and PennyLane SDKs: one protocol core (core.py:
requests, results, templates, retries; no I/O), a transport (transport.py), and two faces over them,
blocking (sync.py: `Client`) and asyncio (aio.py: `AsyncClient`) with the same API. Inside a Slurm job
it finds the daemon and the job's session from the environment the SPANK plugin sets (QSCHED_URL,
QSCHED_SESSION, QSCHED_POOL, QSCHED_CLASS); on a laptop, the local socket. Through a daemon restart
it retries for up to QSCHED_RETRY_S seconds (default 300) and never submits a task twice."""
from ..errors import QschedError
from .aio import AsyncClient, AsyncSession, AsyncTaskFuture
from .core import (
           POLL_S,
           TaskResult,
           TemplateCache,
           default_url,
           task_body,
           task_outcome,
)
from .retry import RetryPolicy, Unreachable
from .sync import Client, Session, TaskFuture
from .transport import AsyncTransport, SyncTransport, _Transport

__all__ = [
           "POLL_S",
           "AsyncClient",
           "AsyncSession",
           "AsyncTaskFuture",
           "AsyncTransport",
           "Client",
           "QschedError",
           "RetryPolicy",
           "Session",
           "SyncTransport",
           "TaskFuture",
           "TaskResult",
           "TemplateCache",
           "Unreachable",
           "_Transport",
           "default_url",
           "task_body",
           "task_outcome",
]
