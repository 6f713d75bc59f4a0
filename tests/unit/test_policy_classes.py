"""Classes, tiers, anti-starvation, decayed usage and multifactor priority, in simulated time (no Redis,
no clock: every event carries its `now`)."""
from __future__ import annotations

import random

import pytest

from qsched.config import PolicyConfig, parse_policy
from qsched.errors import ConfigError
from qsched.policy import FairShare, Fifo, Policy, RoundRobin, SessionInfo, UsageLedger, make_policy, register
from qsched.policy.base import Option

DAY = 86_400.0


def info(sid, cls="batch", user="", account="", weight=1.0):
    return SessionInfo(sid, "p", cls=cls, account=account, user=user, weight=weight)


def saturated(policy, sessions: dict[str, SessionInfo], picks: int, *, t0=0.0, cost=1.0, ledger=None):
    """Every session always backlogged, one device, each batch `cost` device-seconds. The ledger (if
    any) is charged at completion as the scheduler does. Returns the pick order and each pick's time."""
    t, seq, order, times = t0, 0, [], []
    for sid, inf in sessions.items():
        seq += 1
        policy.enqueue(sid, "p", inf, seq, now=t)
    for _ in range(picks):
        sid = policy.pick("p", now=t)
        assert sid is not None
        policy.charge(sid, cost)
        order.append(sid)
        times.append(t)
        t += cost
        policy.correct(sid, cost, cost)
        if ledger is not None:
            ledger.charge(sessions[sid].user, sessions[sid].account, cost, t)
        seq += 1
        policy.enqueue(sid, "p", sessions[sid], seq, now=t)
    return order, times


# ---------------------------------------------------------------------------------- SessionInfo
def test_session_info_gives_the_same_picks_as_the_folded_weight():
    cfg = parse_policy({"weights": {"accounts": {"chem": 2}, "users": {"bob": 3}}})
    sessions = {"a": info("a", account="chem"), "b": info("b", user="bob"), "c": info("c", cls="interactive"),
                "d": info("d", weight=0.5)}
    with_info, _ = saturated(FairShare(cfg), sessions, 400)
    folded = FairShare(cfg)
    weights = {sid: folded.weight_of(i) for sid, i in sessions.items()}
    assert weights == {"a": 2, "b": 3, "c": 4, "d": 0.5}
    with_weights, _ = saturated(folded, {sid: weights[sid] for sid in sessions}, 400)  # type: ignore[arg-type]
    assert with_info == with_weights


def test_session_info_is_frozen():
    with pytest.raises(AttributeError):
        info("a").user = "mallory"  # type: ignore[misc]


@pytest.mark.parametrize("raw", [{}, {"priority_weight_age": 0, "priority_weight_fairshare": 0,
                                      "priority_weight_qos": 0, "priority_weight_job_size": 0,
                                      "decay_half_life_s": 3600, "max_wait_s": 5}])
def test_new_knobs_at_zero_reproduce_todays_picks(raw):
    rng = random.Random(11)
    costs = {s: rng.uniform(0.01, 0.2) for s in "abcdef"}
    sessions = {s: info(s, cls=rng.choice(["batch", "interactive", "debug"])) for s in costs}

    def run(p):
        order, t, seq = [], 0.0, 0
        for s in sessions:
            seq += 1
            p.enqueue(s, "p", sessions[s], seq, now=t)
        for _ in range(500):
            s = p.pick("p", now=t)
            p.charge(s, costs[s] * 1.1)
            t += costs[s]
            p.correct(s, costs[s] * 1.1, costs[s])
            seq += 1
            p.enqueue(s, "p", sessions[s], seq, now=t)
            order.append(s)
        return order
    assert run(FairShare(parse_policy(raw))) == run(FairShare(PolicyConfig()))


# ---------------------------------------------------------------------------------- tiers
TIERS = {"classes": {"interactive": {"tier": 1}, "batch": {"tier": 0}}}


