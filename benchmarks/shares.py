"""Weighted shares with merging on, against a real daemon: two sessions (accounts chem, weight 2, and
phys, weight 1), one template each, K tasks outstanding (aer, 10 qubits, 200 bindings a task), both
backlogged until a common deadline, when both close. Prints the ratio of their usage records'
device-seconds, chem / phys, for each K.

    .venv/bin/python benchmarks/shares.py [--seconds 30] [--outstanding 8 16 24]

The client loop is also run by tests/integration/test_shares.py as two real Unix users."""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

CLIENT = r'''
import json, sys, time
from collections import deque
import numpy as np
import qsched
from qiskit.circuit.library import efficient_su2

def client_loop(url, outstanding, deadline, account=None, qubits=10, bindings=200):
    """Keep `outstanding` tasks in the system until `deadline` (Unix time), then close the session:
    its usage record (what `qsched acct` shows) holds the device-seconds of the batches that ran."""
    qc = efficient_su2(qubits, reps=2)
    rng = np.random.default_rng(len(account or "") + outstanding)
    obs = "Z" * qubits
    with qsched.Client(url) as c:
        s = c.open_session("aer", account=account)
        futs = deque(s.submit("estimate", qc, rng.random((bindings, qc.num_parameters)), observables=obs)
                     for _ in range(outstanding))
        while time.time() < deadline:
            futs.popleft().result(120)
            futs.append(s.submit("estimate", qc, rng.random((bindings, qc.num_parameters)), observables=obs))
        rec = s.close()
    return {"account": rec["account"], "user": rec["user"], "device_s": rec["device_seconds"]}

if __name__ == "__main__":
    print(json.dumps(client_loop(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]),
                                 sys.argv[4] if len(sys.argv) > 4 else None)))
'''
exec(compile(CLIENT.replace('if __name__ == "__main__":', "if False:"), "shares-client", "exec"))

POLICY = {"name": "fair-share", "weights": {"accounts": {"chem": 2, "phys": 1}}}
DEVICES = [{"name": "aer0", "type": "aer", "pool": "aer"}]


def measure(url: str, outstanding: int, seconds: float, run_other=None) -> float:
    """Ratio chem / phys. `run_other(url, outstanding, deadline)` runs the phys client (as another
    user); by default both run here, the phys one naming its account (allowed for an admin)."""
    deadline = time.time() + seconds
    out: dict = {}
    other = run_other or (lambda u, k, dl: client_loop(u, k, dl, account="phys"))  # noqa: F821
    t = threading.Thread(target=lambda: out.setdefault("phys", other(url, outstanding, deadline)))
    t.start()
    out["chem"] = client_loop(url, outstanding, deadline, account="chem")  # noqa: F821
    t.join()
    return out["chem"]["device_s"] / out["phys"]["device_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--outstanding", type=int, nargs="+", default=[8, 16, 24])
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _daemon import private_daemon
    rows = {}
    with private_daemon(DEVICES, policy=POLICY) as url:
        for k in a.outstanding:
            rows[k] = measure(url, k, a.seconds)
            print(f"K={k:3d}  device-seconds chem/phys = {rows[k]:.3f}  (weights 2:1, merge on)")
    print(json.dumps({"shares_ratio": rows}))


if __name__ == "__main__":
    main()
