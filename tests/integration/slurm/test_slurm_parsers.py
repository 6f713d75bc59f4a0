"""The Slurm side's pure functions (no Slurm needed): parsers, the reconciler's decision, AdminComment
text, sbatch argument splitting, config checks."""
from __future__ import annotations

import pytest

from qsched.errors import ConfigError
from qsched.slurm.accounting import format_admin_comment
from qsched.slurm.adapter import parse_sbatch_parsable, pyslurm_matches
from qsched.slurm.jobs import (AmbiguousRecord, JobInfo, base_state, job_from_scontrol, job_from_squeue_json,
                               parse_admin_comment, parse_counts, parse_gres, parse_scontrol_record)
from qsched.slurm.reconcile import SessionRef, ended_sessions


def test_counts_and_gres():
    assert parse_counts("qpu:2,foo") == {"qpu": 2, "foo": 1}
    assert parse_counts("(null)") == {} and parse_counts("") == {}
    assert parse_gres("gres:qpu:2") == {"qpu": 2}
    assert parse_gres("gres/qpu=3", "gres:gpu:a100:1,gres:qpu") == {"qpu": 4, "gpu": 1}
    assert base_state(["RUNNING"]) == "RUNNING"
    assert base_state("CANCELLED by 0") == "CANCELLED"
    assert base_state("COMPLETED+COMPLETING") == "COMPLETED"
    assert parse_admin_comment("x qsched:qpu=1,pool=aer,class=batch") == {"qpu": "1", "pool": "aer",
                                                                          "class": "batch"}


def test_squeue_json_22_05_and_newer_shapes():
    j = job_from_squeue_json({"job_id": 7, "job_state": "RUNNING", "user_name": "a", "user_id": 1001,
                              "licenses": "qpu:1", "tres_per_node": "gres:qpu:1", "exit_code": 768,
                              "admin_comment": "qsched:qpu=1,pool=aer,class=batch", "start_time": 5})
    assert (j.job_id, j.uid, j.exit_code, j.qpu.pool, j.qpu.source) == (7, 1001, 3, "aer", "admin_comment")
    assert j.running and j.active and not j.ended
    j2 = job_from_squeue_json({"job_id": {"set": True, "number": 8}, "job_state": ["COMPLETED"],
                               "user_name": "b", "user_id": 1002, "licenses": "",
                               "exit_code": {"status": ["EXITED"], "return_code": {"set": True, "number": 2}},
                               "admin_comment": {"administrator": ""}, "start_time": {"set": False, "number": 0}})
    assert (j2.job_id, j2.state, j2.exit_code, j2.start_time, j2.qpu) == (8, "COMPLETED", 2, None, None)
    assert j2.ended


def test_scontrol_record_forgery_is_refused():
    line = ("JobId=5 JobName=x UserId=root(0) UserId=alice(1001) GroupId=alice(1001) JobState=RUNNING "
            "Licenses=(null)")
    with pytest.raises(AmbiguousRecord):
        parse_scontrol_record(line)
    rec = parse_scontrol_record("JobId=5 JobName=my job UserId=alice(1001) GroupId=g(5) JobState=RUNNING "
                                "Licenses=qpu:1 AdminComment=qsched:qpu=1,pool=x Comment=a b")
    j = job_from_scontrol(rec)
    assert (j.name, j.user, j.uid, j.gid, j.comment) == ("my job", "alice", 1001, 5, "a b")
    # from scontrol only the always-printed license counts as a quantum request
    assert j.qpu.source == "license" and j.qpu.pool is None


def _job(jid, state):
    return JobInfo(job_id=jid, state=state, user="u", uid=1)


