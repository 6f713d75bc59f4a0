"""Weighted shares with merging on, against a real daemon, from two real Unix users' sessions: root
(account chem, weight 2, from the config's users mapping) and nobody (account phys, weight 1)."""
from __future__ import annotations

import importlib.util
import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest

SHARES = Path(__file__).resolve().parents[2] / "benchmarks" / "shares.py"


def _shares():
    spec = importlib.util.spec_from_file_location("qsched_bench_shares", SHARES)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_two_users_get_device_time_in_the_ratio_of_their_accounts_weights(fresh_daemon, portable_python):
    if os.geteuid() != 0:
        pytest.skip("acting as another user needs root")
    shares = _shares()
    nobody = pwd.getpwnam("nobody")
    d = fresh_daemon(devices=shares.DEVICES, policy=shares.POLICY,
                     extra={"users": {"root": "chem", "nobody": "phys"}})
    for p in [d.state_dir, *d.state_dir.parents]:        # pytest's tmp dirs are 0700
        if str(p) in ("/", "/tmp"):
            break
        os.chmod(p, os.stat(p).st_mode | 0o005)

    def as_nobody(url, outstanding, deadline):
        res = subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                              portable_python.exe, "-c", shares.CLIENT, url, str(outstanding), str(deadline)],
                             capture_output=True, text=True, timeout=120, cwd="/",
                             env={**os.environ, **portable_python.env, "HOME": "/tmp"})
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert (out["user"], out["account"]) == ("nobody", "phys")      # the account of record
        return out

    ratio = shares.measure(d.url, 8, 25.0, run_other=as_nobody)
    print(f"device-seconds chem/phys = {ratio:.3f} (weights 2:1, merge on, K=8)")
    assert ratio == pytest.approx(2.0, rel=0.05)
