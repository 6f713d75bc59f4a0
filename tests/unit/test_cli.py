"""The CLI's formatting, filters, time parsing and commands against a fake client (no daemon)."""
from __future__ import annotations

import datetime as dt
import io
import json
import time

import click
import pytest
from click.testing import CliRunner

import qsched
from qsched import cli as cli_mod
from qsched.cli import fmt
from qsched.cli import topview as top_mod
from qsched.cli.submit import asks_for_qpu, build_sbatch_argv, script_sbatch_options
from qsched.client.retry import Unreachable
from qsched.errors import NotFound

NOW = time.time()


def _session(sid, user, account, job, pool, pending=0, inflight=0, cls="batch"):
    return {"id": sid, "user": user, "uid": 1000, "pool": pool, "class": cls, "weight": 1.0, "account": account,
            "name": f"n-{sid}", "job_id": job, "created": NOW - 75, "state": "OPEN", "pending": pending,
            "inflight": inflight, "weight_effective": 1.0}


SESSIONS = [_session("s-a", "alice", "phys", "21", "aer", pending=3),
            _session("s-b", "bob", "chem", "22", "lightning", inflight=1),
            _session("s-c", "alice", "chem", "", "null")]
DEVICES = [{"name": "aer0", "type": "aer", "pool": "aer", "up": True, "outstanding": 1, "max_qubits": 16,
            "max_shots": 100000, "max_bindings": 1000, "worker_rss_mb": 120, "worker": {"at": NOW}},
           {"name": "light0", "type": "lightning", "pool": "lightning", "up": False, "outstanding": 0,
            "max_qubits": 16, "max_shots": 100000, "max_bindings": 1000, "worker_rss_mb": None, "worker": None}]
RECORDS = [{"session": "s-old", "user": "alice", "account": "phys", "job_id": "20", "pool": "aer", "class": "batch",
            "opened": NOW - 7200, "closed": NOW - 5400, "cancelled": 0, "device_seconds": 1.5, "tasks": 3,
            "circuits": 30, "shots": 0},
           {"session": "s-gone", "user": "bob", "account": "chem", "job_id": "23", "pool": "aer", "class": "debug",
            "opened": NOW - 100, "closed": NOW - 60, "cancelled": 2, "device_seconds": 0.25, "tasks": 1,
            "circuits": 4, "shots": 400}]


class FakeClient:
    def __init__(self, sessions=SESSIONS, devices=DEVICES, records=RECORDS, status="ok"):
        self._sessions, self._devices, self._records, self._status = list(sessions), devices, records, status
        self.closed: list[str] = []
        self.acct_calls: list[tuple] = []

    def health(self):
        return {"status": self._status, "version": "0.1.0"}

    def sessions(self, user=None):
        # as the daemon answers an admin: the named users' sessions (a user's own are the daemon's to check)
        return [dict(s) for s in self._sessions if user is None or s["user"] in user]

    def queue(self, user=None, start=False):
        sessions = self.sessions(user)
        for i, s in enumerate(sessions if start else []):     # as the daemon's forecast: one not predicted
            s["start"], s["end"] = (NOW + 60 * i, NOW + 600) if i < 2 else (None, None)
        return {"policy": "fair-share",
                "pools": {"aer": {"devices": ["aer0"], "pending": 3, "running": 1},
                          "lightning": {"devices": ["light0"], "pending": 0, "running": 0}},
                "sessions": sessions}

    def devices(self):
        return [dict(d) for d in self._devices]

    def session_info(self, sid):
        for s in self._sessions:
            if s["id"] == sid:
                return {**s, "usage": {"device_seconds": 0.5, "tasks": 2}}
        raise NotFound(f"session: no open session {sid}", field="session")

    def close_session(self, sid):
        self.closed.append(sid)
        return {"session": sid, "cancelled": 1, "device_seconds": 0.125}

    def accounting(self, since=0.0, user=None):
        self.acct_calls.append((since, user))
        return [dict(r) for r in self._records if (r["closed"] >= since) and (user is None or r["user"] in user)]

    def metrics(self):
        return ""


