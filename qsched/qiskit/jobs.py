"""Jobs over qsched task futures: a primitive job (one PrimitiveResult) and a backend job (Result)."""
from __future__ import annotations

import threading
import uuid
from typing import Any, Callable, cast

from qiskit.primitives import BasePrimitiveJob
from qiskit.providers import JobStatus, JobV1

from ..errors import QschedError
from .session import QschedJobError, QschedJobTimeoutError, as_sdk_error, wait_all

_STATUS = {
    "PENDING": JobStatus.QUEUED,
    "SCHEDULED": JobStatus.QUEUED,
    "RUNNING": JobStatus.RUNNING,
    "DONE": JobStatus.DONE,
    "FAILED": JobStatus.ERROR,
    "CANCELLED": JobStatus.CANCELLED,
}
_ORDER = [JobStatus.ERROR, JobStatus.CANCELLED, JobStatus.RUNNING, JobStatus.QUEUED,
          JobStatus.INITIALIZING, JobStatus.VALIDATING, JobStatus.DONE]


def future_state(fut) -> str:
    """A task future's state name; the client's future exposes it as `.state` (str or enum)."""
    st = getattr(fut, "state", None)
    if callable(st):
        st = st()
    if st is None:
        return "DONE" if fut.done() else "PENDING"
    return str(getattr(st, "value", st)).upper()


def combined_status(futures) -> JobStatus:
    """The job's status is its least advanced task's (an error or a cancel wins)."""
    if not futures:
        return JobStatus.DONE
    statuses = {_STATUS.get(future_state(f), JobStatus.QUEUED) for f in futures}
    for s in _ORDER:
        if s in statuses:
            return s
    return JobStatus.DONE


class _FutureJobMixin:
    _futures: list
    _finalize: Callable[[list], Any]
    _result: Any
    _result_lock: threading.Lock

    def _collect(self, timeout: float | None):
        with self._result_lock:
            if self._result is not None:
                return self._result
            try:
                session = getattr(self._futures[0], "session", None) if self._futures else None
                results = wait_all(self._futures, timeout, session)
            except (QschedJobError, QschedJobTimeoutError):
                raise
            except QschedError as e:
                raise as_sdk_error(e) from e
            except TimeoutError as e:
                job_id = cast(Any, self).job_id()      # JobV1 / BasePrimitiveJob, beside this mixin
                raise QschedJobTimeoutError(f"job {job_id}: results not ready within {timeout} s") from e
            self._result = self._finalize(results)
            return self._result

    def _cancel_all(self) -> bool:
        """Cancel every task not yet finished; True when all of them ended up cancelled."""
        ok = True
        for f in self._futures:
            try:
                state = f.cancel()
            except QschedError:
                ok = False
                continue
            ok = ok and str(getattr(state, "value", state)).upper() == "CANCELLED"
        return ok


class QschedPrimitiveJob(_FutureJobMixin, BasePrimitiveJob):
    """Returned by SamplerV2/EstimatorV2.run: every PUB of the call is one task of one request."""

    def __init__(self, futures: list, finalize: Callable[[list], Any], job_id: str | None = None,
                 timeout: float | None = None, owner: object = None):
        super().__init__(job_id or (getattr(futures[0], "id", None) if futures else None) or uuid.uuid4().hex)
        # the primitive's session handle: a primitive dropped right after run() (Sampler().run(pubs))
        # must not close its session, cancelling the job, before the job is done
        self._owner = owner
        self._futures = list(futures)
        self._finalize = finalize
        self._timeout = timeout
        self._result = None
        self._result_lock = threading.Lock()

    @property
    def task_ids(self) -> list[str | None]:
        return [getattr(f, "id", None) for f in self._futures]

    def result(self, timeout: float | None = None):
        return self._collect(self._timeout if timeout is None else timeout)

    def status(self) -> JobStatus:
        return combined_status(self._futures)

    def done(self) -> bool:
        return self.status() == JobStatus.DONE

    def running(self) -> bool:
        return self.status() == JobStatus.RUNNING

    def cancelled(self) -> bool:
        return self.status() == JobStatus.CANCELLED

    def in_final_state(self) -> bool:
        return self.status() in (JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELLED)

    def cancel(self) -> bool:
        return self._cancel_all()


class QschedJob(_FutureJobMixin, JobV1):
    """Returned by QschedBackend.run: a qiskit.result.Result with counts (and memory when asked)."""

    def __init__(self, backend, futures: list, finalize: Callable[[list], Any], job_id: str | None = None,
                 timeout: float | None = None):
        super().__init__(backend, job_id or uuid.uuid4().hex)
        self._futures = list(futures)
        self._finalize = finalize
        self._timeout = timeout
        self._result = None
        self._result_lock = threading.Lock()

    def submit(self):
        # tasks are submitted by QschedBackend.run (in one request); nothing left to send
        raise QschedJobError("the job was submitted by QschedBackend.run")

    def result(self, timeout: float | None = None):
        return self._collect(self._timeout if timeout is None else timeout)

    def status(self) -> JobStatus:
        return combined_status(self._futures)

    def cancel(self) -> bool:
        return self._cancel_all()
