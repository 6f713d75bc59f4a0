"""What the listings share, in the vocabulary of squeue/sacct/sinfo: filters (-u -A -j --pool --state),
columns (-o/--format, `name%width` as in sacct), --noheader, -P/--parsable, --json with ISO-8601 times
beside the epoch floats, device states as sinfo writes them, and sacct's -S/-E time formats.

Pure functions over the daemon's JSON: the commands in `qsched.cli` fetch, these shape."""
from __future__ import annotations

import datetime as _dt
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import click

# epoch-float fields that get an ISO-8601 twin (`created` -> `created_iso`) in --json, and that tables
# print as local date-times
TIME_KEYS = frozenset({"created", "opened", "closed", "submitted", "started", "finished", "at", "window_start",
                       "start", "end", "next_start", "backlog_end",
                       "window_end"})


# --- time --------------------------------------------------------------------------------------------

def iso(ts: float | None) -> str | None:
    """Epoch seconds -> local ISO-8601 with the UTC offset (2024-05-01T14:03:07+02:00)."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or ts <= 0:
        return None
    return _dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def local_time(ts: float) -> str:
    """As sacct prints a time: 2024-05-01T14:03:07 (local, no offset)."""
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%dT%H:%M:%S")


def elapsed(seconds: float | None) -> str:
    """Slurm's elapsed-time format: M:SS, H:MM:SS, D-HH:MM:SS."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}-{h:02d}:{m:02d}:{s:02d}"
    if h:
        return f"{h}:{m:02d}:{s:02d}"
    return f"{m}:{s:02d}"


def with_iso(obj: Any) -> Any:
    """A copy of the JSON with `<key>_iso` beside every epoch-time field (nested dicts and lists too)."""
    if isinstance(obj, list):
        return [with_iso(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict = {}
    for k, v in obj.items():
        out[k] = with_iso(v)
        if k in TIME_KEYS and f"{k}_iso" not in obj:
            stamp = iso(v)
            if stamp is not None:
                out[f"{k}_iso"] = stamp
    return out


_UNITS = {"": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
          "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
          "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400,
          "w": 604800, "week": 604800, "weeks": 604800}
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]*)$")
_NOW = re.compile(r"^now(?:\s*([+-])\s*(\d+(?:\.\d+)?)\s*([a-z]*))?$")
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{1,2}):(\d{2})(?::(\d{2}))?)?$")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


def parse_time(text: str, *, now: float | None = None, param: str = "--since") -> float:
    """A point in time as sacct -S/-E takes it -> epoch seconds (0.0: the beginning).

    YYYY-MM-DD[THH:MM[:SS]] (local time; an ISO-8601 offset is honoured too), HH:MM[:SS] (today),
    now, now-COUNT[UNIT] / now+COUNT[UNIT] (seconds, minutes, hours, days, weeks; default seconds),
    today / midnight, yesterday, and how long ago as qsched always took it: 30m, 24h, 7d, 90s, or 0
    for everything."""
    now = time.time() if now is None else now
    t = text.strip().lower()

    def bad(why: str):
        return click.BadParameter(
            f"{text!r}: {why}; expected YYYY-MM-DD[THH:MM[:SS]], HH:MM[:SS], now[-COUNT[UNIT]], "
            f"today, yesterday, or an age like 30m, 24h, 7d (0: all)", param_hint=param)

    if not t:
        raise bad("empty")
    if t in ("0", "all"):
        return 0.0
    if t in ("today", "midnight"):
        return _midnight(now)
    if t == "yesterday":
        return _midnight(now) - 86400.0
    m = _NOW.match(t)
    if m:
        sign, count, unit = m.groups()
        if sign is None:
            return now
        if unit not in _UNITS:
            raise bad(f"unknown unit {unit!r}")
        delta = float(count) * _UNITS[unit]
        return now - delta if sign == "-" else now + delta
    m = _RELATIVE.match(t)
    if m:
        count, unit = m.groups()
        if unit not in _UNITS:
            raise bad(f"unknown unit {unit!r}")
        return now - float(count) * _UNITS[unit]
    m = _DATE.match(t)
    if m:
        y, mo, d, hh, mm, ss = m.groups()
        try:
            when = _dt.datetime(int(y), int(mo), int(d), int(hh or 0), int(mm or 0), int(ss or 0))
        except ValueError as e:
            raise bad(str(e)) from None
        return when.timestamp()
    m = _CLOCK.match(t)
    if m:
        hh, mm, ss = m.groups()
        if int(hh) > 23 or int(mm) > 59 or int(ss or 0) > 59:
            raise bad("not a time of day")
        return _midnight(now) + int(hh) * 3600 + int(mm) * 60 + int(ss or 0)
    try:
        when = _dt.datetime.fromisoformat(text.strip())   # 2024-05-01T12:00:00+02:00 and the like
    except ValueError:
        raise bad("not a date, time or age") from None
    return when.timestamp()


