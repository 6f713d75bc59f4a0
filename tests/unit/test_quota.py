"""Quotas (policy.quotas) in simulated time: validation with clear errors, fixed windows per period,
accounts and users, what a refusal says, and persistence entries (no Redis, no clock)."""
from __future__ import annotations

import pytest

from qsched.config import parse_policy
from qsched.errors import ConfigError
from qsched.policy.quota import QuotaLedger, window_start

DAY = 86_400.0


def specs(quotas: dict) -> dict:
    return parse_policy({"quotas": quotas}).quotas


def ledger(quotas: dict) -> QuotaLedger:
    return QuotaLedger(specs(quotas), now=0.0)


def test_quotas_parse_accounts_users_and_periods():
    q = parse_policy({"quotas": {"chem": {"device_s": 36000, "period": "30d"},
                                 "user:alice": {"device_s": 60, "period": 3600}}}).quotas
    chem = q["chem"]
    assert (chem.kind, chem.name, chem.device_s, chem.period_s) == ("account", "chem", 36000, 30 * DAY)
    assert (q["user:alice"].kind, q["user:alice"].name, q["user:alice"].period_s) == ("user", "alice", 3600)
    assert parse_policy({"quotas": {"x": {"device_s": 1, "period": "2w"}}}).quotas["x"].period_s == 14 * DAY
    assert parse_policy({}).quotas == {}


@pytest.mark.parametrize("quotas, field, words", [
    ({"chem": {"device_s": 10}}, "policy.quotas.chem.period", "required"),
    ({"chem": {"period": "1d"}}, "policy.quotas.chem.device_s", "required"),
    ({"chem": {"device_s": -1, "period": "1d"}}, "policy.quotas.chem.device_s", ">= 0"),
    ({"chem": {"device_s": "lots", "period": "1d"}}, "policy.quotas.chem.device_s", "a number"),
    ({"chem": {"device_s": 10, "period": "monthly"}}, "policy.quotas.chem.period", "like 12h, 30d"),
    ({"chem": {"device_s": 10, "period": "10s"}}, "policy.quotas.chem.period", "between 60 s and 366 days"),
    ({"chem": {"device_s": 10, "period": "1d", "gpus": 2}}, "policy.quotas.chem.gpus", "unknown field"),
    ({"user:": {"device_s": 10, "period": "1d"}}, "policy.quotas.user:", "user:NAME"),
    ({"chem": 36000}, "policy.quotas.chem", "a mapping"),
])
def test_bad_quotas_name_the_field(quotas, field, words):
    with pytest.raises(ConfigError) as e:
        parse_policy({"quotas": quotas})
    assert e.value.field == field and words in e.value.message


def test_usage_counts_within_fixed_windows_and_starts_again_at_zero():
    q = ledger({"chem": {"device_s": 100, "period": "1d"}})
    t = 10 * DAY + 3600
    assert window_start(q.specs["chem"], t) == 10 * DAY
    q.charge("alice", "chem", 60, t)
    q.charge("bob", "chem", 30, t + 10)
    assert q.used("chem", t + 20) == 90 and q.exhausted("alice", "chem", t + 20) is None
    assert q.ratio("chem", t + 20) == pytest.approx(0.9)
    q.charge("bob", "chem", 10, t + 30)
    assert q.exhausted("carol", "chem", t + 40).key == "chem"          # every user of the account
    assert q.exhausted("carol", "phys", t + 40) is None                 # another account: no quota
    nxt = 11 * DAY
    assert q.used("chem", nxt) == 0 and q.exhausted("alice", "chem", nxt) is None
    q.charge("alice", "chem", 5, nxt + 1)
    assert q.used("chem", nxt + 2) == 5


def test_a_user_quota_follows_the_user_across_accounts():
    q = ledger({"user:alice": {"device_s": 10, "period": "1h"}, "chem": {"device_s": 1000, "period": "1h"}})
    q.charge("alice", "chem", 6, 100)
    q.charge("alice", "phys", 4, 200)
    assert q.used("user:alice", 300) == 10 and q.used("chem", 300) == 6
    spent = q.exhausted("alice", "phys", 300)
    assert spent is not None and spent.key == "user:alice"
    assert q.exhausted("bob", "chem", 300) is None