@pytest.fixture
def fake(monkeypatch):
    c = FakeClient()
    monkeypatch.setattr(cli_mod, "_client", lambda url: c)
    return c


def run(*args):
    res = CliRunner().invoke(cli_mod.cli, list(args))
    return res


def lines(out):
    return [x for x in out.splitlines() if x.strip()]


# --- version, help --------------------------------------------------------------------------------------

def test_version():
    res = run("--version")
    assert res.exit_code == 0 and res.output.strip() == f"qsched {qsched.__version__}"


def _walk(cmd, path=()):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _walk(sub, (*path, name))


def test_every_command_and_option_has_help():
    missing = []
    for path, cmd in _walk(cli_mod.cli):
        if cmd.hidden:
            continue
        if not (cmd.help or cmd.short_help):
            missing.append(" ".join(path) or "qsched")
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden and not p.help:
                missing.append(f"{' '.join(path)} {p.opts[0]}")
        assert run(*path, "--help").exit_code == 0, path
    assert not missing, missing


# --- times ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expect", [
    ("2024-05-01", dt.datetime(2024, 5, 1).timestamp()),
    ("2024-05-01T13:45", dt.datetime(2024, 5, 1, 13, 45).timestamp()),
    ("2024-05-01T13:45:07", dt.datetime(2024, 5, 1, 13, 45, 7).timestamp()),
    ("2024-05-01 13:45:07", dt.datetime(2024, 5, 1, 13, 45, 7).timestamp()),
    ("2024-05-01T13:45:07+00:00", dt.datetime(2024, 5, 1, 13, 45, 7, tzinfo=dt.timezone.utc).timestamp()),
    ("now", NOW), ("NOW", NOW), ("now-1hours", NOW - 3600), ("now-2days", NOW - 2 * 86400),
    ("now-30minutes", NOW - 1800), ("now-90", NOW - 90), ("now+1weeks", NOW + 7 * 86400),
    ("7d", NOW - 7 * 86400), ("24h", NOW - 86400), ("30m", NOW - 1800), ("90s", NOW - 90), ("3600", NOW - 3600),
    ("0", 0.0),
])
def test_parse_time(text, expect):
    assert fmt.parse_time(text, now=NOW) == pytest.approx(expect)


def test_parse_time_clock_and_words():
    midnight = dt.datetime.combine(dt.date.fromtimestamp(NOW), dt.time()).timestamp()
    assert fmt.parse_time("today", now=NOW) == pytest.approx(midnight)
    assert fmt.parse_time("yesterday", now=NOW) == pytest.approx(midnight - 86400)
    assert fmt.parse_time("08:30", now=NOW) == pytest.approx(midnight + 8.5 * 3600)
    assert fmt.parse_time("08:30:15", now=NOW) == pytest.approx(midnight + 8.5 * 3600 + 15)


@pytest.mark.parametrize("text", ["yesteryear", "2024-13-01", "now-3fortnights", "25:00", "7x", ""])
def test_parse_time_refuses(text):
    with pytest.raises(click.BadParameter, match="YYYY-MM-DD"):
        fmt.parse_time(text, now=NOW)


def test_elapsed_and_iso():
    assert [fmt.elapsed(x) for x in (5, 75, 3725, 90061)] == ["0:05", "1:15", "1:02:05", "1-01:01:01"]
    stamp = fmt.iso(1714570000.5)
    assert dt.datetime.fromisoformat(stamp).timestamp() == pytest.approx(1714570000, abs=1)
    out = fmt.with_iso({"sessions": [{"created": 1714570000.0, "pending": 3, "usage": {"at": 1714570001.0}}],
                        "closed": None})
    s = out["sessions"][0]
    assert s["created"] == 1714570000.0 and "created_iso" in s and "at_iso" in s["usage"]
    assert "pending_iso" not in s and "closed_iso" not in out