def _midnight(now: float) -> float:
    d = _dt.datetime.fromtimestamp(now)
    return _dt.datetime(d.year, d.month, d.day).timestamp()


# --- device states -----------------------------------------------------------------------------------

# the daemon's words (DESIGN: online, draining, paused, maintenance, offline) -> sinfo's
_SINFO = {"online": "up", "up": "up", "idle": "up", "draining": "drain", "drain": "drain", "paused": "pause",
          "pause": "pause",
          "maintenance": "maint", "maint": "maint", "offline": "down", "down": "down"}


def device_state(d: dict, *, draining: bool = False) -> str:
    """up / down / drain / pause / maint, in sinfo's style (sinfo has no pause: a paused device is not
    draining, its waiting batch went back to the pool). A device whose worker has no heartbeat is down;
    a daemon that is draining drains all its devices."""
    explicit = d.get("state")
    if isinstance(explicit, str) and explicit.lower() in _SINFO:
        state = _SINFO[explicit.lower()]
    else:
        state = "up" if d.get("up") else "down"
    if draining and state == "up":
        state = "drain"
    return state


def session_activity(s: dict) -> str:
    """What squeue's ST would say of a session: RUNNING (tasks on a device), HELD (an admin's hold or a
    used-up quota: see its reason), PENDING (tasks waiting), IDLE (open, in a classical phase), CLOSED."""
    if str(s.get("state", "OPEN")).upper() == "CLOSED":
        return "CLOSED"
    if s.get("inflight"):
        return "RUNNING"
    if s.get("held"):
        return "HELD"
    if s.get("pending"):
        return "PENDING"
    return "IDLE"


# --- listings ----------------------------------------------------------------------------------------

FILTER_OPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "user": (("-u", "--user"), "only these users' rows (comma-separated list; repeatable)"),
    "account": (("-A", "--account"), "only these accounts (comma-separated list; repeatable)"),
    "job": (("-j", "--job", "--jobs"), "only these Slurm job ids (comma-separated list; repeatable)"),
    "pool": (("--pool",), "only these device pools (comma-separated list; repeatable)"),
    "state": (("--state",), "only these states, case-insensitive (comma-separated list; repeatable)"),
}
# the row field each filter matches
FILTER_FIELDS = {"user": ("user",), "account": ("account",), "job": ("job_id",), "pool": ("pool",),
                 "state": ("state", "activity")}


@dataclass
class Listing:
    """How one listing command prints: columns, header, separators, filters."""
    as_json: bool = False
    format: str | None = None
    noheader: bool = False
    parsable: bool = False
    filters: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def pop(cls, kw: dict) -> Listing:
        """Take the listing options out of a command's keyword arguments."""
        filters = {}
        for name in FILTER_OPTIONS:
            values = kw.pop(name, None)
            if values:
                items = {x.strip() for v in values for x in str(v).split(",") if x.strip()}
                if items:
                    filters[name] = items
        return cls(as_json=kw.pop("as_json", False), format=kw.pop("fmt", None), noheader=kw.pop("noheader", False),
                   parsable=kw.pop("parsable", False), filters=filters)

    def keep(self, row: dict, only: Iterable[str] | None = None) -> bool:
        """Does the row pass every filter (of those in `only`, when given)?"""
        for name, wanted in self.filters.items():
            if only is not None and name not in only:
                continue
            values = [row.get(f) for f in FILTER_FIELDS[name] if row.get(f) not in (None, "")]
            if name == "state":
                want = {w.lower() for w in wanted}
                if not any(str(v).lower() in want for v in values):
                    return False
            elif not any(str(v) in wanted for v in values):
                return False
        return True

    def select(self, rows: list[dict], only: Iterable[str] | None = None) -> list[dict]:
        return [r for r in rows if self.keep(r, only)]

    def columns(self, default: list[str], known: Iterable[str], rows: list[dict]) -> list[tuple[str, int | None]]:
        """The columns to print: -o/--format (`a,b%20`, case and `_` ignored: JobID = job_id) or the
        default. An unknown name is a usage error that lists the known ones."""
        if not self.format:
            return [(c, None) for c in default]
        names = list(dict.fromkeys([*default, *known, *(k for r in rows for k in r)]))
        by_norm = {_norm(n): n for n in names}
        out: list[tuple[str, int | None]] = []
        for spec in self.format.split(","):
            spec = spec.strip()
            if not spec:
                continue
            name, _, width = spec.partition("%")
            col = by_norm.get(_norm(name))
            if col is None:
                raise click.UsageError(f"-o/--format: unknown column {name!r}; known: {','.join(names)}")
            try:
                w = int(width) if width else None
            except ValueError:
                raise click.UsageError(f"-o/--format: {spec!r}: the width after % must be a number") from None
            out.append((col, w))
        if not out:
            raise click.UsageError("-o/--format: no columns")
        return out

    def render(self, rows: list[dict], default: list[str], known: Iterable[str] = ()) -> str:
        return render(rows, self.columns(default, known, rows), header=not self.noheader, parsable=self.parsable)

    def output(self, key: str, rows: list[dict], default: list[str], known: Iterable[str] = ()) -> str:
        """The listing as asked: `{key: rows}` as JSON with --json, else the table."""
        return dump_json({key: rows}) if self.as_json else self.render(rows, default, known)


