"""Parent/child account shares (policy.account_parents), in simulated time: validation, the factor
against the share down the tree, that it is the two-level rule without a tree, and that usage settles
to the tree's shares under saturation (both levels)."""
from __future__ import annotations

import random

import pytest

from qsched.config import parse_policy
from qsched.errors import ConfigError
from qsched.policy import FairShare, SessionInfo, UsageLedger
from qsched.policy.report import share_rows
from qsched.policy.tree import AccountTree

TREE = {"account_parents": {"chem": "science", "phys": "science"},
        "weights": {"accounts": {"science": 1, "eng": 1, "chem": 3, "phys": 1}},
        "priority_weight_fairshare": 1000, "decay_half_life_s": 0}


def test_account_parents_are_validated():
    assert parse_policy(TREE).account_parents == {"chem": "science", "phys": "science"}
    for bad, field, words in (({"a": "b", "b": "a"}, "policy.account_parents.a", "cycle (a -> b -> a)"),
                              ({"a": "a"}, "policy.account_parents.a", "cycle"),
                              ({"a": 3}, "policy.account_parents.a", "parent account's name"),
                              ({"a": ""}, "policy.account_parents.a", "parent account's name")):
        with pytest.raises(ConfigError) as e:
            parse_policy({"account_parents": bad})
        assert e.value.field == field and words in e.value.message
    deep = {f"a{i}": f"a{i + 1}" for i in range(20)}
    with pytest.raises(ConfigError, match="deeper than 16"):
        parse_policy({"account_parents": deep})


def ledger(**used):
    u = UsageLedger(0)
    for acct, v in used.items():
        u.charge("", acct, v, 0.0)
    return u


def test_the_factor_compares_usage_with_the_share_down_the_tree():
    shares = parse_policy(TREE).account_weights
    t = AccountTree(parse_policy(TREE).account_parents)
    assert t.chain("chem") == ["science", "chem"] and t.chain("eng") == ["eng"]
    balanced = ledger(chem=30, phys=10, eng=40)             # usage in proportion to the shares
    assert t.norm_share("chem", t.aggregate(balanced, 0), shares) == pytest.approx(0.5 * 0.75)
    for a in ("chem", "phys", "eng", "science"):
        assert t.factor(a, balanced, shares, 0) == pytest.approx(0.5), a       # 2^-1 at any depth
    # chem overuses: it (and its parent) fall behind eng; phys keeps its share of the whole (1/2 x 1/4)
    heavy = ledger(chem=70, phys=10, eng=40)
    assert t.factor("chem", heavy, shares, 0) == pytest.approx(2 ** (-(70 / 120) / 0.375))
    assert t.factor("phys", heavy, shares, 0) == pytest.approx(2 ** (-(10 / 120) / 0.125))
    assert t.factor("science", heavy, shares, 0) == pytest.approx(2 ** (-(80 / 120) / 0.5))
    assert t.factor("eng", heavy, shares, 0) > t.factor("chem", heavy, shares, 0)
    assert t.factor("phys", heavy, shares, 0) > t.factor("chem", heavy, shares, 0)
    # a sibling without usage does not take part in the shares: alone in science, chem has all of it
    alone = ledger(chem=40, eng=40)
    assert t.norm_share("chem", t.aggregate(alone, 0), shares) == pytest.approx(0.5)
    assert t.factor("phys", alone, shares, 0) == 1.0        # no usage of its own: 2^0


def test_without_parents_the_tree_is_the_two_level_rule():
    rng = random.Random(7)
    cfg = parse_policy({"weights": {"accounts": {"a": 2, "b": 0.5, "c": 1}}})
    for _ in range(50):
        fs = FairShare(cfg)              # a fresh one: its share sums are cached per ledger
        fs.usage = ledger(**{n: rng.uniform(0, 100) for n in "abc" if rng.random() < 0.8})
        for acct in "abcd":
            two_level = fs.fairshare_factor(SessionInfo("x", "p", account=acct), 0)
            assert AccountTree({}).factor(acct, fs.usage, cfg.account_weights, 0) == pytest.approx(two_level)


def test_usage_settles_to_the_trees_shares_under_saturation():
    cfg = parse_policy(TREE)
    fs = FairShare(cfg)
    sessions = {a: SessionInfo(a, "p", account=a, user=f"u-{a}") for a in ("chem", "phys", "eng")}
    t = 0.0
    for seq, (sid, inf) in enumerate(sessions.items()):
        fs.enqueue(sid, "p", inf, seq, now=t)
    got = {a: 0.0 for a in sessions}
    for i in range(4000):
        sid = fs.pick("p", now=t)
        fs.charge(sid, 1.0)
        t += 1.0
        fs.correct(sid, 1.0, 1.0)
        fs.usage.charge(sessions[sid].user, sessions[sid].account, 1.0, t)
        if i >= 1000:
            got[sid] += 1
        fs.enqueue(sid, "p", sessions[sid], 10 + i, now=t)
    total = sum(got.values())
    # science 1 : eng 1 at the top; chem 3 : phys 1 within science
    for a, want in (("eng", 0.5), ("chem", 0.375), ("phys", 0.125)):
        assert got[a] / total == pytest.approx(want, abs=0.05 * want + 0.005), (a, got)


def test_share_rows_show_every_node_with_its_subtrees_usage():
    cfg = parse_policy(TREE)
    fs = FairShare(cfg)
    fs.usage = ledger(chem=30, phys=10, eng=40)
    rows = [r for r in share_rows(fs, 0.0) if not r["user"]]
    assert [r["account"] for r in rows] == ["eng", "science", "chem", "phys"]
    by = {r["account"]: r for r in rows}
    assert by["science"]["usage_s"] == 40 and by["science"]["effective_usage"] == 0.5
    assert by["chem"]["parent"] == "science" and by["chem"]["effective_usage"] == 0.375
    assert by["chem"]["norm_shares"] == pytest.approx(0.375) and by["chem"]["fairshare"] == pytest.approx(0.5)
