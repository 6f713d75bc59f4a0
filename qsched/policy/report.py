"""What the admin tools show (`qsched share`, `qsched prio`, `qsched policy show`): pure functions of a
policy, its usage ledger, quotas and the time; the daemon's routes pass them what it knows.

Factors are the multifactor ones of the fair-share policy (fair_share.py), computed the same way
whatever policy runs, so an admin sees what turning priority weights on would do."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .base import Policy, SessionInfo
from .fair_share import WEIGHTS, FairShare
from .quota import QuotaLedger, window_start


def _factors_policy(policy: Policy) -> FairShare:
    if isinstance(policy, FairShare):
        return policy
    fs = FairShare(policy.cfg)
    fs.usage = policy.usage
    return fs


def share_rows(policy: Policy, now: float, assocs: Iterable[tuple[str, str]] = ()) -> list[dict]:
    """As sshare: one row per account, then one per user within it, with the configured shares
    (raw_shares), the share among those with usage at that level (norm_shares), the decayed usage
    (usage_s, device-seconds), its fraction of the level's (effective_usage) and the fair-share factor.
    With an account tree (policy.account_parents) every node is shown, a parent before its children,
    with its subtree's usage; an account's norm_shares is then its fraction of the whole (the product
    down the tree) and effective_usage its fraction of everyone's usage. `assocs`: (account, user)
    pairs to show even without usage (open sessions')."""
    u, cfg = policy.usage, policy.cfg
    aw, uw = cfg.account_weights, cfg.user_weights
    fs = _factors_policy(policy)
    pairs = {tuple(a.partition("/")[::2]) for a in u.names("assoc")} | {(a, us) for a, us in assocs if a}
    names = set(u.names("account")) | set(aw) | {a for a, _ in pairs}
    tree = fs.tree
    agg = tree.aggregate(u, now) if tree is not None else {}
    if tree is not None:                    # every node of the tree, each parent before its children
        names |= set(tree.parents) | set(tree.parents.values())
        accounts = sorted(names, key=tree.chain)
    else:
        accounts = sorted(names)
    used_accounts = set(u.names("account"))
    total = u.total("account", now)
    rows = []

    def norm(name: str, weights: dict[str, float], with_usage: Iterable[str]) -> float:
        names = set(with_usage) | {name}
        return weights.get(name, 1.0) / sum(weights.get(n, 1.0) for n in names)

    for a in accounts:
        if tree is not None:
            sub, everyone = agg.get(a, 0.0), sum(v for n, v in agg.items() if tree.parent(n) is None)
            row = {"usage_s": sub, "norm_shares": tree.norm_share(a, agg, aw),
                   "effective_usage": sub / everyone if everyone else 0.0, "parent": tree.parent(a) or ""}
        else:
            row = {"usage_s": u.get("account", a, now), "norm_shares": norm(a, aw, used_accounts), "parent": "",
                   "effective_usage": u.get("account", a, now) / total if total > 0 else 0.0}
        rows.append({"account": a, "user": "", "raw_shares": aw.get(a, 1.0), **row,
                     "fairshare": fs.fairshare_factor(SessionInfo("", "", account=a), now)})
        used = u.get("account", a, now)            # the account's own (its users share it)
        users = sorted(us for acct, us in pairs if acct == a and us)
        with_usage = [us for acct, us in pairs if acct == a and f"{a}/{us}" in u.names("assoc")]
        for us in users:
            uused = u.get("assoc", f"{a}/{us}", now)
            rows.append({"account": a, "user": us, "parent": a, "raw_shares": uw.get(us, 1.0),
                         "norm_shares": norm(us, uw, with_usage), "usage_s": uused,
                         "effective_usage": uused / used if used > 0 else 0.0,
                         "fairshare": fs.fairshare_factor(SessionInfo("", "", account=a, user=us), now)})
    return rows


def prio_row(policy: Policy, info: SessionInfo, now: float, *, pending: int, since: float | None) -> dict:
    """As sprio: a backlogged session's factors (each in [0, 1], age may pass 1), the priority weights
    they are multiplied by, and the weighted sum within its tier."""
    fs = _factors_policy(policy)
    f = fs.factors(info, now, pending)
    f["age"] = (now - since) / float(fs.options["priority_max_age_s"]) if since is not None else 0.0
    weights = dict(zip(("age", "fairshare", "qos", "job_size"), (float(fs.options[w]) for w in WEIGHTS)))
    weighted = {k: weights[k] * f[k] for k in weights}
    return {"id": info.id, "user": info.user, "account": info.account, "class": info.cls, "pool": info.pool,
            "tier": policy.tier_of(info), "pending": pending, "priority": sum(weighted.values()),
            "factors": f, "weighted": weighted, "waiting_s": now - since if since is not None else 0.0}


def policy_doc(policy: Policy, quota: QuotaLedger, now: float) -> dict:
    """The effective policy: every weight, class, limit and quota (with its use now), the policy's own
    options with their defaults filled in."""
    cfg = policy.cfg
    doc = dataclasses.asdict(cfg)
    doc["options"] = dict(policy.options)
    doc["weights"] = {"accounts": doc.pop("account_weights"), "users": doc.pop("user_weights"),
                      "classes": doc.pop("class_weights")}
    doc["quotas"] = {k: {**dataclasses.asdict(q), "used_s": quota.used(k, now), "ratio": quota.ratio(k, now),
                         "window_start": window_start(q, now), "window_end": window_start(q, now) + q.period_s,
                         "since": quota.since(k)}
                     for k, q in quota.specs.items()}
    return doc
