from __future__ import annotations

from .base import Key, Option, Policy, SessionInfo
from .config import PolicyConfig
from .tree import AccountTree

WEIGHTS = ("priority_weight_age", "priority_weight_fairshare", "priority_weight_qos", "priority_weight_job_size")


class FairShare(Policy):
    """Weighted start-time fair queuing (Goyal et al., SFQ) on device-seconds, optionally ordered first by
    a multifactor priority in Slurm's vocabulary.

    Each session has a finish tag F. When it becomes backlogged its start tag is S = max(v - c / w, F),
    where v is the virtual time of the session's pool and tier (the start tag of the last pick) and c the
    policy's return_credit_s: a session back from a classical phase re-enters at (about) the current
    virtual time, so the credit it could bank while idle is at most c device-seconds. That small credit
    lets a returning session's burst run next rather than queue behind sessions that never stopped: a
    hybrid job's critical path is its own alternation, and waiting at every return stretches it. A pick
    advances v to the picked start tag and charges F = S + cost / weight with the estimated cost; the
    measured cost corrects F when the batch ends.

    Multifactor (any priority_weight_* above 0): within a tier the session with the highest
      P = w_age x age + w_fairshare x fairshare + w_qos x qos + w_job_size x job_size
    goes first, SFQ breaking ties. Factors are in [0, 1] as in Slurm:
      age       the wait of the session's current turn / priority_max_age_s (not capped, so the order
                of waiting sessions never goes stale between decisions);
      fairshare 2^(-U/S) for the account times the same for the user within its account, U the decayed
                usage as a fraction of its level's (all accounts', the account's), S the configured
                share as a fraction of the shares at that level of everyone with usage
                (PriorityDecayHalfLife is policy.decay_half_life_s);
      qos       the class's weight / the largest class weight;
      job_size  pending tasks / (pending + priority_job_size_ref), or 1 minus that with
                priority_favor_small.
    All weights 0 (the default) is plain SFQ.

    fairshare_source slurm: the fair-share factor of a session is Slurm's for its association (the
    user's FairShare in its account, else the account's), as last imported from sshare into
    `self.imported` (the scheduler keeps it across policy reloads); a session Slurm does not know
    (no job, or an account slurmdbd lacks) gets qsched's own factor.
    """
    name = "fair-share"
    OPTIONS = (
        Option("priority_weight_age", 0.0, "weight of the age factor (PriorityWeightAge)", lo=0.0),
        Option("priority_weight_fairshare", 0.0, "weight of the decayed fair-share factor (PriorityWeightFairshare)",
               lo=0.0),
        Option("priority_weight_qos", 0.0, "weight of the class factor (PriorityWeightQOS)", lo=0.0),
        Option("priority_weight_job_size", 0.0, "weight of the job-size factor (PriorityWeightJobSize)", lo=0.0),
        Option("priority_max_age_s", 300.0, "wait at which the age factor reaches 1 (PriorityMaxAge)", lo=1e-3),
        Option("priority_job_size_ref", 100, "pending tasks at which the job-size factor is 0.5", lo=1,
               kind="integer"),
        Option("priority_favor_small", False, "smaller backlogs first (PriorityFavorSmall)", kind="bool"),
        Option("fairshare_source", "qsched", "where the fair-share factor comes from: qsched's own decayed "
               "usage, or slurm (each association's factor from slurmdbd through sshare)", kind="choice",
               choices=("qsched", "slurm")),
        Option("fairshare_refresh_s", 60.0, "with fairshare_source slurm: how often sshare is read "
               "(PriorityCalcPeriod)", lo=1.0, hi=86_400.0),
    )

    def __init__(self, cfg: PolicyConfig | None = None):
        super().__init__(cfg)
        o = self.options
        self._w = [float(o[k]) for k in WEIGHTS]
        self._multifactor = any(w > 0 for w in self._w)
        self._max_class_w = max(self.cfg.class_weights.values(), default=1.0) or 1.0
        self._finish: dict[str, float] = {}
        self._start: dict[str, float] = {}
        self._weight: dict[str, float] = {}
        self._slot: dict[str, tuple[str, int]] = {}
        self._vtime: dict[tuple[str, int], float] = {}
        self._carry: dict[str, float] = {}        # corrections that arrived while the session was queued
        self._share_cache: tuple[int, float, dict[str, float]] | None = None
        self._epoch: float | None = None
        self._args: dict[str, tuple] = {}             # multifactor: what each queued session's key came from
        self._since_refresh = 0
        self.tree = AccountTree(self.cfg.account_parents) if self.cfg.account_parents else None
        self.imported = None          # with fairshare_source slurm: a SlurmShares (see qsched.slurm.shares)

    def _key(self, sid: str, pool: str, info: SessionInfo, head_seq: int, now: float, size: int) -> Key | None:
        w = self.weight_of(info) if info.cls else info.weight
        self._weight[sid] = w
        slot = self._slot[sid] = (pool, self.tier_of(info))
        v = self._vtime.get(slot, 0.0) - self.cfg.return_credit_s / w
        s = max(v, self._finish.get(sid, 0.0))
        self._start[sid] = s
        if not self._multifactor:
            return (s, head_seq)
        old = self._args.get(sid)
        since = old[4] if old is not None and sid in self._q and old[0] == slot else now
        self._args[sid] = (slot, info, head_seq, size, since)
        return (-self.priority(info, now, size, since), s, head_seq)

    def pick(self, pool: str, *, now: float | None = None) -> str | None:
        # a waiting session's fair-share factor rises as the others use the device, but its key was
        # computed when it was queued: re-key everyone queued once per as many picks as there are
        # queued sessions (Slurm's PriorityCalcPeriod, amortized O(log S) per decision)
        if self._w[1] > 0 and len(self._q) > 1:
            self._since_refresh += 1
            if self._since_refresh >= len(self._q):
                self._since_refresh = 0
                self._refresh(self._clock(now))
        return super().pick(pool, now=now)

    def _refresh(self, now: float) -> None:
        for sid, (slot, info, head_seq, size, since) in list(self._args.items()):
            if sid in self._q:
                key = (-self.priority(info, now, size, since), self._start[sid], head_seq)
                self._q.push(slot[0], slot[1], key, sid, since)

    def _picked(self, sid: str, pool: str, key: Key) -> None:
        s = self._start[sid]
        slot = self._slot[sid]
        # monotone: a returning session's credited start tag lies below v, and letting v follow it
        # down would push everyone served recently behind it, again and again
        self._vtime[slot] = max(self._vtime.get(slot, 0.0), s)

    # ------------------------------------------------------------------ multifactor
    def factors(self, info: SessionInfo, now: float, size: int = 0) -> dict[str, float]:
        """The session's factors now (each in [0, 1]; age grows past 1, see the class docstring)."""
        if self._epoch is None:
            self._epoch = now
        o = self.options
        ref = float(o["priority_job_size_ref"])
        job = size / (size + ref)
        return {"age": 0.0, "fairshare": self.fairshare_factor(info, now),
                "qos": self.cfg.class_weights.get(info.cls, 1.0) / self._max_class_w,
                "job_size": 1.0 - job if o["priority_favor_small"] else job}

    def priority(self, info: SessionInfo, now: float, size: int = 0, since: float | None = None) -> float:
        """The static part of the priority plus the age term written as -enqueue time / max_age: every
        waiting session's age grows at the same rate, so ordering by this is ordering by P at any time."""
        f = self.factors(info, now, size)
        w_age, w_fs, w_qos, w_size = self._w
        assert self._epoch is not None
        since = now if since is None else since
        age_term = -w_age * (since - self._epoch) / float(self.options["priority_max_age_s"])
        return age_term + w_fs * f["fairshare"] + w_qos * f["qos"] + w_size * f["job_size"]

    def _sums(self) -> tuple[float, dict[str, float]]:
        """Shares of every account with usage, and per account of its users with usage (cached until a
        name appears in the ledger)."""
        if self._share_cache is None or self._share_cache[0] != self.usage.version:
            aw, uw = self.cfg.account_weights, self.cfg.user_weights
            per_account: dict[str, float] = {}
            for assoc in self.usage.names("assoc"):
                acct, _, user = assoc.partition("/")
                per_account[acct] = per_account.get(acct, 0.0) + uw.get(user, 1.0)
            self._share_cache = (self.usage.version, sum(aw.get(a, 1.0) for a in self.usage.names("account")),
                                 per_account)
        return self._share_cache[1], self._share_cache[2]

    def fairshare_factor(self, info: SessionInfo, now: float) -> float:
        """2^(-U/S) for the account among accounts, times 2^(-U/S) for the user among the users of its
        account (a two-level tree as sshare's: a user's usage competes with its account's users only).
        With policy.account_parents the account part is the product down the account tree (tree.py).
        Slurm's own factor instead where fairshare_source is slurm and Slurm knows the association."""
        if self.imported is not None and self.options["fairshare_source"] == "slurm":
            imported = self.imported.factor(info.account, info.user)
            if imported is not None:
                return float(imported)
        u, aw, uw = self.usage, self.cfg.account_weights, self.cfg.user_weights
        acct_sum, per_account = self._sums()
        f = 1.0
        a, user = info.account, info.user
        total = u.total("account", now)
        if a and self.tree is not None:
            f = self.tree.factor(a, u, aw, now)          # parent/child accounts: the product down the tree
        elif a and total > 0:
            share = aw.get(a, 1.0) / (acct_sum + (0.0 if a in u.names("account") else aw.get(a, 1.0)))
            f *= 2.0 ** (-(u.get("account", a, now) / total) / share)
        if user:
            if a:
                used, within = u.get("assoc", f"{a}/{user}", now), u.get("account", a, now)
                known = f"{a}/{user}" in u.names("assoc")
                sibling_sum = per_account.get(a, 0.0) + (0.0 if known else uw.get(user, 1.0))
            else:
                used, within = u.get("user", user, now), u.total("user", now)
                sibling_sum = sum(uw.get(n, 1.0) for n in u.names("user")) + (
                    0.0 if user in u.names("user") else uw.get(user, 1.0))
            if within > 0:
                f *= 2.0 ** (-(used / within) / (uw.get(user, 1.0) / sibling_sum))
        return f

    # ------------------------------------------------------------------ charges
    def charge(self, sid: str, cost: float) -> None:
        self._finish[sid] = (self._start.get(sid, 0.0) + cost / self._weight.get(sid, 1.0)
                             + self._carry.pop(sid, 0.0))

    def correct(self, sid: str, estimated: float, measured: float) -> None:
        if sid not in self._finish:
            return
        delta = (measured - estimated) / self._weight.get(sid, 1.0)
        if sid in self._q:
            # queued again already (it stayed backlogged): its start tag came from the uncorrected
            # finish tag, and its next charge overwrites that tag; carry the difference into it
            self._carry[sid] = self._carry.get(sid, 0.0) + delta
        else:
            self._finish[sid] += delta

    def _forget(self, sid: str) -> None:
        for d in (self._finish, self._start, self._weight, self._slot, self._carry, self._args):
            d.pop(sid, None)

    def virtual_time(self, pool: str, tier: int = 0) -> float:
        return self._vtime.get((pool, tier), 0.0)
