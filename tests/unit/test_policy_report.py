"""What `qsched share`, `qsched prio` and `qsched policy show` compute, in simulated time (pure)."""
from __future__ import annotations

import pytest

from qsched.config import parse_policy
from qsched.policy import Fifo, SessionInfo, make_policy
from qsched.policy.quota import QuotaLedger
from qsched.policy.report import policy_doc, prio_row, share_rows

POLICY = {"weights": {"accounts": {"chem": 2, "phys": 1}, "users": {"bob": 3}}, "priority_weight_fairshare": 1000,
          "priority_weight_age": 100, "priority_weight_qos": 10, "classes": {"interactive": {"tier": 1, "weight": 4}},
          "quotas": {"chem": {"device_s": 100, "period": "1d"}}}


def policy_with_usage(spec=POLICY):
    p = make_policy(parse_policy(spec))
    p.usage.charge("alice", "chem", 30, 0.0)
    p.usage.charge("bob", "chem", 10, 0.0)
    p.usage.charge("carol", "phys", 40, 0.0)
    return p


def test_share_rows_are_an_account_then_its_users_with_usage_shares_and_factor():
    p = policy_with_usage()
    rows = share_rows(p, 0.0, [("bio", "dave"), ("chem", "erin")])
    by = {(r["account"], r["user"]): r for r in rows}
    assert [k for k in by if k[0] == "chem"] == [("chem", ""), ("chem", "alice"), ("chem", "bob"), ("chem", "erin")]
    chem, phys, bio = by[("chem", "")], by[("phys", "")], by[("bio", "")]
    assert (chem["raw_shares"], chem["usage_s"], chem["effective_usage"]) == (2, 40, 0.5)
    assert chem["norm_shares"] == pytest.approx(2 / 3) and phys["norm_shares"] == pytest.approx(1 / 3)
    assert bio["norm_shares"] == pytest.approx(1 / 4) and bio["usage_s"] == 0 and bio["fairshare"] == 1.0
    # 2^(-U/S) per level; a user's factor is its account's times its own within the account
    assert chem["fairshare"] == pytest.approx(2 ** (-0.5 / (2 / 3)))
    assert phys["fairshare"] == pytest.approx(2 ** (-0.5 / (1 / 3)))
    alice, bob, erin = by[("chem", "alice")], by[("chem", "bob")], by[("chem", "erin")]
    assert alice["effective_usage"] == 0.75 and bob["raw_shares"] == 3
    assert bob["norm_shares"] == pytest.approx(3 / 4) and alice["norm_shares"] == pytest.approx(1 / 4)
    assert alice["fairshare"] == pytest.approx(chem["fairshare"] * 2 ** (-0.75 / 0.25))
    assert erin["usage_s"] == 0 and erin["fairshare"] == pytest.approx(chem["fairshare"])
    # the same factor the policy orders by
    same = p.fairshare_factor(SessionInfo("x", "p", account="chem", user="alice"), 0)
    assert alice["fairshare"] == pytest.approx(same)


def test_usage_decays_in_the_share_view():
    p = policy_with_usage({**POLICY, "decay_half_life_s": 100})
    chem = next(r for r in share_rows(p, 100.0) if r["account"] == "chem" and not r["user"])
    assert chem["usage_s"] == pytest.approx(20) and chem["effective_usage"] == pytest.approx(0.5)


def test_prio_row_gives_factors_weights_and_the_weighted_sum():
    p = policy_with_usage()
    info = SessionInfo("s1", "p", cls="interactive", account="chem", user="alice")
    r = prio_row(p, info, 160.0, pending=5, since=10.0)
    f = r["factors"]
    assert r["tier"] == 1 and r["pending"] == 5 and r["waiting_s"] == 150
    assert f["age"] == pytest.approx(150 / 300) and f["qos"] == 1.0
    assert f["fairshare"] == pytest.approx(p.fairshare_factor(info, 160.0))
    assert r["weighted"] == pytest.approx({"age": 100 * f["age"], "fairshare": 1000 * f["fairshare"],
                                           "qos": 10 * f["qos"], "job_size": 0.0})
    assert r["priority"] == pytest.approx(sum(r["weighted"].values()))
    assert prio_row(p, info, 160.0, pending=5, since=None)["factors"]["age"] == 0


def test_prio_under_another_policy_shows_the_factors_with_zero_weights():
    p = Fifo(parse_policy({"name": "fifo"}))
    p.usage.charge("alice", "chem", 5, 0.0)
    r = prio_row(p, SessionInfo("s", "p", account="chem", user="alice"), 1.0, pending=1, since=0.0)
    assert r["priority"] == 0 and 0 < r["factors"]["fairshare"] < 1


def test_policy_doc_has_every_weight_class_limit_and_quota():
    p = policy_with_usage()
    q = QuotaLedger(p.cfg.quotas, now=86_400 * 3)
    q.charge("alice", "chem", 25, 86_400 * 3 + 5)
    doc = policy_doc(p, q, 86_400 * 3 + 10)
    assert doc["weights"] == {"accounts": {"chem": 2, "phys": 1}, "users": {"bob": 3},
                              "classes": {"interactive": 4, "batch": 1.0, "debug": 2.0}}
    assert doc["classes"]["interactive"]["tier"] == 1 and doc["classes"]["batch"]["max_pending_per_user"] is None
    assert doc["options"]["priority_weight_fairshare"] == 1000 and doc["options"]["priority_max_age_s"] == 300
    assert doc["quotas"]["chem"]["used_s"] == 25 and doc["quotas"]["chem"]["ratio"] == 0.25
    assert doc["quotas"]["chem"]["window_start"] == 86_400 * 3
    assert doc["quotas"]["chem"]["window_end"] == 86_400 * 4 and doc["quotas"]["chem"]["since"] == 86_400 * 3
    for k in ("max_wait_s", "decay_half_life_s", "preempt", "merge", "max_batch_s", "return_credit_s",
              "max_pending_per_session"):
        assert k in doc