def test_ended_sessions():
    jobs = {1: _job(1, "RUNNING"), 2: _job(2, "COMPLETED"), 3: _job(3, "PENDING"), 4: _job(4, "SUSPENDED"),
            5: _job(5, "CANCELLED")}
    refs = [SessionRef("a", 1), SessionRef("b", 2), ("c", 3), SessionRef("d", 4), SessionRef("e", 5),
            SessionRef("f", 99, 10.0), SessionRef("g", 98, 200.0), SessionRef("h", None)]
    got = {(e.session_id, e.reason) for e in ended_sessions(refs, jobs, snapshot_time=100.0)}
    assert got == {("b", "COMPLETED"), ("c", "PENDING"), ("e", "CANCELLED"), ("f", "GONE")}


def test_admin_comment_format():
    usage = {"device_seconds": 2.0, "tasks": 3, "circuits": 30, "shots": 100, "user": "x y"}
    assert format_admin_comment(usage, previous="qsched:qpu=1,pool=aer,class=batch", session_id="s1") == \
        "qsched:qpu=1,pool=aer,class=batch,session=s1,device_s=2.000,tasks=3,circuits=30,shots=100"
    assert format_admin_comment({}, previous="") == "qsched:"


def test_admin_comment_accumulates_over_the_runs_of_a_requeued_job():
    first = format_admin_comment({"device_seconds": 2.0, "tasks": 3, "circuits": 30, "shots": 100},
                                 previous="qsched:qpu=1,pool=aer,class=batch", session_id="s1")
    # the same session written again (the plugin and the reconciler both close it): not counted twice
    assert format_admin_comment({"device_seconds": 2.0, "tasks": 3, "circuits": 30, "shots": 100},
                                previous=first, session_id="s1") == first
    second = format_admin_comment({"device_seconds": 0.5, "tasks": 1, "circuits": 5, "shots": 0},
                                  previous=first, session_id="s2")
    assert second == "qsched:qpu=1,pool=aer,class=batch,runs=2,session=s2,device_s=2.500,tasks=4,circuits=35,shots=100"
    third = format_admin_comment({"device_seconds": 1.0, "tasks": 1}, previous="note " + second, session_id="s3")
    assert third == "note qsched:qpu=1,pool=aer,class=batch,runs=3,session=s3,device_s=3.500,tasks=5"
    # a hand-edited number does not stop the write
    assert format_admin_comment({"tasks": 2}, previous="qsched:session=s0,tasks=x", session_id="s1") == \
        "qsched:runs=2,session=s1,tasks=2"


def test_sbatch_output_and_pyslurm_match():
    assert parse_sbatch_parsable("123\n") == 123
    assert parse_sbatch_parsable("124;cluster\n") == 124
    assert pyslurm_matches("22.05.8") in (True, False)  # no pyslurm 22.05 on PyPI: normally False


def test_submit_argument_helpers():
    from qsched.cli.submit import _seconds, split_passthrough
    assert split_passthrough(["-A", "p", "--partition", "debug", "--wait-all-nodes=1", "s.sh", "--x"]) == (
        ["-A", "p", "--partition", "debug", "--wait-all-nodes=1"], "s.sh", ["--x"])
    assert split_passthrough(["-N2", "s.sh"]) == (["-N2"], "s.sh", [])
    assert split_passthrough(["--exclusive"]) == (["--exclusive"], None, [])
    assert [_seconds(t) for t in ("5", "1:30", "1:00:00", "1-0", "1-2:03:04")] == [300, 90, 3600, 86400, 93784]


def test_munge_payload_binding():
    from qsched.slurm import munge
    p = munge.purpose_payload("attach", job_id=3)
    assert munge.parse_payload(p) == {"purpose": "attach", "job_id": 3}
    with pytest.raises(munge.MungeError):
        munge.parse_payload(b"something else")


