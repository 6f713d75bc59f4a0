"""Weighted shares with merging on, against a real daemon, from two real Unix users' sessions: root
(account chem, weight 2, from the config's users mapping) and nobody (account phys, weight 1)."""
from __future__ import annotations

import importlib.util
import json
import os
import pwd
import select
import subprocess
import time
from pathlib import Path

import pytest

BARRIER_MAIN = r'''
import sys as _sys
print("ready", flush=True)                      # imported: the common deadline comes on stdin
print(json.dumps(client_loop(_sys.argv[1], int(_sys.argv[2]), float(_sys.stdin.readline()))))
'''
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

    # the other user's client is a fresh interpreter (numpy, qiskit and qsched to import: seconds on a
    # loaded machine). The common deadline is set once it is ready, so neither client has the device to
    # itself while the other starts: time alone is never paid back (SFQ credits 0.5 s at most)
    code = shares.CLIENT.replace('if __name__ == "__main__":', "if False:") + BARRIER_MAIN
    other = subprocess.Popen(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                              portable_python.exe, "-c", code, d.url, "8"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd="/", env={**os.environ, **portable_python.env, "HOME": "/tmp"})
    try:
        assert other.stdout is not None and other.stdin is not None
        readable, _, _ = select.select([other.stdout], [], [], 120)
        assert readable and other.stdout.readline().strip() == "ready", other.stderr.read() if other.stderr else ""
        deadline = time.time() + 25.0
        other.stdin.write(f"{deadline!r}\n")
        other.stdin.flush()
        chem = shares.client_loop(d.url, 8, deadline, account="chem")
        out, err = other.communicate(timeout=120)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert other.returncode == 0, err
    phys = json.loads(out.strip().splitlines()[-1])
    assert (phys["user"], phys["account"]) == ("nobody", "phys")        # the account of record
    ratio = chem["device_s"] / phys["device_s"]
    print(f"device-seconds chem/phys = {ratio:.3f} (weights 2:1, merge on, K=8)")
    assert ratio == pytest.approx(2.0, rel=0.05)