@pytest.mark.parametrize("policy_cls", [FairShare, Fifo, RoundRobin])
def test_tiers_are_strict(policy_cls):
    p = policy_cls(parse_policy({**TIERS, "max_wait_s": 1e9}))
    sessions = {"lo1": info("lo1"), "hi": info("hi", cls="interactive"), "lo2": info("lo2", weight=100)}
    order, _ = saturated(p, sessions, 200)
    assert set(order) == {"hi"}


@pytest.mark.parametrize("policy_cls", [FairShare, Fifo, RoundRobin])
def test_a_starving_lower_tier_is_promoted_after_max_wait_s(policy_cls):
    p = policy_cls(parse_policy({**TIERS, "max_wait_s": 10}))
    sessions = {"hi1": info("hi1", cls="interactive"), "hi2": info("hi2", cls="interactive"), "lo": info("lo")}
    order, times = saturated(p, sessions, 300, cost=1.0)
    lo_at = [t for sid, t in zip(order, times) if sid == "lo"]
    # enqueued at 0, promoted at 10, picked again 10 s after each re-enqueue (it finishes 1 s later)
    assert lo_at[:3] == [10.0, 21.0, 32.0]
    gaps = [b - a for a, b in zip([0.0, *lo_at], lo_at)]
    assert max(gaps) <= 10 + 1.0 and len(lo_at) == pytest.approx(300 / 11, abs=1)
    assert p.promotions == len(lo_at)
    assert {"hi1", "hi2"} <= set(order)


def test_lower_tier_runs_whenever_the_higher_tier_is_idle():
    p = FairShare(parse_policy(TIERS))
    p.enqueue("lo", "p", info("lo"), 1, now=0.0)
    assert p.pick("p", now=0.0) == "lo"
    p.enqueue("lo", "p", info("lo"), 2, now=1.0)
    p.enqueue("hi", "p", info("hi", cls="interactive"), 3, now=1.0)
    assert [p.pick("p", now=1.0), p.pick("p", now=1.0), p.pick("p", now=1.0)] == ["hi", "lo", None]


def test_weights_within_a_tier_hold_next_to_another_tier():
    cfg = parse_policy({"classes": {"interactive": {"tier": 1}, "gold": {"tier": 0, "weight": 3}},
                        "max_wait_s": 1e9})
    order, _ = saturated(FairShare(cfg), {"g": info("g", cls="gold"), "b": info("b")}, 400)
    assert order.count("g") / order.count("b") == pytest.approx(3.0, rel=0.02)


# ---------------------------------------------------------------------------------- decayed usage
def test_usage_decays_with_its_half_life():
    u = UsageLedger(half_life_s=DAY)
    u.charge("alice", "chem", 100.0, now=0.0)
    assert u.get("user", "alice", DAY) == pytest.approx(50.0)
    assert u.get("account", "chem", 3 * DAY) == pytest.approx(12.5)
    u.charge("bob", "chem", 10.0, now=DAY)
    assert u.total("account", DAY) == pytest.approx(60.0)
    assert u.total("user", 2 * DAY) == pytest.approx(30.0)
    assert UsageLedger(half_life_s=0).get("user", "x", 1e9) == 0.0


def test_usage_round_trips_and_unsaved_charges_survive_a_reload():
    u = UsageLedger(DAY)
    u.charge("alice", "chem", 8.0, now=0.0)
    saved = u.take_dirty()
    assert saved == {"user": {"alice": (8.0, 0.0)}, "account": {"chem": (8.0, 0.0)},
                     "assoc": {"chem/alice": (8.0, 0.0)}} and not u.dirty
    u.charge("alice", "chem", 2.0, now=0.0)      # not written yet
    u.load(saved, now=0.0)
    assert u.get("user", "alice", 0.0) == 10.0
    fresh = UsageLedger(DAY)
    fresh.load(saved, now=DAY)
    assert fresh.get("user", "alice", DAY) == pytest.approx(4.0) and fresh.total("user", DAY) == pytest.approx(4.0)


