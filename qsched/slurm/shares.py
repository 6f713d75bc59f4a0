"""Slurm's fair-share factors, read from `sshare -P -a` (slurmdbd's associations as slurmctld sees them),
for the fair-share policy's `fairshare_source: slurm`.

sshare prints one row per association, a leading space per tree level; an account row has no user.
With the default fair tree algorithm only user rows carry FairShare (the user's whole factor: its
account's rank is in it); an account row has NormShares and EffectvUsage, from which its factor is
Slurm's classic one, 2^(-EffectvUsage/NormShares).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

# what the importer asks sshare for (any order and any further columns parse too)
SSHARE_FORMAT = "Account,User,RawShares,NormShares,RawUsage,EffectvUsage,FairShare,LevelFS"


class SshareParseError(ValueError):
    """sshare's output is not what `sshare -P -a` prints (no header, no Account column, ragged rows)."""


@dataclass(frozen=True)
class ShareRow:
    account: str
    user: str                       # '' for an account row
    depth: int                      # 0 for root
    raw_shares: int | None          # None for root, or 'parent'
    norm_shares: float | None
    raw_usage: float | None
    effective_usage: float | None
    fairshare: float | None         # None where sshare prints none (account rows under fair tree)
    level_fs: float | None


@dataclass(frozen=True)
class SlurmShares:
    """Each association's factor in [0, 1]: `users[(account, user)]` and `accounts[account]`."""
    accounts: Mapping[str, float] = field(default_factory=dict)
    users: Mapping[tuple[str, str], float] = field(default_factory=dict)
    rows: tuple[ShareRow, ...] = ()

    def factor(self, account: str, user: str = "") -> float | None:
        """The user's association factor, else its account's, else None (Slurm does not know it)."""
        if user and (account, user) in self.users:
            return self.users[(account, user)]
        return self.accounts.get(account)


def _float(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        v = float(text)          # 'inf' (LevelFS with no usage) parses too
    except ValueError:
        return None
    return None if math.isnan(v) else v


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def parse_sshare(text: str) -> list[ShareRow]:
    """`sshare -P -a [-o ...]` with its header line -> rows in sshare's order."""
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        raise SshareParseError("sshare printed nothing")
    header = [h.strip() for h in lines[0].split("|")]
    col = {name: i for i, name in enumerate(header)}
    if "Account" not in col or "User" not in col:
        raise SshareParseError(f"sshare header has no Account/User column: {lines[0]!r}")
    rows = []
    for ln in lines[1:]:
        cells = ln.split("|")
        if len(cells) != len(header):
            raise SshareParseError(f"sshare row has {len(cells)} fields, header {len(header)}: {ln!r}")

        def get(name: str, cells=cells) -> str:
            return cells[col[name]] if name in col else ""
        raw_account = get("Account")
        rows.append(ShareRow(
            account=raw_account.strip(), user=get("User").strip(),
            depth=len(raw_account) - len(raw_account.lstrip(" ")),
            raw_shares=_int(get("RawShares")), norm_shares=_float(get("NormShares")),
            raw_usage=_float(get("RawUsage")), effective_usage=_float(get("EffectvUsage")),
            fairshare=_float(get("FairShare")), level_fs=_float(get("LevelFS"))))
    return rows


def shares_from_rows(rows: list[ShareRow]) -> SlurmShares:
    """Factors by association. An account row: its FairShare where sshare prints one (classic
    algorithm), else 2^(-EffectvUsage/NormShares). The root row is no account of anyone's."""
    accounts: dict[str, float] = {}
    users: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.depth == 0 and r.account == "root" and not r.user:
            continue
        if r.user:
            if r.fairshare is not None:
                users[(r.account, r.user)] = min(1.0, max(0.0, r.fairshare))
            continue
        if r.fairshare is not None:
            accounts[r.account] = min(1.0, max(0.0, r.fairshare))
        elif r.norm_shares and r.effective_usage is not None:
            accounts[r.account] = 2.0 ** (-r.effective_usage / r.norm_shares)
        elif r.effective_usage is not None:
            accounts[r.account] = 0.0       # no shares (RawShares=0): Slurm ranks it last
    return SlurmShares(accounts, users, tuple(rows))


def parse_shares(text: str) -> SlurmShares:
    return shares_from_rows(parse_sshare(text))
