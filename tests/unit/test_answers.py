"""The budget of large answers held at once (qsched/daemon/answers.py)."""
import asyncio

import pytest

from qsched.daemon.answers import AnswerBudget
from qsched.errors import Unavailable


def test_readers_over_the_budget_wait_then_get_503_naming_the_limit():
    async def body():
        b = AnswerBudget(100)
        first = await b.reserve(60, 1.0)
        waiting = asyncio.create_task(b.reserve(60, 1.0))       # does not fit beside the first
        await asyncio.sleep(0.05)
        assert not waiting.done() and b.used == 60
        await b.release(first)
        assert await waiting == 60 and b.used == 60             # served once the first is sent
        with pytest.raises(Unavailable) as e:
            await b.reserve(50, 0.05)
        assert e.value.field == "results" and e.value.limit == 100 and "max_answer_bytes" in e.value.message
        assert b.used == 60                                       # a refused reader holds nothing
    asyncio.run(body())


def test_an_answer_larger_than_the_budget_is_sent_alone():
    async def body():
        b = AnswerBudget(100)
        n = await b.reserve(10_000, 0.1)
        assert n == 100 and b.used == 100
        with pytest.raises(Unavailable):
            await b.reserve(1, 0.05)
        await b.release(n)
        assert b.used == 0
    asyncio.run(body())