# --- tables -------------------------------------------------------------------------------------------------

def test_empty_table_prints_the_header():
    assert fmt.render([], ["id", "user"]) == "ID  USER"
    assert fmt.render([], ["id", "user"], parsable=True) == "ID|USER"
    assert fmt.render([], ["id", "user"], header=False) == ""


def test_render_parsable_noheader_width():
    rows = [{"id": "s-1", "user": "alice", "up": True, "x": None, "device_seconds": 1.23456},
            {"id": "s-22", "user": "bob", "up": False, "x": 3, "device_seconds": 0.0}]
    t = fmt.render(rows, ["id", "user", "up", "x", "device_seconds"])
    assert t.splitlines()[0].split() == ["ID", "USER", "UP", "X", "DEVICE_SECONDS"]
    assert t.splitlines()[1].split() == ["s-1", "alice", "yes", "-", "1.235"]
    assert "True" not in t and "None" not in t
    p = fmt.render(rows, ["id", "user", "x"], parsable=True)
    assert p.splitlines() == ["ID|USER|X", "s-1|alice|", "s-22|bob|3"]
    assert fmt.render(rows, [("id", 3), ("user", 8)], header=False).splitlines() == ["s-1  alice", "s-+  bob"]


def test_format_option_columns(fake):
    res = run("session", "list", "-o", "JobID,User%8,id", "-P")
    assert res.exit_code == 0, res.output
    assert lines(res.output) == ["JOB_ID|USER|ID", "21|alice|s-a", "22|bob|s-b", "|alice|s-c"]
    res = run("session", "list", "--format", "id,bogus")
    assert res.exit_code == 2 and "unknown column 'bogus'" in res.output and "job_id" in res.output


# --- filters ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, ids", [
    (["-u", "alice"], ["s-a", "s-c"]), (["--user", "bob"], ["s-b"]), (["-u", "alice,bob"], ["s-a", "s-b", "s-c"]),
    (["-u", "alice", "-u", "bob"], ["s-a", "s-b", "s-c"]), (["-A", "chem"], ["s-b", "s-c"]),
    (["--account", "chem", "-u", "alice"], ["s-c"]), (["-j", "22"], ["s-b"]), (["--job", "21,22"], ["s-a", "s-b"]),
    (["--pool", "aer"], ["s-a"]), (["--state", "running"], ["s-b"]), (["--state", "PENDING,idle"], ["s-a", "s-c"]),
    (["--state", "open"], ["s-a", "s-b", "s-c"]), (["-u", "carol"], []),
])
def test_session_list_filters(fake, args, ids):
    res = run("session", "list", "--noheader", "-o", "id", *args)
    assert res.exit_code == 0, res.output
    assert lines(res.output) == ids
    js = run("session", "list", "--json", *args)
    assert [s["id"] for s in json.loads(js.output)["sessions"]] == ids


def test_session_list_table_and_json(fake):
    res = run("session", "list")
    head, *rows = res.output.splitlines()
    assert head.split() == ["ID", "JOB_ID", "USER", "ACCOUNT", "NAME", "POOL", "CLASS", "STATE", "PENDING",
                            "INFLIGHT", "TIME"]
    assert rows[0].split()[7] == "PENDING" and rows[1].split()[7] == "RUNNING" and rows[2].split()[7] == "IDLE"
    m, sec = rows[0].split()[-1].split(":")[-2:]                 # created 75 s before the module loaded
    assert int(m) * 60 + int(sec) == pytest.approx(time.time() - SESSIONS[0]["created"], abs=2)
    s = json.loads(run("session", "list", "--json").output)["sessions"][0]
    assert s["state"] == "OPEN" and s["activity"] == "PENDING" and s["created"] == SESSIONS[0]["created"]
    assert dt.datetime.fromisoformat(s["created_iso"]).timestamp() == pytest.approx(s["created"], abs=1)