FS = {"priority_weight_fairshare": 1000, "decay_half_life_s": DAY}


def _heavy_and_light(half_life_s: float, later_s: float, picks: int = 60):
    """Yesterday (t = 0) heavy ran 100 device-seconds alone; `later_s` after that, heavy and light
    compete at saturation with 1 s batches. Returns the pick order."""
    p = FairShare(parse_policy({**FS, "decay_half_life_s": half_life_s}))
    p.usage = ledger = UsageLedger(half_life_s)
    ledger.charge("heavy", "a", 100.0, now=0.0)
    sessions = {"h": info("h", user="heavy", account="a"), "l": info("l", user="light", account="a")}
    order, _ = saturated(p, sessions, picks, t0=later_s, ledger=ledger)
    return order


def test_yesterdays_heavy_user_starts_behind_and_catches_up_as_usage_decays():
    fresh = _heavy_and_light(DAY, 1.0)
    assert fresh.count("h") == 0                      # 100 s behind: light runs all 60 batches
    a_day_later = _heavy_and_light(DAY, DAY)          # 50 s behind
    assert a_day_later[:45].count("h") == 0 and a_day_later[55:].count("h") >= 2
    three_days = _heavy_and_light(DAY, 3 * DAY)       # 12.5 s behind, then they alternate
    first_h = three_days.index("h")
    assert 11 <= first_h <= 14
    tail = three_days[first_h:]
    assert abs(tail.count("h") - tail.count("l")) <= 2
    no_decay = _heavy_and_light(0.0, 3 * DAY)         # half-life 0: usage never decays
    assert no_decay.count("h") == 0


def test_without_a_fairshare_weight_usage_changes_nothing():
    p = FairShare(parse_policy({"decay_half_life_s": DAY}))
    p.usage.charge("heavy", "a", 1e6, now=0.0)
    order, _ = saturated(p, {"h": info("h", user="heavy"), "l": info("l", user="light")}, 20, t0=1.0)
    assert order == ["h", "l"] * 10


def test_fairshare_factor_follows_configured_shares():
    """Account shares 3:1 and equal usage: the account with 3x the share has the higher factor, and at
    saturation usage settles at 3:1."""
    p = FairShare(parse_policy({**FS, "weights": {"accounts": {"big": 3}}}))
    sessions = {"b": info("b", user="u1", account="big"), "s": info("s", user="u2", account="small")}
    order, _ = saturated(p, sessions, 400, ledger=p.usage)
    assert p.usage.get("account", "big", 400.0) / p.usage.get("account", "small", 400.0) == pytest.approx(3.0, rel=0.1)
    assert order.count("b") / order.count("s") == pytest.approx(3.0, rel=0.1)


def test_fairshare_from_slurm_replaces_the_factor_of_associations_slurm_knows():
    """fairshare_source slurm: Slurm's factor (user association first, then account) decides the order,
    even against qsched's own usage; a session Slurm does not know keeps qsched's factor; the default
    source ignores what was imported."""
    from qsched.slurm.shares import SlurmShares
    imported = SlurmShares(accounts={"chem": 0.2, "phys": 0.9}, users={("chem", "alice"): 0.1})
    p = FairShare(parse_policy({**FS, "fairshare_source": "slurm"}))
    p.usage.charge("bob", "phys", 100.0, now=0.0)          # qsched alone would put phys last
    p.imported = imported
    alice, bob, carol = info("a", user="alice", account="chem"), info("b", user="bob", account="phys"), \
        info("c", user="carol", account="chem")
    assert p.fairshare_factor(alice, 1.0) == 0.1 and p.fairshare_factor(carol, 1.0) == 0.2
    assert p.fairshare_factor(bob, 1.0) == 0.9
    stranger = info("x", user="x", account="local")
    assert p.fairshare_factor(stranger, 1.0) == pytest.approx(1.0)    # qsched's own: no usage of its own
    for sid, i in (("a", alice), ("b", bob), ("c", carol)):
        p.enqueue(sid, "p", i, 1, now=1.0)
    assert [p.pick("p", now=1.0) for _ in range(3)] == ["b", "c", "a"]
    own = FairShare(parse_policy(FS))                      # fairshare_source qsched (the default)
    own.usage.charge("bob", "phys", 100.0, now=0.0)
    own.imported = imported
    assert own.fairshare_factor(bob, 1.0) < 0.5 and own.fairshare_factor(alice, 1.0) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------- multifactor
