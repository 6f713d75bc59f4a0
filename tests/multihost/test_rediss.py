"""A worker on another host reaching the store over TLS (rediss://, the CA from redis.tls.ca_file) with a
password from a 0600 file; the daemon on its own host over the same; tasks run through both workers."""
from __future__ import annotations

import collections
import os

import numpy as np
from hosts import made_hosts, make_certs, private_file, start_daemon, start_worker, wait_for, write_config
from qiskit.circuit.library import efficient_su2

import qsched


def test_daemon_and_remote_worker_over_rediss():
    with made_hosts("qsched-rediss-", ("store", "daemon", "worker")) as (net, base, h):
        st, dh, wh = h["store"], h["daemon"], h["worker"]
        certs = make_certs(base / "tls", [st.addr])
        password = os.urandom(12).hex()
        pw = private_file(base / "redis.pass", password)
        conf = private_file(base / "redis.conf",
                            f"bind {st.addr}\nport 0\ntls-port 6380\ntls-cert-file {certs['server.pem']}\n"
                            f"tls-key-file {certs['server.key']}\ntls-ca-cert-file {certs['ca.pem']}\n"
                            f"tls-auth-clients no\nrequirepass {password}\nsave \"\"\ndir {base}\n"
                            f"logfile {base / 'redis.log'}\n")
        net.spawn(st, ["redis-server", str(conf)], base / "redis.out")
        redis_cfg = {"url": f"rediss://{st.addr}:6380/0", "password_file": str(pw),
                     "tls": {"ca_file": str(certs["ca.pem"])}}
        devices = [{"name": "null0", "type": "null", "pool": "null", "start_worker": False},
                   {"name": "null1", "type": "null", "pool": "null"}]
        state = base / "daemon"
        start_daemon(net, dh, state, {"redis": redis_cfg, "devices": devices, "daemon": {"tcp": None}})
        start_worker(net, wh, "null0", write_config(base / "w.yaml", {"state_dir": str(base / "ws"),
                                                                      "redis": redis_cfg, "devices": devices}),
                     base / "worker.log")
        c = qsched.Client(f"unix://{state / 'qsched.sock'}", retry_s=30)
        wait_for(lambda: all(d["up"] for d in c.devices()), 60, "both workers up over rediss"
                 + (state / "daemon.log").read_text(errors="replace")[-2000:])
        s = c.open_session("null")
        qc = efficient_su2(2, reps=1)
        futs = [s.submit("estimate", qc, np.full((1, qc.num_parameters), i), observables=["ZZ"]) for i in range(30)]
        seen = collections.Counter(f.result(60).meta["device"] for f in futs)
        assert sum(seen.values()) == 30
        s.close()
        assert password not in (state / "daemon.log").read_text(errors="replace")