def test_empty_listing_prints_header(monkeypatch):
    c = FakeClient(sessions=[], records=[])
    monkeypatch.setattr(cli_mod, "_client", lambda url: c)
    res = run("session", "list")
    assert res.exit_code == 0 and "(none)" not in res.output and res.output.split()[0] == "ID"
    res = run("acct")
    assert res.exit_code == 0 and res.output.split()[0] == "SESSION"
    res = run("queue")
    assert "(none)" not in res.output and "ID" in res.output.split()


def test_queue_start_prints_start_and_end_times_as_squeue_start(fake):
    out = lines(run("queue", "--start").output)
    head = next(line for line in out if line.startswith("ID"))
    assert head.split()[-2:] == ["START_TIME", "END_TIME"] and "TIME" not in head.split()
    rows = {line.split()[0]: line.split() for line in out if line.startswith("s-")}
    assert rows["s-a"][-2] == fmt.local_time(NOW) and rows["s-b"][-2] == fmt.local_time(NOW + 60)
    assert rows["s-c"][-2:] == ["N/A", "N/A"]
    assert lines(run("queue", "--start", "-n", "-o", "id,start_time", "-u", "bob").output) == \
        [f"s-b  {fmt.local_time(NOW)}"]          # (the fake predicts by position in what is asked)
    q = json.loads(run("queue", "--start", "--json").output)
    assert q["sessions"][0]["start_iso"] and q["sessions"][2]["start"] is None


def test_queue(fake):
    out = run("queue").output
    assert out.startswith("policy: fair-share") and "POOL" in out and "s-a" in out
    assert lines(run("queue", "-u", "bob", "-n", "-o", "id,pool").output) == ["s-b  lightning"]
    q = json.loads(run("queue", "--json", "--pool", "aer").output)
    assert list(q["pools"]) == ["aer"] and [s["id"] for s in q["sessions"]] == ["s-a"]
    assert "created_iso" in q["sessions"][0]
    q = json.loads(run("queue", "--json").output)
    assert q["pools"]["aer"]["devices"] == ["aer0"] and q["policy"] == "fair-share"


# --- devices -------------------------------------------------------------------------------------------

def test_device_states_read_as_sinfo():
    assert fmt.device_state({"up": True}) == "up"
    assert fmt.device_state({"up": False}) == "down"
    assert fmt.device_state({"up": True}, draining=True) == "drain"
    assert fmt.device_state({"up": False}, draining=True) == "down"
    assert [fmt.device_state({"up": True, "state": s}) for s in ("online", "draining", "paused", "maintenance",
                                                                   "offline")] == ["up", "drain", "pause", "maint",
                                                                                   "down"]


def test_device_list(fake, monkeypatch):
    out = run("device", "list").output
    head, a, b = out.splitlines()
    assert head.split()[:4] == ["NAME", "TYPE", "POOL", "STATE"]
    assert a.split()[3] == "up" and b.split()[3] == "down"
    assert "True" not in out and "None" not in out and "False" not in out
    assert lines(run("device", "list", "--state", "down", "-n", "-o", "name").output) == ["light0"]
    assert lines(run("device", "list", "--pool", "aer", "-n", "-o", "name").output) == ["aer0"]
    d = json.loads(run("device", "list", "--json").output)["devices"]
    assert d[0]["state"] == "up" and d[0]["up"] is True and "at_iso" in d[0]["worker"]
    fake._status = "draining"
    assert run("device", "list", "-n", "-o", "state").output.split() == ["drain", "down"]


# --- sessions by job id; closed sessions -----------------------------------------------------------------