def test_what_a_refusal_says_names_who_used_and_limit():
    q = ledger({"chem": {"device_s": 36000, "period": "30d"}})
    q.charge("alice", "chem", 36012.4, 100)
    msg = q.describe(q.specs["chem"], 200)
    assert "account 'chem'" in msg and "36012.4" in msg and "36000" in msg and "30d" in msg
    assert "until 1970-01-31T00:00:00Z" in msg


def test_a_zero_quota_refuses_from_the_start():
    q = ledger({"guest": {"device_s": 0, "period": "1d"}})
    assert q.exhausted("x", "guest", 5) is not None and q.ratio("guest", 5) == 1.0


def test_entries_round_trip_and_unsaved_charges_win_over_a_load():
    both = {"chem": {"device_s": 100, "period": "1d"}, "phys": {"device_s": 100, "period": "1d"}}
    q = ledger(both)
    q.take_dirty()
    q.charge("a", "chem", 7, 50)
    entries, hours, removed = q.take_dirty()
    assert entries == {"chem": (7, 0.0, DAY, 0.0)} and hours == {"chem": {0.0: 7}} and not removed
    assert not q.dirty and not q.dirty_hours
    fresh = ledger(both)
    fresh.charge("a", "phys", 3, 60)
    fresh.load({**entries, "phys": (1.0, 0.0, DAY, 0.0), "gone": (5.0, 0.0, DAY, 0.0)}, hours, now=70)
    assert fresh.used("chem", 70) == 7 and fresh.used("phys", 70) == 3
    assert fresh.take_dirty()[2] == {"gone"}             # no longer configured: deleted from Redis


def test_a_quota_counts_only_from_when_it_was_configured():
    """Removed and added back (or added back while the daemon was down): its old use is not counted."""
    q = ledger({"chem": {"device_s": 10, "period": "1d"}})
    q.charge("a", "chem", 12, 50)
    q.set_specs({}, now=60)
    q.charge("a", "chem", 4, 70)                          # no quota: not counted for one
    q.set_specs(specs({"chem": {"device_s": 10, "period": "1d"}}), now=80)
    assert q.used("chem", 90) == 0 and q.exhausted("a", "chem", 90) is None and q.since("chem") == 80
    entries, _, removed = q.take_dirty()
    assert entries["chem"] == (0.0, 0.0, DAY, 80.0) and "chem" not in removed
    restarted = ledger({"chem": {"device_s": 10, "period": "1d"}})
    restarted.load({"chem": (12.0, 0.0, DAY, 10.0)}, {}, now=90)
    assert restarted.used("chem", 90) == 12 and restarted.since("chem") == 10     # survives a restart


def test_a_period_change_recomputes_the_new_windows_use():
    q = ledger({"chem": {"device_s": 100, "period": "1d"}})
    q.charge("a", "chem", 5, 2 * 3600)                    # day 0
    q.charge("a", "chem", 7, DAY + 6 * 3600)              # day 1
    now = DAY + 7 * 3600
    assert q.used("chem", now) == 7
    q.set_specs(specs({"chem": {"device_s": 100, "period": "2w"}}), now=now)
    assert q.used("chem", now) == 12                      # the 2-week window holds both days
    q.set_specs(specs({"chem": {"device_s": 100, "period": "1d"}}), now=now)
    assert q.used("chem", now) == 7
    # a restart under another period recomputes from the stored hours too
    entries, hours, _ = q.take_dirty()
    other = ledger({"chem": {"device_s": 100, "period": "2w"}})
    other.load(entries, hours, now=now)
    assert other.used("chem", now) == 12


def test_a_reload_keeps_usage_of_quotas_still_configured():
    q = ledger({"chem": {"device_s": 10, "period": "1d"}})
    q.charge("a", "chem", 12, 50)
    assert q.exhausted("a", "chem", 60) is not None
    q.set_specs(specs({"chem": {"device_s": 20, "period": "1d"}}), now=60)
    assert q.used("chem", 60) == 12 and q.exhausted("a", "chem", 60) is None
