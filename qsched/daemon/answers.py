"""How many bytes of large answers (results read back from Redis) the daemon holds at once.

A large answer is read whole from Redis and sent in chunks (http._stream); without a bound, clients
that ask for big results and then read slowly make the daemon hold one copy each (20 readers of a
27 MB result held 1.6 GB). A reader that would pass `daemon.max_answer_bytes` waits for others to
finish, up to `daemon.body_timeout_s`, then gets 503 naming the limit; one answer larger than the
whole budget is sent alone."""
from __future__ import annotations

import asyncio

from ..errors import Unavailable


class AnswerBudget:
    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Condition()

    async def reserve(self, n: int, timeout_s: float) -> int:
        """Wait until n bytes fit (an answer over the limit counts as the whole limit); returns what to
        give back to release()."""
        n = min(n, self.limit)
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.used + n <= self.limit), timeout_s)
            except asyncio.TimeoutError:
                raise Unavailable(f"results: {self.used} bytes of large answers are being sent, the limit is "
                                  f"daemon.max_answer_bytes = {self.limit}; retry", field="results",
                                  limit=self.limit) from None
            self.used += n
        return n

    async def release(self, n: int) -> None:
        if n:
            async with self._changed:
                self.used -= n
                self._changed.notify_all()
