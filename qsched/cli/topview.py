"""`qsched top`: a live view of devices, pools and sessions.

Each poll reads /v1/health, /v1/queue, /v1/devices and /metrics. Device busy % comes from the deltas of
`qsched_device_busy_seconds_total` between two polls; queue-wait p95 per pool from the deltas of the
`qsched_queue_wait_seconds` histogram over the last minute (as Prometheus' histogram_quantile would
compute it over a rate). A daemon that goes away (restart, upgrade) leaves the last frame on screen
under a "reconnecting" line until it answers again; `q` quits when stdin is a terminal."""
from __future__ import annotations

import math
import os
import re
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import click

from ..errors import QschedError
from . import fmt

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

WAIT_WINDOW_S = 60.0     # queue-wait p95 over this much history


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format -> {sample name: [(labels, value), ...]} (comments skipped)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.groups()
        try:
            v = float(value)
        except ValueError:
            continue
        out.setdefault(name, []).append((dict(_LABEL.findall(labels or "")), v))
    return out


@dataclass
class Snapshot:
    t: float
    busy: dict[str, float] = field(default_factory=dict)                          # device -> seconds
    waits: dict[str, list[tuple[float, float]]] = field(default_factory=dict)      # pool -> [(le, count)]

    @classmethod
    def from_metrics(cls, text: str, t: float) -> Snapshot:
        m = parse_metrics(text)
        busy = {lab.get("device", ""): v for lab, v in m.get("qsched_device_busy_seconds_total", [])}
        waits: dict[str, list[tuple[float, float]]] = {}
        for lab, v in m.get("qsched_queue_wait_seconds_bucket", []):
            le = lab.get("le", "+Inf")
            waits.setdefault(lab.get("pool", ""), []).append((math.inf if le in ("+Inf", "Inf") else float(le), v))
        for b in waits.values():
            b.sort()
        return cls(t, busy, waits)


def busy_percent(prev: Snapshot | None, cur: Snapshot) -> dict[str, float]:
    """Per device: the share of wall time between two polls that it spent executing batches. A counter
    that went down (the daemon restarted) gives no figure for that poll."""
    if prev is None or cur.t <= prev.t:
        return {}
    out = {}
    for dev, v in cur.busy.items():
        before = prev.busy.get(dev)
        if before is None or v < before:
            continue
        out[dev] = min(100.0, max(0.0, 100.0 * (v - before) / (cur.t - prev.t)))
    return out


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """histogram_quantile over cumulative (le, count) buckets; None with no observations."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_bound          # beyond the last finite bucket: its bound, as Prometheus does
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = le, count
    return lower_bound


def wait_p95(prev: Snapshot | None, cur: Snapshot) -> dict[str, float | None]:
    """Per pool: the 95th percentile of the queue waits observed between two snapshots."""
    out: dict[str, float | None] = {}
    if prev is None:
        return out
    for pool, buckets in cur.waits.items():
        before = dict(prev.waits.get(pool, []))
        if any(count < before.get(le, 0.0) for le, count in buckets):
            continue                        # the daemon restarted in between: counters started again
        deltas = [(le, count - before.get(le, 0.0)) for le, count in buckets]
        out[pool] = quantile(0.95, deltas)
    return out


# --- drawing -----------------------------------------------------------------------------------------

def use_colour(stream=None) -> bool:
    """Colour only on a terminal, never with NO_COLOR set (https://no-color.org) or TERM=dumb."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_STATE_COLOURS = {"up": "green", "down": "red", "drain": "yellow", "pause": "yellow", "maint": "yellow",
                  "RUNNING": "green", "PENDING": "yellow", "IDLE": None}


def _styler(colour: bool):
    def style(col: str, value: str, padded: str) -> str:
        if not colour:
            return padded
        if col == "state" and _STATE_COLOURS.get(value):
            return click.style(padded, fg=_STATE_COLOURS[value])
        if col == "busy%" and value not in ("-", ""):
            pct = float(value.rstrip("%"))
            return click.style(padded, fg="green" if pct >= 80 else ("yellow" if pct >= 20 else None))
        return padded
    return style


DEVICE_COLS = ["name", "type", "pool", "state", "busy%", "outstanding", "worker_rss_mb"]
POOL_COLS = ["pool", "devices", "pending", "running", "wait_p95_s"]
SESSION_COLS = ["id", "job_id", "user", "account", "name", "pool", "class", "state", "pending", "inflight", "time"]


def session_rows(sessions: list[dict], now: float) -> list[dict]:
    return [{**s, "activity": fmt.session_activity(s), "state": fmt.session_activity(s),
             "time": fmt.elapsed(now - s["created"]) if s.get("created") else ""} for s in sessions]


