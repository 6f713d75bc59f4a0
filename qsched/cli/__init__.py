"""The `qsched` command: up | daemon | worker | submit | queue | session | device | policy | acct | top."""
from __future__ import annotations

import json
import logging
import sys
import time

import click

from ..errors import QschedError

CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="QSCHED_CONFIG",
                      help="qsched.yaml (default: built-in: embedded Redis, local aer/lightning/null devices)")
REDIS = click.option("--redis-url", envvar="QSCHED_REDIS_URL", help="external Redis instead of the embedded one")
URL = click.option("--url", envvar="QSCHED_URL", help="daemon URL (http://host:port or unix:///path)")
JSON = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


def _config(config_path, redis_url=None):
    from ..config import load_config
    from ..devices import device_types
    cfg = load_config(config_path, known_types=set(device_types()))
    if redis_url:
        cfg.redis_url = redis_url
    return cfg


def table(rows: list[dict], cols: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def emit(obj, as_json: bool, rows_key: str | None, cols: list[str]):
    if as_json:
        click.echo(json.dumps(obj, indent=2))
    else:
        click.echo(table(obj[rows_key] if rows_key else obj, cols))


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except QschedError as e:
            click.echo(f"qsched: {e.message}", err=True)
            sys.exit(1)


@click.group(cls=Group)
@click.option("-v", "--verbose", count=True)
def cli(verbose):
    """qsched: the quantum half of a two-level scheduler for hybrid jobs."""
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("qiskit", "pennylane", "stevedore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@cli.command()
@CONFIG
@REDIS
def up(config_path, redis_url):
    """Embedded Redis + daemon + one worker per device, in the foreground. Ctrl-C drains and stops all."""
    from ..daemon import run
    cfg = _config(config_path, redis_url)

    def ready(sch):
        click.echo(f"qsched up: {cfg.socket_path}" + (f" and http://{cfg.tcp}" if cfg.tcp else ""), err=True)
        click.echo(f"  redis: {cfg.redis_url or 'embedded in ' + str(cfg.state_dir / 'redis')}", err=True)
        click.echo(f"  devices: {', '.join(f'{d.name} ({d.type}, pool {d.pool})' for d in cfg.devices)}", err=True)
        click.echo(f"  policy: {cfg.policy.name}; export QSCHED_URL=unix://{cfg.socket_path}", err=True)
    run(cfg, config_path=config_path, ready=ready)


@cli.group()
def daemon():
    """Run or check the daemon."""


@daemon.command("run")
@CONFIG
@REDIS
def daemon_run(config_path, redis_url):
    """Run the daemon (systemd: qsched.service)."""
    from ..daemon import run
    run(_config(config_path, redis_url), config_path=config_path)


@daemon.command("check")
@CONFIG
@REDIS
def daemon_check(config_path, redis_url):
    """Validate the config and report what the daemon would run."""
    from ..daemon import check
    cfg = _config(config_path, redis_url)
    check(cfg)
    click.echo(f"config {cfg.source}: ok")
    click.echo(f"  state dir {cfg.state_dir}; redis {cfg.redis_url or 'embedded'}; policy {cfg.policy.name}")
    for d in cfg.devices:
        click.echo(f"  device {d.name}: {d.type}, pool {d.pool}, <= {d.limits.max_qubits} qubits")


@cli.command()
@click.option("--device", required=True, help="device name from the config")
@CONFIG
@REDIS
@click.option("--die-with-parent", is_flag=True, hidden=True)
def worker(device, config_path, redis_url, die_with_parent):
    """Run the worker process for one device (systemd: qsched-worker@DEVICE)."""
    from ..worker import main as worker_main
    cfg = _config(config_path, redis_url)
    spec = next((d for d in cfg.devices if d.name == device), None)
    if spec is None:
        raise click.BadParameter(f"no device {device!r} in the config ({', '.join(d.name for d in cfg.devices)})",
                                 param_hint="--device")
    url = cfg.redis_url or f"unix://{cfg.state_dir / 'redis' / 'redis.sock'}"
    worker_main(spec, url, max_attempts=cfg.max_attempts, result_ttl_s=cfg.result_ttl_s,
                heartbeat_ttl_s=cfg.heartbeat_timeout_s, tie_to_parent=die_with_parent)


def _client(url):
    import os

    from ..client import Client
    # a command at a prompt should say soon that the daemon is down; jobs ride out restarts (300 s)
    return Client(url, retry_s=float(os.environ.get("QSCHED_RETRY_S", 10)))


@cli.command()
@URL
@JSON
def queue(url, as_json):
    """Pending work per pool and per session."""
    q = _client(url).queue()
    if as_json:
        click.echo(json.dumps(q, indent=2))
        return
    click.echo(f"policy: {q['policy']}")
    click.echo(table([{"pool": p, **v, "devices": ",".join(v["devices"])} for p, v in q["pools"].items()],
                     ["pool", "devices", "pending", "running"]))
    click.echo()
    click.echo(table(q["sessions"], ["id", "user", "job_id", "pool", "class", "pending", "inflight"]))


@cli.group()
def session():
    """List, show and cancel sessions."""


@session.command("list")
@URL
@JSON
def session_list(url, as_json):
    emit({"sessions": _client(url).sessions()}, as_json, "sessions",
         ["id", "user", "job_id", "name", "pool", "class", "pending", "inflight"])


@session.command("show")
@click.argument("sid")
@URL
@JSON
def session_show(sid, url, as_json):
    info = _client(url).session_info(sid)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            click.echo(f"{k:>16}: {v}")


@session.command("cancel")
@click.argument("sid")
@URL
def session_cancel(sid, url):
    """Close a session: its pending tasks are cancelled."""
    rec = _client(url).close_session(sid)
    click.echo(f"closed {sid}: {rec.get('cancelled', 0)} pending tasks cancelled, "
               f"{rec.get('device_seconds', 0):.3f} device-seconds used")


@cli.group()
def device():
    """Devices and their workers."""


@device.command("list")
@URL
@JSON
def device_list(url, as_json):
    emit({"devices": _client(url).devices()}, as_json, "devices",
         ["name", "type", "pool", "up", "outstanding", "max_qubits", "max_shots", "worker_rss_mb"])


@cli.group()
def policy():
    """Scheduling policy files."""


@policy.command("validate")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def policy_validate(path):
    """Exit 1 with a message naming the bad field; 0 when the policy is valid."""
    from ..config import load_policy_file
    from ..devices import device_types
    try:
        p = load_policy_file(path, known_types=set(device_types()))
    except QschedError as e:
        click.echo(f"{path}: invalid: {e.message}", err=True)
        sys.exit(1)
    click.echo(f"{path}: ok (policy {p.name}; classes {', '.join(f'{k}={v:g}' for k, v in p.class_weights.items())})")


@cli.command()
@URL
@JSON
@click.option("--since", default="24h", show_default=True, help="how far back: 30m, 24h, 7d, or 0 for all")
@click.option("--user", default=None, help="one user's records (admins; users always see their own)")
@click.option("--by", type=click.Choice(["session", "user", "account"]), default="session", show_default=True)
def acct(url, as_json, since, user, by):
    """Quantum usage of closed sessions (device-seconds, tasks, circuits, shots) from the ledger."""
    seconds = _duration(since)
    rows = _client(url).accounting(since=time.time() - seconds if seconds else 0.0, user=user)
    if by != "session":
        totals: dict[str, dict] = {}
        for r in rows:
            t = totals.setdefault(r.get(by) or "-", {by: r.get(by) or "-", "sessions": 0, "device_seconds": 0.0,
                                                     "tasks": 0, "circuits": 0, "shots": 0})
            t["sessions"] += 1
            for k in ("device_seconds", "tasks", "circuits", "shots"):
                t[k] += r.get(k, 0)
        rows = sorted(totals.values(), key=lambda t: -t["device_seconds"])
        cols = [by, "sessions", "device_seconds", "tasks", "circuits", "shots"]
    else:
        cols = ["session", "user", "account", "job_id", "pool", "device_seconds", "tasks", "circuits", "shots"]
    for r in rows:
        r["device_seconds"] = round(r["device_seconds"], 3)
    emit({"records": rows}, as_json, "records", cols)


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise click.BadParameter(f"{text!r}: expected a number with s, m, h or d", param_hint="--since") from None


@cli.command()
@URL
@click.option("--interval", default=1.0, show_default=True)
@click.option("--once", is_flag=True, help="one frame, then exit")
def top(url, interval, once):
    """Live view of devices and sessions."""
    c = _client(url)
    while True:
        q, devs = c.queue(), c.devices()
        frame = [time.strftime("qsched top  %H:%M:%S") + f"   policy {q['policy']}", "",
                 table(devs, ["name", "type", "pool", "up", "outstanding"]), "",
                 table(q["sessions"], ["id", "user", "job_id", "pool", "class", "pending", "inflight"])]
        if not once:
            click.clear()
        click.echo("\n".join(frame))
        if once:
            return
        time.sleep(interval)


def _register_optional():
    try:
        from .submit import submit
        cli.add_command(submit)
    except ImportError:
        pass


_register_optional()


def main():
    cli(prog_name="qsched")