def _norm(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def cell(col: str, v: Any, *, parsable: bool = False) -> str:
    if v is None or v == "":
        return "" if parsable else "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if col in TIME_KEYS and isinstance(v, (int, float)):
        return local_time(v) if v > 0 else ("" if parsable else "-")
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def render(rows: list[dict], cols: list[tuple[str, int | None]] | list[str], *, header: bool = True,
           parsable: bool = False, style: Callable[[str, str, str], str] | None = None) -> str:
    """A table as squeue/sacct print one: upper-case header (also when there are no rows), columns
    padded to fit or to `%width` (longer values cut, with a trailing +, like sacct), or with
    parsable=True pipe-separated with no padding (sacct -P)."""
    spec = [(c, None) if isinstance(c, str) else c for c in cols]
    heads = [c.upper() for c, _ in spec]
    cells = [[cell(c, r.get(c), parsable=parsable) for c, _ in spec] for r in rows]
    if parsable:
        lines = (["|".join(heads)] if header else []) + ["|".join(x) for x in cells]
        return "\n".join(lines)
    widths = []
    for i, (_, w) in enumerate(spec):
        widths.append(w if w else max([len(heads[i])] + [len(x[i]) for x in cells]))

    def fit(s: str, w: int) -> str:
        return s.ljust(w) if len(s) <= w else s[:max(0, w - 1)] + "+"

    lines = (["  ".join(fit(h, w) for h, w in zip(heads, widths)).rstrip()] if header else [])
    if style is None:
        lines += ["  ".join(fit(x, w) for x, w in zip(row, widths)).rstrip() for row in cells]
    else:   # style(column, plain value, padded text) -> the padded text with colour codes around it
        names = [c for c, _ in spec]
        lines += ["  ".join(style(c, x, fit(x, w)) for c, x, w in zip(names, row, widths)).rstrip()
                  for row in cells]
    return "\n".join(lines)


def listing_options(*filters: str) -> Callable:
    """--json, -o/--format, --noheader, -P/--parsable, and the named filters (user, account, job, pool,
    state) on a listing command. The command gets them as keyword arguments: `Listing.pop(kw)`."""
    def deco(f):
        for name in reversed(filters):
            decls, help_text = FILTER_OPTIONS[name]
            f = click.option(*decls, name, multiple=True, metavar="LIST", help=help_text)(f)
        f = click.option("-P", "--parsable", is_flag=True,
                         help="pipe-separated output, no padding (as sacct -P)")(f)
        f = click.option("-n", "--noheader", is_flag=True, help="no header line")(f)
        f = click.option("-o", "--format", "fmt", metavar="COLS",
                         help="comma-separated columns, each optionally NAME%WIDTH (as sacct -o); "
                              "case and _ are ignored (JobID = job_id)")(f)
        f = click.option("--json", "as_json", is_flag=True,
                         help="machine-readable JSON (epoch times with an ISO-8601 *_iso twin)")(f)
        return f
    return deco


def dump_json(obj: Any) -> str:
    return json.dumps(with_iso(obj), indent=2)
