"""Parent/child account shares, as sshare's association tree (policy.account_parents): pure.

Usage is charged to a session's own account (the ledger's "account" kind); a parent's usage is the sum
of its subtree's. As in Slurm's classic fair share, the account part of the factor is 2^(-U/S) with U
the account's usage as a fraction of everyone's, and S its normalized share: the product, down its
chain from the top, of each node's share (policy.weights.accounts, 1 if unset) as a fraction of the
shares of its siblings with usage and itself. One formula whatever the depth, so a deep account is not
penalized against a shallow one (a product of per-level factors would be). An account not named in the
tree is a top-level node; with no tree every account is, which is the account rule of fair_share.py."""
from __future__ import annotations

from .usage import UsageLedger


class AccountTree:
    def __init__(self, parents: dict[str, str]):
        self.parents = dict(parents)

    def parent(self, account: str) -> str | None:
        return self.parents.get(account)

    def chain(self, account: str) -> list[str]:
        """The account's ancestors from the top, then the account (config.py refuses cycles)."""
        out = [account]
        while (p := self.parents.get(out[-1])) is not None:
            out.append(p)
        return out[::-1]

    def aggregate(self, usage: UsageLedger, now: float) -> dict[str, float]:
        """Every node with usage in its subtree -> that usage (device-seconds, decayed to now)."""
        agg: dict[str, float] = {}
        for leaf in usage.names("account"):
            used = usage.get("account", leaf, now)
            for node in self.chain(leaf):
                agg[node] = agg.get(node, 0.0) + used
        return agg

    def local_share(self, node: str, agg: dict[str, float], shares: dict[str, float]) -> float:
        """The node's share among its siblings with usage and itself."""
        p = self.parent(node)
        names = {n for n in agg if self.parent(n) == p} | {node}
        return shares.get(node, 1.0) / sum(shares.get(n, 1.0) for n in names)

    def norm_share(self, node: str, agg: dict[str, float], shares: dict[str, float]) -> float:
        """The product of the local shares down the node's chain (its fraction of the whole)."""
        out = 1.0
        for n in self.chain(node):
            out *= self.local_share(n, agg, shares)
        return out

    def factor(self, account: str, usage: UsageLedger, shares: dict[str, float], now: float,
               agg: dict[str, float] | None = None) -> float:
        """The account part of the fair-share factor (see the module docstring)."""
        agg = self.aggregate(usage, now) if agg is None else agg
        total = sum(v for n, v in agg.items() if self.parent(n) is None)
        if total <= 0:
            return 1.0
        return 2.0 ** (-(agg.get(account, 0.0) / total) / self.norm_share(account, agg, shares))