def test_slurm_config_is_typed_and_checked():
    from qsched.config import parse_config
    from qsched.integration import SlurmIntegration
    from qsched.slurm import slurm_integration
    with pytest.raises(ConfigError, match="bogus"):
        parse_config({"slurm": {"enabled": False, "bogus": 1}})
    cfg = parse_config({"slurm": {"enabled": False, "env": {"SLURM_CONF": "/x"}}})
    assert cfg.slurm.env == {"SLURM_CONF": "/x"} and cfg.slurm.reconcile_interval_s == 1.0
    hooks = slurm_integration(cfg)        # MUNGE where munged answers, nothing Slurm
    assert isinstance(hooks, SlurmIntegration)
    assert (hooks.verify_job, hooks.on_close, hooks.background) == (None, None, ())


# sshare -P -a -o Account,User,RawShares,NormShares,RawUsage,EffectvUsage,FairShare,LevelFS on Slurm 22.05
# (fair tree) after sacctmgr set chem fairshare=30, phys 10, and a job of qsalice's in chem
SSHARE_22_05 = """Account|User|RawShares|NormShares|RawUsage|EffectvUsage|FairShare|LevelFS
root|||0.000000|347|1.000000||
 root|root|1|0.024390|115|0.333333|0.333333|0.073171
 chem||30|0.731707|231|0.666667||1.097561
  chem|qsalice|1|1.000000|231|1.000000|0.666667|1.000000
 phys||10|0.243902|0|0.000000||inf
  phys|qsbob|1|1.000000|0|0.000000|1.000000|inf
 idle||0|0.000000|0|0.000000||
"""


def test_sshare_parser_and_factors():
    from qsched.slurm.shares import SshareParseError, parse_shares, parse_sshare
    rows = parse_sshare(SSHARE_22_05)
    assert [(r.account, r.user, r.depth) for r in rows[:4]] == [
        ("root", "", 0), ("root", "root", 1), ("chem", "", 1), ("chem", "qsalice", 2)]
    chem = rows[2]
    assert (chem.raw_shares, chem.raw_usage, chem.fairshare, chem.level_fs) == (30, 231.0, None, 1.097561)
    assert rows[5].level_fs == float("inf")
    s = parse_shares(SSHARE_22_05)
    assert s.users == {("root", "root"): 0.333333, ("chem", "qsalice"): 0.666667, ("phys", "qsbob"): 1.0}
    # account rows under fair tree: 2^(-EffectvUsage/NormShares); no shares at all ranks last
    assert s.accounts["chem"] == pytest.approx(2 ** (-0.666667 / 0.731707))
    assert s.accounts["phys"] == 1.0 and s.accounts["idle"] == 0.0 and "root" not in s.accounts
    assert s.factor("chem", "qsalice") == 0.666667 and s.factor("chem", "newuser") == s.accounts["chem"]
    assert s.factor("nowhere", "x") is None
    # the classic algorithm prints FairShare on account rows too: taken as printed; columns in any order
    classic = parse_shares("User|Account|FairShare|NormShares|EffectvUsage\n|a|0.25|0.5|0.5\nu|a|0.125|1|1\n")
    assert classic.accounts == {"a": 0.25} and classic.users == {("a", "u"): 0.125}
    for bad in ("", "no header here\n", "Account|User\nonly-one-field\n"):
        with pytest.raises(SshareParseError):
            parse_sshare(bad)


def test_fairshare_source_slurm_needs_the_slurm_hooks():
    from qsched.config import parse_config
    from qsched.slurm import slurm_integration
    cfg = parse_config({"slurm": {"enabled": False}, "policy": {"fairshare_source": "slurm"}})
    with pytest.raises(ConfigError) as e:
        slurm_integration(cfg)
    assert e.value.field == "policy.fairshare_source"


def _cfg(devices, policy=None, site=None):
    from qsched.config import parse_config
    raw = {"devices": devices, "policy": policy or {}, "slurm": {"enabled": False, **({"site": site} if site else {})}}
    return parse_config(raw)