def test_session_show_by_job_and_id(fake):
    res = run("session", "show", "-j", "22")
    assert res.exit_code == 0, res.output
    assert "s-b" in res.output and "RUNNING" in res.output and "usage.device_seconds" in res.output
    js = json.loads(run("session", "show", "s-a", "--json").output)
    assert js["id"] == "s-a" and "created_iso" in js
    assert run("session", "show").exit_code == 2
    assert run("session", "show", "s-a", "-j", "21").exit_code == 2


def test_session_show_closed_session_from_the_ledger(fake):
    res = run("session", "show", "s-gone")
    assert res.exit_code == 0, res.output
    assert "CLOSED" in res.output and "accounting ledger" in res.output and "0.250" in res.output
    js = json.loads(run("session", "show", "s-gone", "--json").output)
    assert js["id"] == "s-gone" and js["state"] == "CLOSED" and js["usage"]["shots"] == 400
    assert "closed_iso" in js and "opened_iso" in js
    js = json.loads(run("session", "show", "-j", "23", "--json").output)
    assert [s["id"] for s in js["sessions"]] == ["s-gone"]
    res = run("session", "show", "s-never")
    assert res.exit_code == 1 and "s-never" in res.output
    res = run("session", "show", "-j", "99")
    assert res.exit_code == 1 and "job 99" in res.output


def test_session_cancel_by_job(fake):
    res = run("session", "cancel", "-j", "22")
    assert res.exit_code == 0, res.output
    assert fake.closed == ["s-b"] and "closed s-b (job 22)" in res.output
    res = run("session", "cancel", "s-a")
    assert res.exit_code == 0 and fake.closed == ["s-b", "s-a"]
    res = run("session", "cancel", "-j", "99")
    assert res.exit_code == 1 and "job 99: no open session" in res.output


# --- acct ------------------------------------------------------------------------------------------------

def test_acct_since_until_and_filters(fake, monkeypatch):
    # the records' times are NOW-relative, NOW taken at import: in a whole-suite run this test starts
    # half an hour later, when "--since 30m" no longer reaches them; the CLI's clock is NOW here
    monkeypatch.setattr(time, "time", lambda: NOW)
    ids = lambda *a: lines(run("acct", "-n", "-o", "session", *a).output)  # noqa: E731
    assert ids() == ["s-old", "s-gone"]
    assert ids("-S", "now-1hours") == ["s-gone"]
    assert ids("--since", "30m") == ["s-gone"]
    assert ids("-E", "now-1hours") == ["s-old"]
    day = dt.datetime.fromtimestamp(NOW - 5400).strftime("%Y-%m-%dT%H:%M:%S")
    assert ids("-S", "0", "-E", day) == []          # the end is exclusive
    assert ids("-S", "2000-01-01") == ["s-old", "s-gone"]
    assert ids("-A", "chem") == ["s-gone"]
    assert ids("-u", "alice") == ["s-old"] and fake.acct_calls[-1][1] == ["alice"]
    assert ids("-u", "alice,bob") == ["s-old", "s-gone"] and fake.acct_calls[-1][1] == ["alice", "bob"]
    assert ids("--pool", "lightning") == []
    assert ids("-j", "20") == ["s-old"] and fake.acct_calls[-1][0] == 0.0   # -j without -S: all time
    res = run("acct", "-S", "last tuesday")
    assert res.exit_code == 2 and "YYYY-MM-DD" in res.output


def test_acct_by_and_json(fake):
    out = run("acct", "--by", "account", "-P").output
    assert lines(out) == ["ACCOUNT|SESSIONS|DEVICE_SECONDS|TASKS|CIRCUITS|SHOTS", "phys|1|1.500|3|30|0",
                          "chem|1|0.250|1|4|400"]
    recs = json.loads(run("acct", "--json").output)["records"]
    assert recs[1]["closed_iso"] and recs[1]["opened_iso"] and recs[1]["device_seconds"] == 0.25
    head = run("acct").output.splitlines()[0].split()
    assert head[:3] == ["SESSION", "JOB_ID", "USER"] and "OPENED" in head


# --- submit ----------------------------------------------------------------------------------------------