def test_qos_factor_orders_classes_within_a_tier():
    p = FairShare(parse_policy({"priority_weight_qos": 10}))
    p.enqueue("b", "p", info("b"), 1, now=0.0)
    p.enqueue("d", "p", info("d", cls="debug"), 2, now=0.0)
    p.enqueue("i", "p", info("i", cls="interactive"), 3, now=0.0)
    assert [p.pick("p", now=0.0) for _ in range(3)] == ["i", "d", "b"]
    f = p.factors(info("d", cls="debug"), 0.0)
    assert f["qos"] == 0.5


def test_age_factor_serves_the_longest_waiting_turn_first():
    p = FairShare(parse_policy({"priority_weight_age": 1, "priority_max_age_s": 10, "priority_weight_qos": 1}))
    p.enqueue("b", "p", info("b"), 1, now=0.0)                       # qos 0.25, waited 20 s: age 2
    p.enqueue("i", "p", info("i", cls="interactive"), 2, now=20.0)   # qos 1.0, waited 0
    assert p.pick("p", now=20.0) == "b"


def test_job_size_factor_and_favor_small():
    big = FairShare(parse_policy({"priority_weight_job_size": 1, "priority_job_size_ref": 10}))
    small = FairShare(parse_policy({"priority_weight_job_size": 1, "priority_job_size_ref": 10,
                                    "priority_favor_small": True}))
    for p in (big, small):
        p.enqueue("few", "p", info("few"), 1, now=0.0, size=1)
        p.enqueue("many", "p", info("many"), 2, now=0.0, size=1000)
    assert big.pick("p", now=0.0) == "many" and small.pick("p", now=0.0) == "few"
    assert big.factors(info("x"), 0.0, size=10)["job_size"] == 0.5


# ---------------------------------------------------------------------------------- registry, config
class Lottery(Policy):
    name = "lottery"
    OPTIONS = (Option("tickets", 10, "tickets per session", lo=1, kind="integer"),)

    def _key(self, sid, pool, info, head_seq, now, size):
        return -self.options["tickets"] * info.weight


def test_registry_takes_plugins_with_their_own_validated_options(monkeypatch):
    import qsched.policy as reg
    monkeypatch.setattr(reg, "POLICIES", dict(reg.POLICIES))      # leave the real registry as it was
    register("lottery", Lottery)
    cfg = parse_policy({"name": "lottery", "tickets": 5})
    p = make_policy(cfg)
    assert isinstance(p, Lottery) and p.options == {"tickets": 5}
    with pytest.raises(ConfigError) as e:
        parse_policy({"name": "lottery", "tickets": 0})
    assert e.value.field == "policy.tickets"
    with pytest.raises(ConfigError) as e:
        parse_policy({"name": "lottery", "priority_weight_age": 1})   # fair-share's, not lottery's
    assert e.value.field == "policy.priority_weight_age"
    with pytest.raises(TypeError):
        register("bad", dict)  # type: ignore[arg-type]


