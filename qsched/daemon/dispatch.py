"""What one pick of the policy takes from a session's queue: pure, tested without Redis."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ..models import Task


def take_batch(pending: deque[Task], *, merge: bool, max_bindings: int, max_batch_s: float,
               estimate: Callable[[int], float]) -> list[Task]:
    """The head task, plus the following tasks that can share its simulator call.

    Merging stops at the device's binding limit and at the policy's quantum, max_batch_s estimated
    device-seconds: without that bound one pick takes a session's whole backlog, the policy's charge
    comes after the fact, and competing sessions merely alternate whatever their weights."""
    head = pending.popleft()
    tasks, bindings = [head], head.bindings
    if merge:
        key = head.merge_key()
        while pending and pending[0].merge_key() == key:
            nxt = bindings + pending[0].bindings
            if nxt > max_bindings or estimate(nxt) > max_batch_s:
                break
            tasks.append(pending.popleft())
            bindings = nxt
    return tasks