def test_submit_keeps_the_scripts_qpu():
    text = "#!/bin/bash\n\n#SBATCH --job-name=x\n#SBATCH --qpu=lightning  # comment\n#SBATCH -N 1\necho hi\n" \
           "#SBATCH --qpu=aer\n"
    opts = script_sbatch_options(text)
    assert opts == ["--job-name=x", "--qpu=lightning", "-N", "1"]
    assert asks_for_qpu(opts) and asks_for_qpu(["--qpu"]) and asks_for_qpu(["--gres=gpu:1,qpu:1"])
    assert asks_for_qpu(["--gres", "qpu:1"]) and not asks_for_qpu(["--qpu-class=debug", "--gres=gpu:1"])
    assert build_sbatch_argv("j.sh", [], nodes=None, time_limit=None, pool=None, klass=None, extra=[],
                             script_opts=opts) == ["j.sh"]
    assert build_sbatch_argv("j.sh", [], nodes=None, time_limit=None, pool="aer", klass=None, extra=[],
                             script_opts=opts) == ["--qpu=aer", "j.sh"]
    assert build_sbatch_argv("j.sh", [], nodes=None, time_limit=None, pool=None, klass=None, extra=[],
                             script_opts=["-N", "1"]) == ["--qpu", "j.sh"]
    assert build_sbatch_argv("j.sh", [], nodes=None, time_limit=None, pool=None, klass=None,
                             extra=["--gres=qpu:1"]) == ["--gres=qpu:1", "j.sh"]
    assert script_sbatch_options(open("examples/qcnn_torch.sbatch").read()).count("--qpu=lightning") == 1


