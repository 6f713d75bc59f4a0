"""Accounts and weights of record (daemon/identity.py)."""
from __future__ import annotations

import pytest

from qsched.daemon.identity import session_account, session_weight
from qsched.errors import Forbidden

USERS = {"alice": ["chem", "phys"]}


def test_the_slurm_job_account_is_the_record():
    assert session_account(user="alice", claimed="", job_account="chem", users={}, admin=False) == "chem"
    assert session_account(user="alice", claimed="chem", job_account="chem", users={}, admin=False) == "chem"
    with pytest.raises(Forbidden) as e:
        session_account(user="alice", claimed="phys", job_account="chem", users=USERS, admin=False)
    assert e.value.field == "account" and "phys" in e.value.message


def test_without_slurm_the_users_mapping_or_the_user_name():
    assert session_account(user="alice", claimed="", job_account=None, users=USERS, admin=False) == "chem"
    assert session_account(user="alice", claimed="phys", job_account=None, users=USERS, admin=False) == "phys"
    assert session_account(user="bob", claimed="", job_account=None, users=USERS, admin=False) == "bob"
    with pytest.raises(Forbidden):
        session_account(user="bob", claimed="chem", job_account=None, users=USERS, admin=False)
    assert session_account(user="bob", claimed="chem", job_account=None, users=USERS, admin=True) == "chem"


def test_raising_the_own_weight_is_for_admins():
    assert session_weight(0.5, admin=False) == 0.5
    assert session_weight(1.0, admin=False) == 1.0
    with pytest.raises(Forbidden) as e:
        session_weight(1000.0, admin=False)
    assert e.value.field == "weight" and e.value.limit == 1.0
    assert session_weight(1000.0, admin=True) == 1000.0
