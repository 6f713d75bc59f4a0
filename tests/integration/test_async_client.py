"""qsched.AsyncClient against the real daemon: futures, concurrent waits, cancel, errors."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from qiskit.circuit.library import efficient_su2
from qiskit.primitives import StatevectorEstimator
from qiskit.quantum_info import SparsePauliOp

import qsched
from qsched import errors


def test_async_client_round_trip(qsched_daemon):
    qc = efficient_su2(2, reps=1)
    params = np.random.default_rng(2).uniform(size=(3, qc.num_parameters))
    ref = StatevectorEstimator().run([(qc, SparsePauliOp("ZZ"), params)]).result()[0].data.evs

    async def main():
        async with qsched.AsyncClient(qsched_daemon.url) as client:
            assert (await client.health())["status"] == "ok"
            async with await client.open_session("aer", name="async") as s:
                futs = await s.submit_many([dict(kind="estimate", circuit=qc, params=params[i:i + 1],
                                                 observables="ZZ") for i in range(3)])
                results = await asyncio.gather(*(f.result(30) for f in futs))
                one = await s.submit("estimate", qc, params[:1], observables="ZZ")
                assert (await one).evs.shape == (1, 1)        # a future is awaitable
                with pytest.raises(errors.BadRequest) as e:
                    await s.submit("sample", qc, params[:1], shots=10**9)
                assert e.value.field == "tasks[0].shots" and e.value.limit == 100000
            return results

    results = asyncio.run(main())
    np.testing.assert_allclose(np.concatenate([r.evs[:, 0] for r in results]), ref, atol=1e-10)


def test_async_cancel(fresh_daemon):
    d = fresh_daemon(devices=[{"name": "slow0", "type": "null", "pool": "slow", "options": {"delay_s": 0.5}}],
                     policy={"name": "fifo", "merge": False})
    qc = efficient_su2(2, reps=1)

    async def main():
        async with qsched.AsyncClient(d.url) as client:
            s = await client.open_session("slow")
            futs = await s.submit_many([dict(kind="estimate", circuit=qc, params=np.zeros((1, qc.num_parameters)),
                                             observables="ZZ")] * 4)
            assert await futs[-1].cancel() == "CANCELLED"
            first = await futs[0].result(30)
            with pytest.raises(errors.TaskCancelled):
                await futs[-1].result(5)
            usage = await s.close()
            return first, usage

    first, usage = asyncio.run(main())
    assert first.evs.shape == (1, 1)
    assert usage["tasks"] >= 1 and usage["device_seconds"] > 0