def test_submit_command_passes_no_bare_qpu(monkeypatch, tmp_path):
    pytest.importorskip("qsched.slurm.adapter")
    from qsched.slurm import adapter
    seen = []
    monkeypatch.setattr(adapter.CliSlurmAdapter, "__init__", lambda self, *a, **k: None)
    monkeypatch.setattr(adapter.CliSlurmAdapter, "submit_argv", lambda self, argv: seen.append(argv) or "42",
                        raising=False)
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH --qpu=lightning\necho hi\n")
    res = CliRunner().invoke(cli_mod.cli, ["submit", str(script)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "42" and seen == [[str(script)]]
    res = CliRunner().invoke(cli_mod.cli, ["submit", "--qpu", "aer", str(script)])
    assert seen[-1] == ["--qpu=aer", str(script)]


# --- the client ------------------------------------------------------------------------------------------

def test_client_retry(monkeypatch):
    monkeypatch.delenv("QSCHED_RETRY_S", raising=False)
    assert cli_mod._client("unix:///nonexistent.sock").retry_s == 10
    monkeypatch.setenv("QSCHED_RETRY_S", "2.5")
    assert cli_mod._client("unix:///nonexistent.sock").retry_s == 2.5


# --- top -------------------------------------------------------------------------------------------------

def _metrics(busy, waits):
    text = ["# HELP qsched_device_busy_seconds_total x", "# TYPE qsched_device_busy_seconds_total counter"]
    text += [f'qsched_device_busy_seconds_total{{device="{d}"}} {v}' for d, v in busy.items()]
    for pool, counts in waits.items():
        cum = 0
        for le, n in zip(["0.01", "0.1", "1.0", "+Inf"], counts):
            cum += n
            text.append(f'qsched_queue_wait_seconds_bucket{{le="{le}",pool="{pool}"}} {cum}')
        text.append(f'qsched_queue_wait_seconds_count{{pool="{pool}"}} {cum}')
    return "\n".join(text) + "\n"


def test_top_busy_and_p95_from_deltas():
    a = top_mod.Snapshot.from_metrics(_metrics({"aer0": 10.0}, {"aer": [5, 0, 0, 0]}), 100.0)
    b = top_mod.Snapshot.from_metrics(_metrics({"aer0": 10.5}, {"aer": [5, 0, 100, 0]}), 101.0)
    assert top_mod.busy_percent(a, b) == {"aer0": pytest.approx(50.0)}
    p95 = top_mod.wait_p95(a, b)["aer"]
    assert 0.1 < p95 <= 1.0 and p95 == pytest.approx(0.1 + 0.9 * 95 / 100)
    assert top_mod.wait_p95(b, b) == {"aer": None}          # nothing observed in the window
    restarted = top_mod.Snapshot.from_metrics(_metrics({"aer0": 0.2}, {"aer": [1, 0, 0, 0]}), 102.0)
    assert top_mod.busy_percent(b, restarted) == {} and top_mod.wait_p95(b, restarted) == {}
    assert top_mod.quantile(0.95, [(0.1, 0), (float("inf"), 4)]) == 0.1     # beyond the last bound: that bound
    assert top_mod.quantile(0.5, []) is None


def test_top_frame():
    c = FakeClient()
    out = top_mod.frame(c.queue(), c.devices(), c.health(), {"aer0": 42.0}, {"aer": 0.25}, now=NOW)
    assert "policy fair-share" in out and "42%" in out and "0.250" in out
    assert "ACCOUNT" in out and "JOB_ID" in out and "phys" in out and "\x1b[" not in out
    coloured = top_mod.frame(c.queue(), c.devices(), c.health(), {"aer0": 42.0}, {"aer": 0.25}, now=NOW,
                             colour=True)
    assert "\x1b[" in coloured and click.unstyle(coloured) == out


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_top_colour_rules(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert top_mod.use_colour(_Tty()) and not top_mod.use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not top_mod.use_colour(_Tty())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not top_mod.use_colour(_Tty())


def test_top_once(fake):
    res = run("top", "--once")
    assert res.exit_code == 0 and "policy fair-share" in res.output and "s-a" in res.output


def test_top_reconnects_and_q_quits(monkeypatch):
    c = FakeClient()
    calls = {"n": 0}
    real_queue = c.queue

    def queue():
        calls["n"] += 1
        if calls["n"] in (2, 3):
            raise Unreachable("qsched daemon at unix:///x: connection refused", cause="refused", sent=False)
        return real_queue()
    c.queue = queue
    keys = iter([None, None, None, "q"])
    monkeypatch.setattr(top_mod.Keys, "wait", lambda self, s: next(keys))
    monkeypatch.setattr(top_mod.click, "clear", lambda: None)
    factory_args = []
    monkeypatch.setattr(cli_mod, "_top_client", lambda url, r: factory_args.append(r) or c)
    res = CliRunner().invoke(cli_mod.cli, ["top", "--interval", "0.1"])
    assert res.exit_code == 0, res.output
    frames = res.output.count("policy fair-share")
    assert frames == 2 and res.output.count("reconnecting") == 2 and "connection refused" in res.output
    assert factory_args == [0.0]          # top polls without the client's own retries


def test_acct_state_filter(fake):
    assert lines(run("acct", "--state", "closed", "-n", "-o", "session").output) == ["s-old", "s-gone"]
    assert run("acct", "--state", "running", "-n").output.strip() == ""


def test_a_sessions_late_ledger_record_is_added_to_its_first():
    from qsched.cli import _per_session
    rows = [{"session": "a", "closed": 2.0, "device_seconds": 0.5, "tasks": 0, "late": True},
            {"session": "a", "closed": 1.0, "device_seconds": 1.0, "tasks": 2, "user": "u"},
            {"session": "b", "closed": 1.5, "device_seconds": 3.0, "tasks": 1}]
    got = {r["session"]: r for r in _per_session(rows)}
    assert got["a"]["device_seconds"] == 1.5 and got["a"]["tasks"] == 2 and got["a"]["closed"] == 2.0
    assert got["a"]["user"] == "u" and got["b"]["device_seconds"] == 3.0
