"""Qiskit V2 primitives that run on a qsched daemon.

One `run()` call is one request: every PUB becomes one task (template + [bindings, params] array),
all submitted together with the session's submit_many, so the scheduler sees the whole burst at once
and the simulator gets each PUB's bindings in one call.
"""
from __future__ import annotations

from collections.abc import Iterable

from qiskit.primitives import BaseEstimatorV2, BaseSamplerV2, PrimitiveResult
from qiskit.primitives.containers.estimator_pub import EstimatorPub, EstimatorPubLike
from qiskit.primitives.containers.sampler_pub import SamplerPub, SamplerPubLike

from .convert import estimator_pub_to_task, estimator_result, sampler_pub_to_task, sampler_result
from .jobs import QschedPrimitiveJob
from .session import SessionHandle, as_sdk_error
from ..errors import QschedError


def _submit(handle: SessionHandle, plans):
    tasks = []
    hashes = [handle.upload(plan.task["circuit"]) for plan in plans]
    for plan, h in zip(plans, hashes):
        task = dict(plan.task)
        del task["circuit"]
        task["template"] = h
        tasks.append(task)
    try:
        return handle.get().submit_many(tasks)
    except QschedError as e:
        raise as_sdk_error(e) from e


class EstimatorV2(BaseEstimatorV2):
    """Estimator V2 on qsched: exact expectation values when precision is 0 (the default), otherwise
    sampled with shots = ceil(1 / precision^2)."""

    def __init__(self, *, pool: str | None = None, client=None, session=None,
                 default_precision: float = 0.0, timeout: float | None = None):
        self._handle = SessionHandle(pool=pool, client=client, session=session, default_pool="aer",
                                     name="qiskit-estimator")
        self._default_precision = float(default_precision)
        self._timeout = timeout

    @property
    def default_precision(self) -> float:
        return self._default_precision

    @property
    def session(self):
        return self._handle.get()

    def close(self):
        self._handle.close()

    def run(self, pubs: Iterable[EstimatorPubLike], *, precision: float | None = None) -> QschedPrimitiveJob:
        if precision is None:
            precision = self._default_precision
        coerced = [EstimatorPub.coerce(pub, precision) for pub in pubs]
        plans = [estimator_pub_to_task(pub) for pub in coerced]
        futures = _submit(self._handle, plans) if plans else []

        def finalize(results):
            return PrimitiveResult([estimator_result(plan, r, pub.circuit)
                                    for plan, pub, r in zip(plans, coerced, results)],
                                   metadata={"version": 2})

        return QschedPrimitiveJob(futures, finalize, timeout=self._timeout)


class SamplerV2(BaseSamplerV2):
    """Sampler V2 on qsched: bitstrings per classical register as BitArrays, shots per PUB."""

    def __init__(self, *, pool: str | None = None, client=None, session=None,
                 default_shots: int = 1024, timeout: float | None = None):
        self._handle = SessionHandle(pool=pool, client=client, session=session, default_pool="aer",
                                     name="qiskit-sampler")
        self._default_shots = int(default_shots)
        self._timeout = timeout

    @property
    def default_shots(self) -> int:
        return self._default_shots

    @property
    def session(self):
        return self._handle.get()

    def close(self):
        self._handle.close()

    def run(self, pubs: Iterable[SamplerPubLike], *, shots: int | None = None) -> QschedPrimitiveJob:
        if shots is None:
            shots = self._default_shots
        coerced = [SamplerPub.coerce(pub, shots) for pub in pubs]
        plans = [sampler_pub_to_task(pub) for pub in coerced]
        futures = _submit(self._handle, plans) if plans else []

        def finalize(results):
            return PrimitiveResult([sampler_result(plan, r) for plan, r in zip(plans, results)],
                                   metadata={"version": 2})

        return QschedPrimitiveJob(futures, finalize, timeout=self._timeout)
