"""Clients ride through a daemon restart (SIGTERM: drain, exit; started again on the same state
directory and Redis): results correct, each task run once, one log line per outage."""
from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time

import numpy as np
from qiskit.circuit.library import efficient_su2
from qiskit.primitives import StatevectorEstimator
from qiskit.quantum_info import SparsePauliOp

import qsched

SLOW = {"name": "slow0", "type": "null", "pool": "slow", "options": {"delay_s": 0.3}}
AER = {"name": "aer0", "type": "aer", "pool": "aer", "max_qubits": 8}
DEVICES = [SLOW, AER]
POLICY = {"name": "fifo", "merge": False}


def _wait_for(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def _restart(fresh_daemon, d, state):
    """SIGTERM, let it drain and exit, start a new daemon on the same state (embedded Redis, AOF)."""
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(60) == 0, d.log()
    return fresh_daemon(state_dir=state, devices=DEVICES, policy=POLICY)


def _reference(qc, params):
    return StatevectorEstimator().run([(qc, SparsePauliOp("ZZ"), params)]).result()[0].data.evs


def _lines(caplog, thread, word):
    """The client's log lines from one thread (the fixture's readiness poll has a client of its own)."""
    return [r.getMessage() for r in caplog.records
            if r.name == "qsched.client" and r.threadName == thread and word in r.getMessage()]


def test_sync_client_rides_through_a_restart(fresh_daemon, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("QSCHED_RETRY_S", "120")
    state = tmp_path / "state"
    d = fresh_daemon(state_dir=state, devices=DEVICES, policy=POLICY)
    qc = efficient_su2(2, reps=1)
    params = np.random.default_rng(7).uniform(-1, 1, size=(400, qc.num_parameters))
    restarted = threading.Event()
    evs, failure = [], []

    def vqe_loop(session):
        """A hybrid job's loop: one run() per iteration, through the restart and a few beyond it."""
        try:
            after = 0
            for i in range(len(params)):
                evs.append(session.run("estimate", qc, params[i:i + 1], observables="ZZ", timeout=120).evs[0, 0])
                after += restarted.is_set()
                if after >= 3:
                    return
        except BaseException as e:          # noqa: BLE001 - reported by the main thread
            failure.append(e)

    with caplog.at_level(logging.INFO, logger="qsched.client"), qsched.Client(d.url) as c:
        slow, aer = c.open_session("slow", name="outstanding"), c.open_session("aer", name="vqe")
        futs = slow.submit_many([{"kind": "estimate", "circuit": qc, "params": params[i:i + 1],
                                  "observables": ["ZZ"]} for i in range(10)])
        loop = threading.Thread(target=vqe_loop, args=(aer,))
        loop.start()
        assert _wait_for(lambda: len(evs) >= 3 and futs[0].state() == "DONE")
        assert not futs[-1].done()                                 # tasks outstanding at SIGTERM
        d2 = _restart(fresh_daemon, d, state)
        restarted.set()
        loop.join(120)
        assert not loop.is_alive() and not failure, failure
        results = slow.wait(futs, timeout=60)                     # pending tasks ran on the new daemon
        assert len(results) == 10 and all(r.evs.shape == (1, 1) for r in results)
        n = len(evs)
        np.testing.assert_allclose(evs, _reference(qc, params[:n]), atol=1e-10)
        # each task ran (and was charged) exactly once, although some requests were sent twice
        assert slow.status()["usage"]["tasks"] == 10
        assert aer.status()["usage"]["tasks"] == n
        assert d2.client().session_info(aer.id)["usage"]["tasks"] == n
        slow.close()
        aer.close()
    assert len(_lines(caplog, loop.name, "retrying")) == 1, caplog.text      # once per outage, not per try
    assert len(_lines(caplog, loop.name, "back after")) == 1, caplog.text


def test_async_client_rides_through_a_restart(fresh_daemon, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("QSCHED_RETRY_S", "120")
    state = tmp_path / "state"
    d = fresh_daemon(state_dir=state, devices=DEVICES, policy=POLICY)
    qc = efficient_su2(2, reps=1)
    params = np.random.default_rng(8).uniform(-1, 1, size=(8, qc.num_parameters))

    async def main():
        async with qsched.AsyncClient(d.url) as c:
            slow = await c.open_session("slow")
            aer = await c.open_session("aer")
            futs = await slow.submit_many([{"kind": "estimate", "circuit": qc, "params": params[i:i + 1],
                                            "observables": ["ZZ"]} for i in range(8)])
            waiting = asyncio.ensure_future(slow.wait(futs, timeout=120))      # a long-poll the restart cuts
            await asyncio.sleep(0.5)
            restart = asyncio.get_running_loop().run_in_executor(None, _restart, fresh_daemon, d, state)
            # submitted while the daemon drains, exits and starts again: retried until taken, once
            runs = [await aer.run("estimate", qc, params[i:i + 1], observables="ZZ", timeout=120) for i in range(6)]
            await restart
            results = await waiting
            assert (await slow.status())["usage"]["tasks"] == 8
            assert (await aer.status())["usage"]["tasks"] == 6
            await slow.close()
            await aer.close()
            return runs, results

    with caplog.at_level(logging.INFO, logger="qsched.client"):
        runs, results = asyncio.run(main())
    assert len(results) == 8
    np.testing.assert_allclose([r.evs[0, 0] for r in runs], _reference(qc, params[:6]), atol=1e-10)
    main = threading.current_thread().name
    assert len(_lines(caplog, main, "retrying")) == 1, caplog.text
    assert len(_lines(caplog, main, "back after")) == 1, caplog.text


def test_a_repeated_submit_key_returns_the_same_ids_and_runs_once(fresh_daemon):
    """The contract the client relies on (POST /v1/sessions/{sid}/tasks with idempotency_key)."""
    d = fresh_daemon(devices=[SLOW], policy=POLICY)
    qc = efficient_su2(2, reps=1)
    with qsched.Client(d.url) as c:
        s = c.open_session("slow")
        h = s.upload(qc)
        body = {"tasks": [qsched.client.task_body("estimate", h, np.zeros((1, qc.num_parameters)),
                                                  observables=["ZZ"])], "idempotency_key": "k" * 128}
        first = c._t.request("POST", f"/v1/sessions/{s.id}/tasks", body=body, headers=s._auth())
        again = c._t.request("POST", f"/v1/sessions/{s.id}/tasks", body=body, headers=s._auth())
        assert first["ids"] == again["ids"] and len(first["ids"]) == 1
        fut = qsched.client.TaskFuture(s, first["ids"][0])
        assert fut.result(30).evs.shape == (1, 1)
        assert s.status()["usage"]["tasks"] == 1
        s.close()


class CuttingProxy:
    """A unix-socket proxy to the daemon that can swallow the answer to the next N submits and cut the
    connection: the daemon took the tasks, the client never heard (a daemon killed mid-reply)."""

    def __init__(self, upstream: str, path: str):
        import socket
        self.upstream, self.path, self.cut = upstream, path, 0
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _serve(self):
        import socket
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX)
            up.connect(self.upstream)
            state = {"swallow": False}
            threading.Thread(target=self._down, args=(up, client, state), daemon=True).start()
            threading.Thread(target=self._up, args=(client, up, state), daemon=True).start()

    def _up(self, client, up, state):
        try:
            while data := client.recv(1 << 20):
                with self.lock:
                    if self.cut and data.startswith(b"POST /v1/sessions/") and b"/tasks" in data.split(b"\r\n")[0]:
                        self.cut -= 1
                        state["swallow"] = True
                up.sendall(data)
        except OSError:
            pass

    def _down(self, up, client, state):
        import socket
        try:
            while data := up.recv(1 << 20):
                if state["swallow"]:                 # the daemon answered; the client never hears it
                    break
                client.sendall(data)
        except OSError:
            pass
        for s in (client, up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.listener.close()


def test_a_submit_whose_answer_is_lost_runs_once(fresh_daemon, tmp_path):
    d = fresh_daemon(devices=[SLOW], policy=POLICY)
    proxy = CuttingProxy(str(d.state_dir / "qsched.sock"), str(tmp_path / "proxy.sock"))
    qc = efficient_su2(2, reps=1)
    p = np.zeros((1, qc.num_parameters))
    try:
        with qsched.Client(proxy.url, retry_s=30) as c:          # a kept-alive connection: resent at once
            s = c.open_session("slow")
            s.upload(qc)
            proxy.cut = 1
            fut = s.submit("estimate", qc, p, observables="ZZ")
            assert proxy.cut == 0 and fut.result(30).evs.shape == (1, 1)
            st = s.status()
            assert (st["usage"]["tasks"], st["pending"], st["inflight"]) == (1, 0, 0)     # no twin anywhere

        async def main():                          # aiohttp does not resend a POST: the core's retry does
            async with qsched.AsyncClient(proxy.url, retry_s=30) as c:
                s = await c.open_session("slow")
                await s.upload(qc)
                proxy.cut = 1
                futs = await s.submit_many([{"kind": "estimate", "circuit": qc, "params": p, "observables": "ZZ"}] * 3)
                assert proxy.cut == 0
                await s.wait(futs, timeout=30)
                return await s.status()
        status = asyncio.run(main())
        assert (status["usage"]["tasks"], status["pending"], status["inflight"]) == (3, 0, 0)
    finally:
        proxy.close()