def test_site_from_the_daemons_config():
    """Per-pool licences: slots_per_device x the pool's devices; classes from the policy; the Lua table."""
    from qsched.slurm.site import pool_of_license, render_site_lua, site_from_config
    cfg = _cfg([{"name": "a0", "type": "aer", "pool": "aer"}, {"name": "a1", "type": "aer", "pool": "aer"},
                {"name": "q0", "type": "null", "pool": "qpu-1"}],
               policy={"classes": {"gold": {"tier": 1}}}, site={"slots_per_device": 3, "default_pool": "qpu-1"})
    site = site_from_config(cfg)
    assert dict(site.pools) == {"aer": 6, "qpu-1": 3} and site.default_pool == "qpu-1"
    assert site.licenses_line() == "Licenses=qpu_aer:6,qpu_qpu-1:3"
    lua = render_site_lua(site, source="x.yaml")
    assert 'pools = { ["aer"] = "qpu_aer", ["qpu-1"] = "qpu_qpu-1" },' in lua
    assert '["gold"] = true' in lua and '["batch"] = true' in lua and 'default_pool = "qpu-1",' in lua
    assert "-- Licenses=qpu_aer:6,qpu_qpu-1:3" in lua
    assert site_from_config(_cfg([{"name": "n", "type": "null"}])).default_pool == "null"   # the first pool
    assert pool_of_license("qpu_aer") == "aer" and pool_of_license("qpu") is None and pool_of_license("qpu_") is None


@pytest.mark.parametrize("devices, site, field", [
    ([{"name": "n", "type": "null", "pool": "bad pool"}], None, "devices"),
    ([{"name": "n", "type": "null"}], {"default_pool": "aer"}, "slurm.site.default_pool"),
    ([{"name": "n", "type": "null"}], {"default_class": "gold"}, "slurm.site.default_class"),
    ([{"name": "n", "type": "null"}], {"slots_per_device": 0}, "slurm.site.slots_per_device"),
    ([{"name": "n", "type": "null"}], {"max_qpu": "4"}, "slurm.site.max_qpu"),
    ([{"name": "n", "type": "null"}], {"licences": 4}, "slurm.site.licences"),
])
def test_site_config_errors_name_the_field(devices, site, field):
    from qsched.slurm.site import site_from_config
    with pytest.raises(ConfigError) as e:
        site_from_config(_cfg(devices, site=site))
    assert e.value.field == field


def test_pool_licence_is_a_quantum_request():
    """From scontrol (licences only) a pool's licence gives the count and the pool."""
    rec = parse_scontrol_record("JobId=5 JobName=x UserId=alice(1001) GroupId=g(5) JobState=RUNNING "
                                "Licenses=qpu_lightning:2,matlab:1")
    j = job_from_scontrol(rec)
    assert (j.qpu.count, j.qpu.pool, j.qpu.source) == (2, "lightning", "license")
    j2 = job_from_squeue_json({"job_id": 6, "job_state": "PENDING", "user_name": "a", "user_id": 1,
                               "licenses": "qpu_aer:1,qpu_lightning:1"})
    assert (j2.qpu.count, j2.qpu.pool) == (2, None)


