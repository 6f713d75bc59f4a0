"""What one pick takes (daemon/dispatch.py), and weighted shares with merging on, in simulated time."""
from __future__ import annotations

from collections import deque

import pytest

from qsched.config import PolicyConfig
from qsched.daemon.dispatch import take_batch
from qsched.models import Task
from qsched.policy import FairShare


def _tasks(sid: str, n: int, *, bindings: int = 200, template: str = "t", start: int = 0) -> deque[Task]:
    return deque(Task(f"{sid}.{i}", sid, "estimate", template, bindings, None, start + i, 0.0)
                 for i in range(n))


def test_merging_stops_at_the_quantum_the_binding_limit_and_a_different_template():
    per = 1e-4                                    # estimated device-seconds per binding
    q = _tasks("a", 10)
    took = take_batch(q, merge=True, max_bindings=10_000, max_batch_s=0.05, estimate=lambda n: n * per)
    assert [t.id for t in took] == ["a.0", "a.1"]          # 2 x 200 x 1e-4 = 0.04 <= 0.05 < 0.06
    took = take_batch(q, merge=True, max_bindings=600, max_batch_s=10.0, estimate=lambda n: n * per)
    assert len(took) == 3                                  # 600 bindings
    q = deque([*_tasks("a", 2), *_tasks("a", 2, template="u", start=2)])
    assert len(take_batch(q, merge=True, max_bindings=10_000, max_batch_s=10.0, estimate=lambda n: 0.0)) == 2
    q = _tasks("a", 3)
    assert len(take_batch(q, merge=False, max_bindings=10_000, max_batch_s=10.0, estimate=lambda n: 0.0)) == 1


def test_a_task_larger_than_the_quantum_still_runs_whole():
    q = _tasks("a", 3, bindings=5000)
    took = take_batch(q, merge=True, max_bindings=100_000, max_batch_s=0.05, estimate=lambda n: n * 1e-3)
    assert len(took) == 1 and len(q) == 2


def _simulate(max_batch_s: float, outstanding: int, *, task_s: float = 0.01, horizon_s: float = 300.0) -> float:
    """Two closed-loop sessions (weights 2 and 1) keep `outstanding` tasks each in the system, one
    template each, on one device with late binding (one batch running, one waiting). Returns the
    device-seconds ratio heavy / light."""
    policy = FairShare(PolicyConfig(max_batch_s=max_batch_s))
    weights = {"heavy": 2.0, "light": 1.0}
    pending = {sid: _tasks(sid, outstanding) for sid in weights}
    seq = outstanding
    for sid, w in weights.items():
        policy.enqueue(sid, "p", w, pending[sid][0].seq)
    used = dict.fromkeys(weights, 0.0)
    per_binding = task_s / 200

    def pick():
        sid = policy.pick("p")
        if sid is None or not pending[sid]:
            return None
        took = take_batch(pending[sid], merge=True, max_bindings=20_000, max_batch_s=max_batch_s,
                          estimate=lambda n: n * per_binding)
        cost = len(took) * task_s
        policy.charge(sid, cost)
        if pending[sid]:
            policy.enqueue(sid, "p", weights[sid], pending[sid][0].seq)
        return sid, took, cost

    now, running, waiting = 0.0, pick(), None
    waiting = pick()
    while now < horizon_s and running:
        sid, took, cost = running
        now += cost
        used[sid] += cost
        policy.correct(sid, cost, cost)
        was_idle = not pending[sid]
        for _ in took:                          # the client answers each result with a new task
            seq += 1
            pending[sid].append(Task(f"{sid}.{seq}", sid, "estimate", "t", 200, None, seq, now))
        if was_idle:
            policy.enqueue(sid, "p", weights[sid], pending[sid][0].seq)
        running, waiting = waiting, pick()
    return used["heavy"] / used["light"]


@pytest.mark.parametrize("outstanding", [8, 16, 24])
def test_weights_hold_with_merging_when_one_pick_is_bounded(outstanding):
    assert _simulate(0.05, outstanding) == pytest.approx(2.0, rel=0.05)


def test_without_the_bound_merged_sessions_just_alternate():
    # the defect the bound fixes: each pick takes the session's whole backlog
    assert _simulate(float("inf"), 8) == pytest.approx(1.0, rel=0.05)