def frame(q: dict, devs: list[dict], health: dict | None, busy: dict[str, float], p95: dict[str, float | None],
          *, now: float, colour: bool = False, status: str | None = None) -> str:
    """One screen: a header line, then devices, pools and sessions."""
    draining = bool(health and health.get("status") == "draining")
    head = time.strftime("qsched top  %H:%M:%S", time.localtime(now)) + f"   policy {q.get('policy', '?')}"
    if health:
        head += f"   daemon {health.get('version', '?')} {health.get('status', '')}".rstrip()
    head += f"   sessions {len(q.get('sessions', []))}"
    lines = [click.style(head, bold=True) if colour else head]
    if status:
        lines.append(click.style(status, fg="red", bold=True) if colour else status)
    lines.append("")
    style = _styler(colour)
    drows = [{**d, "state": fmt.device_state(d, draining=draining),
              "busy%": f"{busy[d['name']]:.0f}%" if d.get("name") in busy else None} for d in devs]
    lines.append(fmt.render(drows, DEVICE_COLS, style=style))
    lines.append("")
    prows = [{"pool": p, **v, "devices": ",".join(v.get("devices", [])),
              "wait_p95_s": p95.get(p)} for p, v in q.get("pools", {}).items()]
    lines.append(fmt.render(prows, POOL_COLS, style=style))
    lines.append("")
    lines.append(fmt.render(session_rows(q.get("sessions", []), now), SESSION_COLS, style=style))
    return "\n".join(lines)


# --- the loop ----------------------------------------------------------------------------------------

class Keys:
    """Single keys from a terminal stdin (cbreak mode, restored on exit); plain sleeps otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdin
        self.fd: int | None = None
        self.saved = None

    def __enter__(self) -> Keys:
        try:
            if self.stream.isatty():
                import termios
                import tty
                self.fd = self.stream.fileno()
                self.saved = termios.tcgetattr(self.fd)
                tty.setcbreak(self.fd)
        except (OSError, ValueError, AttributeError, ImportError):
            self.fd = None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None and self.saved is not None:
            import termios
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def wait(self, seconds: float) -> str | None:
        """Sleep up to `seconds`; a key pressed meanwhile ends the wait and is returned."""
        if self.fd is None:
            time.sleep(seconds)
            return None
        import select
        ready, _, _ = select.select([self.fd], [], [], seconds)
        if not ready:
            return None
        ch = os.read(self.fd, 1)
        return ch.decode(errors="replace") if ch else None


def _poll(c) -> tuple[dict, list[dict], dict | None, str]:
    health = c.health()
    q = c.queue()
    devs = c.devices()
    try:
        text = c.metrics()
    except QschedError as e:
        if getattr(e, "status", 500) >= 500:
            raise
        text = ""                           # /metrics refused to this caller: figures stay blank
    return q, devs, health, text


def _unreachable(e: Exception) -> bool:
    """Errors that mean "the daemon is not there right now" (restart, drain, socket gone)."""
    return isinstance(e, OSError) or (isinstance(e, QschedError) and getattr(e, "status", 500) in (502, 503, 504))


def run(url: str | None, interval: float, once: bool, client_factory) -> None:
    if once:
        c = client_factory(url, None)
        q, devs, health, text = _poll(c)
        click.echo(frame(q, devs, health, {}, {}, now=time.time(), colour=use_colour()), color=use_colour())
        return
    colour = use_colour()
    c = client_factory(url, 0.0)                   # no retries inside a poll: top itself shows the outage
    history: deque[Snapshot] = deque()
    last: str | None = None
    down_since: float | None = None
    with Keys() as keys:
        while True:
            now = time.time()
            try:
                q, devs, health, text = _poll(c)
            except Exception as e:         # noqa: BLE001 - anything not an outage is re-raised below
                if not _unreachable(e):
                    raise
                down_since = down_since or now
                history.clear()             # counters start again on the next daemon
                why = getattr(e, "message", None) or str(e)
                since = time.strftime("%H:%M:%S", time.localtime(down_since))
                status = f"reconnecting to the daemon (down since {since}, {now - down_since:.0f} s): {why}"
                body = last.split("\n", 1)[1] if last and "\n" in last else ""
                screen = (click.style(status, fg="red", bold=True) if colour else status) + "\n" + body
            else:
                down_since = None
                snap = Snapshot.from_metrics(text, now)
                prev = history[-1] if history else None
                oldest = next((s for s in history if now - s.t <= WAIT_WINDOW_S), prev)
                history.append(snap)
                while history and now - history[0].t > WAIT_WINDOW_S + interval:
                    history.popleft()
                screen = frame(q, devs, health, busy_percent(prev, snap), wait_p95(oldest, snap), now=now,
                               colour=colour)
                last = screen
            click.clear()
            click.echo(screen, color=colour)
            if keys.fd is not None:
                click.echo("(q quits)", color=colour)
            key = keys.wait(interval)
            if key in ("q", "Q"):
                return
