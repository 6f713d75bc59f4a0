"""The admin's tools against a real daemon (`qsched up`: embedded Redis, real worker processes):
`qsched share`, `qsched prio`, `qsched policy show`, and `qsched session update` (--hold / --release,
--class / --weight) over the admin socket, each change in the daemon's log with who made it; a
non-admin (nobody) is refused."""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter

ME = pwd.getpwuid(os.getuid()).pw_name
SLOW = [{"name": "slow0", "type": "null", "pool": "slow", "options": {"delay_s": 0.1}}]
POLICY = {"name": "fair-share", "merge": False, "priority_weight_fairshare": 1000, "priority_weight_age": 10,
          "classes": {"interactive": {"tier": 1, "weight": 4}},
          "weights": {"accounts": {"chem": 2}},
          "quotas": {"chem": {"device_s": 36000, "period": "30d"}}}


def qs(url, *args, timeout=60):
    env = {**os.environ, "QSCHED_URL": url, "QSCHED_RETRY_S": "2"}
    return subprocess.run([sys.executable, "-m", "qsched", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def circuit():
    qc = QuantumCircuit(1)
    qc.rx(Parameter("a"), 0)
    return qc


def submit(s, n):
    return s.submit_many([dict(kind="estimate", circuit=circuit(), params=np.zeros((1, 1)), observables=["Z"])] * n)


def test_share_prio_policy_show_and_session_update_hold_release(fresh_daemon):
    d = fresh_daemon(devices=SLOW, policy=POLICY, extra={"users": {ME: ["chem", "phys"]}})
    admin = f"unix://{d.state_dir / 'admin.sock'}"
    c = d.client()
    s = c.open_session("slow")
    other = c.open_session("slow", account="phys")
    try:
        for f in submit(s, 3):                  # usage for share
            f.result(30)
        futs = submit(s, 30)

        out = qs(admin, "session", "update", s.id, "--hold", "--reason", "maintenance window")
        assert out.returncode == 0, out.stderr
        assert "held (held by root: maintenance window)" in out.stdout
        view = json.loads(qs(d.url, "session", "show", s.id, "--json").stdout)
        assert view["held"] is True and view["reason"] == "held by root: maintenance window"
        assert view["activity"] in ("HELD", "RUNNING")        # a batch already running finishes
        time.sleep(0.5)
        before = c.session_info(s.id)["pending"]
        time.sleep(1.0)
        assert c.session_info(s.id)["pending"] == before > 0                # nothing dispatched while held
        listed = qs(d.url, "session", "list", "-o", "id,state,reason", "-P", "-n").stdout.splitlines()
        assert f"{s.id}|HELD|held by root: maintenance window" in listed
        # held sessions show in prio with their reason
        prio = json.loads(qs(d.url, "prio", "--json").stdout)["sessions"]
        mine = {r["id"]: r for r in prio}
        assert mine[s.id]["held"] and mine[s.id]["reason"].startswith("held by root")
        assert set(mine[s.id]["factors"]) == {"age", "fairshare", "qos", "job_size"}
        assert abs(mine[s.id]["weighted"]["fairshare"] - 1000 * mine[s.id]["factors"]["fairshare"]) < 1e-9
        table = qs(d.url, "prio", "-o", "id,priority,fairshare,held", "-P").stdout.splitlines()
        assert table[0] == "ID|PRIORITY|FAIRSHARE|HELD" and any(line.startswith(s.id) for line in table[1:])

        # the account with usage (chem, shares 2) and the one without (phys)
        shares = json.loads(qs(d.url, "share", "--json").stdout)["shares"]
        chem = next(r for r in shares if r["account"] == "chem" and not r["user"])
        chem_me = next(r for r in shares if r["account"] == "chem" and r["user"] == ME)
        phys = next(r for r in shares if r["account"] == "phys" and not r["user"])
        assert chem["raw_shares"] == 2 and chem["usage_s"] >= 0.3 and chem["effective_usage"] == 1.0
        assert 0 < chem["fairshare"] < 1 and phys["fairshare"] == 1.0 and phys["usage_s"] == 0
        assert chem_me["usage_s"] == chem["usage_s"] and chem_me["fairshare"] <= chem["fairshare"]
        table = qs(d.url, "share", "-A", "chem", "-o", "account,user,raw_shares,fairshare", "-P", "-n").stdout
        assert table.splitlines()[0].startswith("chem||2")

        doc = json.loads(qs(d.url, "policy", "show", "--json").stdout)
        assert doc["name"] == "fair-share" and doc["options"]["priority_weight_fairshare"] == 1000
        assert doc["options"]["priority_max_age_s"] == 300             # defaults filled in
        assert doc["classes"]["interactive"]["tier"] == 1 and doc["weights"]["accounts"] == {"chem": 2}
        assert doc["quotas"]["chem"]["device_s"] == 36000 and doc["quotas"]["chem"]["used_s"] >= 0.3
        assert doc["preempt"] is True
        text = qs(d.url, "policy", "show").stdout
        assert "interactive" in text and "chem" in text and "priority_weight_fairshare" in text

        out = qs(admin, "session", "update", s.id, "--release", "--class", "interactive", "--weight", "2")
        assert out.returncode == 0, out.stderr
        assert [f.result(60).evs.shape for f in futs] == [(1, 1)] * 30
        info = c.session_info(s.id)
        assert (info["class"], info["weight"], info["held"], info["reason"]) == ("interactive", 2.0, False, "")
        assert info["weight_effective"] == 2 * 4 * 2                        # account x class x own

        bad = qs(admin, "session", "update", s.id, "--class", "nonesuch")
        assert bad.returncode == 1 and "unknown class 'nonesuch'" in bad.stderr
        log = d.log()
        assert f"session {s.id} updated by root: hold '' -> 'held by root: maintenance window'" in log
        assert f"session {s.id} updated by root: class 'batch' -> 'interactive', weight 1.0 -> 2.0, hold" in log
    finally:
        s.close()
        other.close()
        c.close()


def test_a_non_admin_is_refused_session_update(fresh_daemon, portable_python):
    d = fresh_daemon(devices=SLOW, policy=POLICY)
    c = d.client()
    s = c.open_session("slow")
    try:
        for p in [d.state_dir, *d.state_dir.parents]:        # pytest's tmp dirs are 0700
            if str(p) in ("/", "/tmp"):
                break
            os.chmod(p, os.stat(p).st_mode | 0o005)
        nobody = pwd.getpwnam("nobody")
        env = {**os.environ, **portable_python.env, "HOME": "/tmp", "QSCHED_RETRY_S": "1"}
        for url in (f"unix://{d.state_dir / 'admin.sock'}", d.url):
            res = subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                                  portable_python.exe, "-m", "qsched", "session", "update", s.id, "--hold",
                                  "--url", url], capture_output=True, text=True, timeout=120, env=env, cwd="/")
            assert res.returncode != 0, (url, res.stdout)
            # the admin socket is root's alone (0600); the user socket refuses admin requests
            assert ("Permission denied" if url.endswith("admin.sock") else "admin requests go to the admin socket") \
                in res.stderr, res.stderr
        info = c.session_info(s.id)
        assert info["held"] is False and info["hold"] == ""
        assert "updated by" not in d.log()
    finally:
        s.close()
        c.close()


