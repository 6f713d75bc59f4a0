"""The Qiskit face of the session: errors that Qiskit users catch by Qiskit's classes, and waiting for
many PUBs at once. The framework-neutral session handle is `qsched.sdk.SessionHandle`."""
from __future__ import annotations

from qiskit.providers import JobError, JobTimeoutError

from ..errors import QschedError, TaskCancelled, TaskFailed, Timeout
from ..sdk import SessionHandle

__all__ = ["QschedJobError", "QschedJobTimeoutError", "SessionHandle", "as_sdk_error", "wait_all"]


class QschedJobError(QschedError, JobError):
    """A task failed or was cancelled; also a Qiskit JobError."""
    code = "task_failed"

    def __init__(self, message, *, field=None, limit=None):
        QschedError.__init__(self, message, field=field, limit=limit)


class QschedJobTimeoutError(QschedError, JobTimeoutError):
    """Results did not arrive in time; also a Qiskit JobTimeoutError."""
    code = "timeout"

    def __init__(self, message, *, field=None, limit=None):
        QschedError.__init__(self, message, field=field, limit=limit)


def as_sdk_error(err: BaseException) -> BaseException:
    """Client errors -> errors that Qiskit (and PennyLane users) catch by their framework's classes."""
    if isinstance(err, (QschedJobError, QschedJobTimeoutError)):
        return err
    if isinstance(err, Timeout):
        return QschedJobTimeoutError(err.message, field=err.field, limit=err.limit)
    if isinstance(err, (TaskFailed, TaskCancelled)):
        return QschedJobError(err.message, field=err.field, limit=err.limit)
    return err


def wait_all(futures, timeout: float | None, session=None):
    """Results of many task futures, in order, with one long-poll per round where the session
    offers it (POST /v1/tasks/wait); errors converted to the SDK classes."""
    try:
        waiter = getattr(session, "wait", None)
        if callable(waiter) and len(futures) > 1:
            return waiter(futures, timeout)
        return [f.result(timeout=timeout) for f in futures]
    except QschedError as e:
        raise as_sdk_error(e) from e
