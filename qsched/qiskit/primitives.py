"""Qiskit V2 primitives that run on a qsched daemon.

One `run()` call is one request: every PUB becomes one task (template + [bindings, params] array),
all submitted together with the session's submit_many, so the scheduler sees the whole burst at once
and the simulator gets each PUB's bindings in one call.

`seed` makes results reproducible as Qiskit's reference primitives' `seed` does: an int gives every
run the same samples (and shot noise); a numpy Generator draws each run's seeds from itself. Each
PUB's seed travels with its template (the workers read it there and seed the simulator with it for
that task alone, so the result does not depend on what the scheduler batches it with).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from functools import partial

import numpy as np
from qiskit.primitives import BaseEstimatorV2, BaseSamplerV2, PrimitiveResult
from qiskit.primitives.containers.estimator_pub import EstimatorPub, EstimatorPubLike
from qiskit.primitives.containers.sampler_pub import SamplerPub, SamplerPubLike

from ..errors import QschedError
from ..wire import ROWS_METADATA_KEY
from .convert import (
    check_runnable,
    estimator_pub_to_task,
    estimator_result,
    sampler_pub_to_task,
    sampler_result,
)
from .jobs import QschedPrimitiveJob
from .session import SessionHandle, as_sdk_error



def pub_seeds(seed, n: int, distinct: bool = True) -> list[int | None]:
    """One seed per PUB of a run; the same int seed gives every run the same ones. `distinct`: each
    PUB its own stream (the samplers: Qiskit's StatevectorSampler draws the PUBs of a run from one
    stream); otherwise every PUB the seed itself (StatevectorEstimator seeds each PUB's noise
    afresh). A Generator gives each PUB a seed drawn from it."""
    if seed is None:
        return [None] * n
    if isinstance(seed, np.random.Generator):
        return [int(x) for x in seed.integers(0, 2**31 - 1, size=n)]
    base = int(seed)
    if base < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return [base if i == 0 or not distinct else int(np.random.default_rng([base, i]).integers(0, 2**31 - 1))
            for i in range(n)]


def _submit(handle: SessionHandle, plans, seeds):
    tasks = []
    hashes = [handle.upload(plan.task["circuit"]) for plan in plans]
    for plan, h, seed in zip(plans, hashes, seeds):
        task = dict(plan.task)
        del task["circuit"]
        task["template"] = h
        if seed is not None:
            task["seed"] = seed          # a field of the task: the template stays the same whatever the seed
        tasks.append(task)
    try:
        return handle.get().submit_many(tasks)
    except QschedError as e:
        raise as_sdk_error(e) from e


class EstimatorV2(BaseEstimatorV2):
    """Estimator V2 on qsched: exact expectation values when precision is 0 (the default), otherwise
    sampled with shots = ceil(1 / precision^2)."""

    def __init__(self, *, pool: str | None = None, client=None, session=None,
                 default_precision: float = 0.0, seed: int | np.random.Generator | None = None,
                 timeout: float | None = None):
        self._handle = SessionHandle(pool=pool, client=client, session=session, default_pool="aer",
                                     name="qiskit-estimator")
        self._default_precision = float(default_precision)
        self.seed = seed
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
        for i, pub in enumerate(coerced):
            if pub.precision < 0:
                raise ValueError(f"The {i}-th pub has precision less than 0 ({pub.precision}); precision "
                                 "must be 0 (exact) or larger")
            check_runnable(pub.circuit)
        by_row = partial(self._handle.offers, "row_observables", ROWS_METADATA_KEY)
        plans = [estimator_pub_to_task(pub, by_row) for pub in coerced]
        seeds = pub_seeds(self.seed, len(plans), distinct=False)
        futures = _submit(self._handle, plans, seeds) if plans else []

        def finalize(results):
            return PrimitiveResult([estimator_result(plan, r, pub.circuit)
                                    for plan, pub, r in zip(plans, coerced, results)],
                                   metadata={"version": 2})

        return QschedPrimitiveJob(futures, finalize, timeout=self._timeout, owner=self._handle)


class SamplerV2(BaseSamplerV2):
    """Sampler V2 on qsched: bitstrings per classical register as BitArrays, shots per PUB."""

    def __init__(self, *, pool: str | None = None, client=None, session=None,
                 default_shots: int = 1024, seed: int | np.random.Generator | None = None,
                 timeout: float | None = None):
        self._handle = SessionHandle(pool=pool, client=client, session=session, default_pool="aer",
                                     name="qiskit-sampler")
        self._default_shots = int(default_shots)
        self.seed = seed
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
        for i, pub in enumerate(coerced):
            if pub.shots <= 0:
                raise ValueError(f"The {i}-th pub has shots {pub.shots}; shots must be at least 1")
            if not pub.circuit.cregs:
                # as Qiskit's StatevectorSampler and BackendSamplerV2 warn
                warnings.warn(f"The {i}-th pub's circuit has no output classical registers and so the "
                              "result will be empty. Did you mean to add measurement instructions?",
                              UserWarning, stacklevel=2)
            check_runnable(pub.circuit)
        plans = [sampler_pub_to_task(pub) for pub in coerced]
        seeds = pub_seeds(self.seed, len(plans))
        futures = _submit(self._handle, plans, seeds) if plans else []

        def finalize(results):
            return PrimitiveResult([sampler_result(plan, r) for plan, r in zip(plans, results)],
                                   metadata={"version": 2})

        return QschedPrimitiveJob(futures, finalize, timeout=self._timeout, owner=self._handle)