def test_admin_verbs_reach_the_admin_socket_while_qsched_url_names_the_user_listener(fresh_daemon):
    # an admin's shell (or a job's environment) has QSCHED_URL set to the user socket: admin verbs
    # must still go to the admin socket of the config they name
    d = fresh_daemon(devices=SLOW)
    out = qs(d.url, "device", "drain", "slow0", "--reason", "cooling", "--config", str(d.config_path))
    assert out.returncode == 0, out.stderr
    assert "device slow0: draining (cooling)" in out.stdout
    out = qs(d.url, "device", "resume", "slow0", "--config", str(d.config_path))
    assert out.returncode == 0, out.stderr
    # an explicit --url still wins: the user listener has no admin routes
    out = qs(d.url, "device", "drain", "slow0", "--url", d.url, "--config", str(d.config_path))
    assert out.returncode != 0


def test_replay_show_purge_and_pool_off_and_session_show_counts_replayed(fresh_daemon, monkeypatch):
    """A resume key from the client's environment (QSCHED_RESUME): the second session gets its tasks
    from the record, `qsched session show` counts them; `qsched replay show/purge/off/on` (admin)."""
    d = fresh_daemon(devices=[{"name": "null0", "type": "null", "pool": "null"}])
    admin = f"unix://{d.state_dir / 'admin.sock'}"
    c = d.client()
    monkeypatch.setenv("QSCHED_RESUME", "cli-chain")
    params = [np.full((1, 1), 0.1 * i) for i in range(2)]
    for run in range(2):
        s = c.open_session("null")
        res = [s.run("estimate", circuit(), p, observables=["Z"], timeout=30) for p in params]
        if run:
            assert [r.meta.get("replayed") for r in res] == [True, True]
            view = json.loads(qs(d.url, "session", "show", s.id, "--json").stdout)
            assert view["replayed"] == 2
        s.close()
    out = qs(admin, "replay", "show", "--resume", "cli-chain")
    assert out.returncode == 0 and json.loads(out.stdout)["entries"] == 2, out.stderr
    out = qs(admin, "replay", "off", "null")
    assert out.returncode == 0 and "pool null: replay off" in out.stdout, out.stderr
    s = c.open_session("null")
    assert s.run("estimate", circuit(), params[0], observables=["Z"], timeout=30).meta.get("replayed") is None
    s.close()
    assert "pool null: replay on" in qs(admin, "replay", "on", "null").stdout
    out = qs(admin, "replay", "purge", "--resume", "cli-chain")
    assert out.returncode == 0 and "replay record resume:cli-chain purged" in out.stdout, out.stderr
    out = qs(admin, "replay", "purge", "--resume", "cli-chain")
    assert out.returncode != 0 and "no replay record" in out.stderr