def test_maintenance_reservations_from_states_and_windows():
    from qsched.slurm.maintenance import DeviceView, Window, desired_reservations, plan, scontrol_args
    from qsched.slurm.site import Site
    site = Site(pools={"aer": 8, "qpu": 4}, classes=("batch",), default_pool="aer", default_class="batch",
                max_qpu=4, slots_per_device=4)
    devs = [DeviceView("a0", "aer", "online"), DeviceView("a1", "aer", "draining"), DeviceView("q0", "qpu", "online")]
    now = 1000.0
    want = desired_reservations(site, devs, [], now)
    assert {n: dict(r.licenses) for n, r in want.items()} == {"qsched_down_aer": {"qpu_aer": 4}}
    assert (want["qsched_down_aer"].start, want["qsched_down_aer"].end) == (None, None)
    # a future window over the whole qpu pool, one over one aer device now, a past one
    windows = [Window("qpu", start=1600.0, end=2200.0), Window("aer", start=900.0, end=1300.0, devices=("a0",)),
               Window("qpu", start=100.0, end=200.0), Window("gone", start=0.0)]
    want = desired_reservations(site, devs, windows, now)
    assert {n: dict(r.licenses) for n, r in want.items()} == {
        "qsched_down_aer": {"qpu_aer": 4}, "qsched_maint_aer_900": {"qpu_aer": 4},
        "qsched_maint_qpu_1600": {"qpu_qpu": 4}}
    # never more than the pool has: a1 down and a whole-pool window on now leave 4 for the window
    capped = desired_reservations(site, devs, [Window("aer", start=0.0)], now)
    assert dict(capped["qsched_maint_aer_0"].licenses) == {"qpu_aer": 4}
    args = scontrol_args(plan({"x": want["qsched_maint_qpu_1600"]}, {})[0], now)
    assert args == ["create", "ReservationName=qsched_maint_qpu_1600", "Licenses=qpu_qpu:4", "StartTime=now+600",
                    "EndTime=now+1200", "Users=root", "Flags=LICENSE_ONLY,IGNORE_JOBS"]
    assert "Duration=UNLIMITED" in scontrol_args(plan(want, {})[0], now)
    # against what Slurm has: update the count, delete qsched's stale one, leave the site's own alone
    existing = {"qsched_down_aer": {"qpu_aer": 8}, "qsched_down_qpu": {"qpu_qpu": 4}, "site_maint": {"qpu_aer": 1},
                "qsched_maint_aer_900": {"qpu_aer": 4}}
    acts = {(a.verb, a.reservation.name) for a in plan(want, existing)}
    assert acts == {("update", "qsched_down_aer"), ("delete", "qsched_down_qpu"), ("create", "qsched_maint_qpu_1600")}
    upd = next(a for a in plan(want, existing) if a.verb == "update")
    assert scontrol_args(upd, now) == ["update", "ReservationName=qsched_down_aer", "Licenses=qpu_aer:4"]
    assert plan({}, {"site_maint": {"qpu_aer": 1}}) == []


def test_reservation_listing_parser():
    from qsched.slurm.maintenance import parse_reservations
    text = ("ReservationName=qsched_down_aer StartTime=2026-12-01T14:24:37 EndTime=2027-12-01T14:24:37 "
            "Duration=365-00:00:00 Nodes=(null) NodeCnt=0 CoreCnt=0 Features=(null) PartitionName=(null) "
            "Flags=IGNORE_JOBS,ANY_NODES TRES=(null) Users=root Groups=(null) Accounts=(null) Licenses=qpu_aer:4 "
            "State=ACTIVE BurstBuffer=(null) Watts=n/a MaxStartDelay=(null)\n")
    assert parse_reservations(text) == {"qsched_down_aer": {"qpu_aer": 4}}
    assert parse_reservations("No reservations in the system\n") == {}


def test_slurm_sync_writes_then_checks(tmp_path, monkeypatch):
    import yaml
    from click.testing import CliRunner

    from qsched.cli import cli
    cfg = tmp_path / "q.yaml"
    cfg.write_text(yaml.safe_dump({"devices": [{"name": "n0", "type": "null", "pool": "fast"}]}))
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\nLicenses=qpu:4\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    r = CliRunner().invoke(cli, ["slurm", "sync", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    lua = (tmp_path / "qsched_site.lua").read_text()       # beside $SLURM_CONF
    assert 'pools = { ["fast"] = "qpu_fast" },' in lua
    assert "slurm.conf: Licenses=qpu_fast:4" in r.output and "has Licenses=qpu:4" in r.output
    r = CliRunner().invoke(cli, ["slurm", "sync", "--config", str(cfg), "--check"])
    assert r.exit_code == 1 and "the config needs Licenses=qpu_fast:4" in r.output
    conf.write_text("Licenses=qpu_fast:4\n")
    r = CliRunner().invoke(cli, ["slurm", "sync", "--config", str(cfg), "--check"])
    assert r.exit_code == 0 and "in step" in r.output