def test_entry_point_plugins_are_loaded_and_a_broken_one_is_left_out(monkeypatch, caplog):
    import qsched.policy as reg

    class EP:
        def __init__(self, name, obj):
            self.name, self.value, self._obj = name, f"x:{name}", obj

        def load(self):
            if isinstance(self._obj, Exception):
                raise self._obj
            return self._obj
    monkeypatch.setattr(reg, "_plugins_loaded", False)
    monkeypatch.setattr(reg, "POLICIES", dict(reg.POLICIES))
    monkeypatch.setattr(reg, "entry_points", lambda group: [EP("raffle", Lottery), EP("broken", ImportError("no"))]
                        if group == reg.ENTRY_POINT_GROUP else [])
    names = reg.registry()
    assert "raffle" in names and "broken" not in names and "fair-share" in names
    assert "broken" in caplog.text


def test_config_policy_names_come_from_the_registry():
    import qsched.config as config
    assert not hasattr(config, "POLICIES")
    with pytest.raises(ConfigError) as e:
        parse_policy({"name": "nope"})
    assert e.value.field == "policy.name" and "fair-share" in e.value.message


def test_classes_config():
    cfg = parse_policy({"weights": {"classes": {"batch": 2}},
                        "classes": {"interactive": {"tier": 1, "accounts": "chem", "users": ["alice"],
                                                    "max_sessions_per_user": 2, "max_task_device_s": 1.5},
                                    "bulk": {"weight": 0.5, "max_pending_per_user": 100}}})
    assert cfg.class_weights == {"interactive": 4.0, "bulk": 0.5, "batch": 2.0, "debug": 2.0}
    i = cfg.class_spec("interactive")
    assert (i.tier, i.accounts, i.users, i.max_sessions_per_user, i.max_task_device_s) == (1, ("chem",), ("alice",),
                                                                                          2, 1.5)
    assert cfg.class_spec("batch").tier == 0 and cfg.class_spec("batch").weight == 2.0
    assert FairShare(cfg).tier_of(info("x", cls="interactive")) == 1


@pytest.mark.parametrize("raw,field", [
    ({"classes": {"gold": {"tier": 1.5}}}, "policy.classes.gold.tier"),
    ({"classes": {"gold": {"max_sessions_per_user": 0}}}, "policy.classes.gold.max_sessions_per_user"),
    ({"classes": {"gold": {"accounts": [1]}}}, "policy.classes.gold.accounts"),
    ({"classes": {"gold": {"qos": 1}}}, "policy.classes.gold.qos"),
    ({"classes": {"gold": []}}, "policy.classes.gold"),
    ({"weights": {"classes": {"gold": 2}}, "classes": {"gold": {"weight": 3}}}, "policy.classes.gold.weight"),
    ({"max_wait_s": 0}, "policy.max_wait_s"),
    ({"decay_half_life_s": -1}, "policy.decay_half_life_s"),
    ({"priority_weight_fairshare": "high"}, "policy.priority_weight_fairshare"),
    ({"priority_favor_small": 1}, "policy.priority_favor_small"),
    ({"name": "fifo", "priority_weight_qos": 1}, "policy.priority_weight_qos"),
    ({"fairshare_source": "slurmdbd"}, "policy.fairshare_source"),
    ({"fairshare_refresh_s": 0.1}, "policy.fairshare_refresh_s"),
    ({"name": "fifo", "fairshare_source": "slurm"}, "policy.fairshare_source"),
])
def test_bad_class_and_option_values_name_the_field(raw, field):
    with pytest.raises(ConfigError) as e:
        parse_policy(raw)
    assert e.value.field == field


def test_queues_stay_bounded_when_sessions_re_enter_forever():
    p = FairShare(parse_policy(TIERS))
    for i in range(20_000):
        p.enqueue("a", "p", info("a"), i, now=float(i))
        p.enqueue("b", "p", info("b"), i, now=float(i))
        p.pick("p", now=float(i))
    q = p._q
    assert all(len(h) < 200 for h in q._heaps.values()) and all(len(h) < 200 for h in q._ages.values())
