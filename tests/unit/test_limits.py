"""A class's access rules and limits (qsched/daemon/limits.py): pure, no daemon."""
from __future__ import annotations

import pytest

from qsched.config import ClassSpec
from qsched.daemon import limits
from qsched.errors import Conflict, Forbidden

OPEN = ClassSpec("open")
CHEM = ClassSpec("interactive", tier=1, accounts=("chem",), users=("alice",), max_sessions_per_user=2)
SMALL = ClassSpec("small", max_pending_per_user=10, max_task_device_s=2.0, max_session_device_s=60.0)


def test_who_may_use_a_class():
    assert limits.may_use(OPEN, user="bob", account="phys")
    assert limits.may_use(CHEM, user="bob", account="chem")
    assert limits.may_use(CHEM, user="alice", account="phys")
    assert not limits.may_use(CHEM, user="bob", account="phys")
    with pytest.raises(Forbidden) as e:
        limits.check_open(CHEM, user="bob", account="phys", open_sessions=0)
    assert e.value.status == 403 and e.value.field == "class"
    msg = e.value.message
    assert "'interactive'" in msg and "accounts chem" in msg and "users alice" in msg


def test_max_sessions_per_user():
    limits.check_open(CHEM, user="bob", account="chem", open_sessions=1)
    with pytest.raises(Conflict) as e:
        limits.check_open(CHEM, user="bob", account="chem", open_sessions=2)
    assert e.value.status == 409 and e.value.field == "class.max_sessions_per_user" and e.value.limit == 2
    assert "max_sessions_per_user=2" in e.value.message and "has 2 open" in e.value.message


def test_max_pending_per_user():
    limits.check_submit(SMALL, user="bob", pending_for_user=8, new_tasks=2)
    with pytest.raises(Conflict) as e:
        limits.check_submit(SMALL, user="bob", pending_for_user=8, new_tasks=3)
    assert e.value.field == "class.max_pending_per_user" and e.value.limit == 10
    assert "'small'" in e.value.message and "would have 11 pending" in e.value.message


def test_max_task_device_s_from_the_estimates():
    limits.check_submit(SMALL, user="bob", pending_for_user=0, new_tasks=2, task_estimates_s=[1.0, 2.0])
    with pytest.raises(Forbidden) as e:
        limits.check_submit(SMALL, user="bob", pending_for_user=0, new_tasks=2, task_estimates_s=[1.0, 2.5])
    assert e.value.field == "class.max_task_device_s" and e.value.limit == 2.0 and "2.5" in e.value.message


def test_max_session_device_s_counts_what_was_used_and_what_is_asked():
    limits.check_submit(SMALL, user="bob", pending_for_user=0, new_tasks=1, task_estimates_s=[1.0],
                        session_used_s=59.0)
    with pytest.raises(Forbidden) as e:
        limits.check_submit(SMALL, user="bob", pending_for_user=0, new_tasks=2, task_estimates_s=[1.0, 1.0],
                            session_used_s=59.0)
    assert e.value.field == "class.max_session_device_s" and e.value.limit == 60.0


def test_a_class_without_limits_refuses_nothing():
    limits.check_open(OPEN, user="bob", account="x", open_sessions=10_000)
    limits.check_submit(OPEN, user="bob", pending_for_user=10**9, new_tasks=10**6, task_estimates_s=[1e9])
    assert not limits.needs_estimates(OPEN) and limits.needs_estimates(SMALL)
