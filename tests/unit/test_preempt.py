"""Preemption at batch boundaries, the pure part: which waiting batches are tried, in what order, and
what a failed recall rules out; and the tier queries the scheduler asks the policy (simulated time)."""
from __future__ import annotations

from qsched.config import parse_policy
from qsched.policy import FairShare, Fifo, SessionInfo
from qsched.policy.preempt import Dispatched, Recaller, candidates


def d(batch, session, *, tier=0, order=0, device="dev0", pool="p", promoted=False, started=False, behind=False):
    return Dispatched(batch, device, session, pool, tier, order, promoted, started, behind)


def walk(ordered, taken: set[str], *, backlog: dict[tuple[str, int], int], free=None):
    """Run the Recaller as the scheduler does; `taken`: the batches still in an inbox."""
    r = Recaller(ordered, backlog_above=lambda pool, tier: backlog.get((pool, tier), 0), free_slots=free or {})
    tried, recalled = [], []
    for b in r:
        tried.append(b.batch)
        ok = b.batch in taken
        r.done(b, ok)
        if ok:
            recalled.append(b.batch)
    return tried, recalled


def test_only_lower_tiers_than_the_backlogged_top_and_never_a_promotion():
    out = [d("b1", "low", tier=0, order=1), d("b2", "mid", tier=1, order=2), d("b3", "top", tier=2, order=3),
           d("b4", "low2", tier=0, order=4, promoted=True), d("b5", "other", tier=0, order=5, pool="q")]
    got = candidates(out, {"p": 2, "q": None})
    # newest first; b3 is of the top tier; q has no backlog; b4 is listed (it keeps its session's older
    # batches) but never taken back
    assert [b.batch for b in got] == ["b4", "b2", "b1"]
    assert walk(got, {"b1", "b2", "b4"}, backlog={("p", 0): 5, ("p", 1): 5}) == (["b2", "b1"], ["b2", "b1"])
    assert candidates(out, {"p": 0}) == []


def test_a_batch_that_stays_keeps_its_sessions_older_batches():
    # L's newest batch stays (a promotion, or no budget left for it, or its device's inbox was found
    # taken): L's older batch on another device must stay too, or its tasks would follow the newer's
    for newest in (d("n", "L", order=3, device="dev1", promoted=True),
                   d("n", "L", order=3, device="dev1", behind=True)):
        ordered = candidates([d("o", "L", order=1), newest], {"p": 1})
        assert walk(ordered, {"o", "n"}, backlog={("p", 0): 5}) == ([], [])
    ordered = candidates([d("o", "L", order=1), d("n", "L", order=3, device="dev1"),
                          d("x", "M", order=4, device="dev1")], {"p": 1})
    # x (dev1, newest) was taken by its worker: dev1's older entry n was too, so L's o stays
    assert walk(ordered, {"o", "n"}, backlog={("p", 0): 5}) == (["x"], [])


def test_budget_is_the_backlog_above_less_free_slots():
    ordered = candidates([d(f"b{i}", f"s{i}", order=i, device=f"dev{i}") for i in range(4)], {"p": 1})
    inboxes = {b.batch for b in ordered}
    assert walk(ordered, inboxes, backlog={("p", 0): 2})[1] == ["b3", "b2"]
    assert walk(ordered, inboxes, backlog={("p", 0): 2}, free={"p": 1})[1] == ["b3"]
    assert walk(ordered, inboxes, backlog={("p", 0): 2}, free={"p": 2})[1] == []


def test_a_running_batch_rules_out_its_sessions_and_its_devices_older_batches():
    # session L: b1 (dev0), b2 (dev1), b3 (dev0, newest). b3 is running, so b1 (older, same device and
    # session) ran before it; b2 is older than a started batch of its session: taking it back would
    # put its tasks after b3's
    ordered = candidates([d("b1", "L", order=1), d("b2", "L", order=2, device="dev1"), d("b3", "L", order=3),
                          d("c1", "M", order=4, device="dev2")], {"p": 1})
    tried, recalled = walk(ordered, {"b1", "b2", "c1"}, backlog={("p", 0): 5})
    assert tried == ["c1", "b3"] and recalled == ["c1"]
    # known started (an earlier recall failed): no Redis call for it, and the same rule holds
    ordered = candidates([d("b1", "L", order=1, device="dev1"), d("b3", "L", order=3, started=True)], {"p": 1})
    assert walk(ordered, {"b1"}, backlog={("p", 0): 5}) == ([], [])


def test_a_batch_behind_one_its_session_already_ran_stays_and_its_device_is_not_blocked():
    # L's newer batch ran on another device (it finished): taking back its older one, still waiting
    # on dev0, would dispatch it again after the newer one; dev0's other waiting batch may still go
    ordered = candidates([d("x", "M", order=1), d("old", "L", order=2, behind=True)], {"p": 1})
    assert walk(ordered, {"x", "old"}, backlog={("p", 0): 5}) == (["x"], ["x"])


def test_a_device_whose_newer_entry_was_taken_has_no_older_one_waiting():
    ordered = candidates([d("a", "A", order=1), d("b", "B", order=2)], {"p": 1})
    tried, recalled = walk(ordered, {"a"}, backlog={("p", 0): 5})
    assert tried == ["b"] and recalled == []


def _classes():
    return parse_policy({"classes": {"interactive": {"tier": 1}, "batch": {"tier": 0}}})


def test_top_tier_and_backlog_above():
    for cls in (FairShare, Fifo):
        p = cls(_classes())
        assert p.top_tier("p") is None
        p.enqueue("b", "p", SessionInfo("b", "p", cls="batch"), 1, now=0.0)
        assert p.top_tier("p") == 0 and p.backlogged_above("p", 0) == 0
        p.enqueue("i", "p", SessionInfo("i", "p", cls="interactive"), 2, now=0.0)
        assert p.top_tier("p") == 1 and p.backlogged_above("p", 0) == 1 and p.backlogged_above("p", 1) == 0
        assert p.pick("p", now=1.0) == "i" and p.top_tier("p") == 0


def test_a_preempted_session_keeps_its_wait_for_the_anti_starvation_bound():
    cfg = parse_policy({"classes": {"interactive": {"tier": 1}}, "max_wait_s": 10})
    p = FairShare(cfg)
    low = SessionInfo("low", "p", cls="batch")
    p.enqueue("low", "p", low, 1, now=0.0)
    assert p.pick("p", now=4.0) == "low" and not p.last_promoted and p.last_since == 0.0
    # its batch is preempted at t=5 and goes back with the wait it had: at t=10 it is promoted even
    # though an interactive session is backlogged
    p.enqueue("hi", "p", SessionInfo("hi", "p", cls="interactive"), 2, now=5.0)
    p.enqueue("low", "p", low, 1, now=5.0, since=p.last_since)
    assert p.pick("p", now=9.0) == "hi"
    p.enqueue("hi", "p", SessionInfo("hi", "p", cls="interactive"), 3, now=9.0)
    assert p.pick("p", now=10.0) == "low" and p.last_promoted
    # a fresh enqueue (no since) would have waited from t=5 and not been promoted at t=10
    q = FairShare(cfg)
    q.enqueue("hi", "p", SessionInfo("hi", "p", cls="interactive"), 2, now=5.0)
    q.enqueue("low", "p", low, 1, now=5.0)
    assert q.pick("p", now=10.0) == "hi"
