"""redis.wait_replicas: 1 with no replica: a submission is not acknowledged (503, code
replication_timeout) however often it is retried, and once a replica is attached the retry under the
same idempotency key is answered with the same task ids: nothing submitted twice."""
from __future__ import annotations

import subprocess
import threading
import time

import numpy as np
from hosts import free_port, made_hosts, private_file, start_daemon, start_redis, wait_for
from qiskit.circuit.library import efficient_su2

import qsched
from qsched import errors, keys


def test_no_replica_no_acknowledgement_then_the_retry_gets_the_same_ids():
    with made_hosts("qsched-wait-", ("store", "replica", "daemon")) as (net, base, h):
        url, pw, _ = start_redis(net, h["store"], base / "redis")
        password = pw.read_text()
        import redis
        r = redis.Redis.from_url(url, password=password)
        state = base / "daemon"
        start_daemon(net, h["daemon"], state, {
            "redis": {"url": url, "password_file": str(pw), "wait_replicas": 1, "wait_timeout_ms": 50},
            "devices": [{"name": "null0", "type": "null", "pool": "null"}], "daemon": {"tcp": None}})
        sock = f"unix://{state / 'qsched.sock'}"
        wait_for(lambda: all(d["up"] for d in qsched.Client(sock, retry_s=0).devices()), 60,
                 "daemon up" + (state / "daemon.log").read_text(errors="replace")[-2000:])
        qc = efficient_su2(2, reps=1)
        params = np.zeros((1, qc.num_parameters))
        # no replica: opening a session already waits for one (and times out)
        try:
            qsched.Client(sock, retry_s=0).open_session("null")
            raise AssertionError("a session was acknowledged without a replica")
        except errors.Unavailable as e:
            assert "replicas acknowledged" in e.message
        assert r.scard(keys.SESSIONS) == 0              # the unacknowledged session is not left open
        # a client that retries: its submission stays unacknowledged until a replica is attached
        c = qsched.Client(sock, retry_s=120)
        opened: list = []
        t = threading.Thread(target=lambda: opened.append(c.open_session("null")))
        t.start()
        time.sleep(1.5)
        assert not opened
        primary = url.split("//")[1].split("/")[0].replace(":", " ")
        port = 6379 if net.kind == "netns" else free_port(h["replica"].addr)
        rconf = private_file(base / "replica.conf", f"bind {h['replica'].addr}\nport {port}\ndir {base}\n"
                             f"dbfilename replica.rdb\nsave \"\"\nreplicaof {primary}\n"
                             f"masterauth {password}\nrequirepass {password}\nprotected-mode no\n")
        replica = net.spawn(h["replica"], ["redis-server", str(rconf)], base / "replica.log")
        t.join(120)
        s = opened[0]
        replica.kill()                        # gone again: the next submission is not acknowledged...
        replica.wait()
        done: list = []
        sub = threading.Thread(target=lambda: done.append(s.submit("estimate", qc, params, observables=["ZZ"])))
        sub.start()
        time.sleep(1.5)
        assert not done
        net.procs.append(subprocess.Popen(replica.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))       # ...until one is back
        sub.join(120)
        fut = done[0]
        assert fut.result(60).evs.shape == (1, 1)
        task_keys = list(r.scan_iter(match=f"qsched:task:{{{s.id}}}:*", count=1000))
        assert [k for k in task_keys if not k.endswith((b":params", b":result"))] == [keys.task(fut.id).encode()]
        assert s.status()["usage"]["tasks"] == 1
        assert r.smembers(keys.SESSIONS) == {s.id.encode()}   # the retries opened no other session
        log = (state / "daemon.log").read_text(errors="replace")
        assert password not in log
