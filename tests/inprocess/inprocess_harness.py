"""A qsched Daemon in this test process, on a real embedded Redis, with real Worker objects in threads
(each with its real heartbeat process). HTTP goes over the daemon's real unix socket with aiohttp."""
from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import aiohttp
import numpy as np
import redis as redis_lib
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter

from qsched import wire
from qsched.config import parse_config
from qsched.daemon import Daemon
from qsched.daemon.redis_server import EmbeddedRedis
from qsched.integration import SlurmIntegration
from qsched.worker import Worker


class WorkerThread:
    def __init__(self, url: str, spec, heartbeat_ttl_s: float):
        self.worker = Worker(redis_lib.Redis.from_url(url), spec, redis_url=url, heartbeat_ttl_s=heartbeat_ttl_s)
        self.thread = threading.Thread(target=self.worker.serve, daemon=True, name=f"worker-{spec.name}")
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(10)


class Api:
    """Just enough HTTP to drive the daemon like a client does."""

    def __init__(self, socket: Path):
        self.http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket)))

    async def call(self, method: str, path: str, body=None, token: str | None = None, data: bytes | None = None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, f"http://qsched{path}", json=body, data=data, headers=headers) as r:
            return r.status, await r.json()

    async def session(self, **body) -> dict:
        status, out = await self.call("POST", "/v1/sessions", body)
        assert status == 201, out
        return out

    async def template(self, s: dict, circuit: QuantumCircuit) -> str:
        status, out = await self.call("POST", f"/v1/sessions/{s['id']}/templates", token=s["token"],
                                      data=wire.dump_qpy(circuit))
        assert status == 201, out
        return out["hash"]

    async def submit(self, s: dict, template: str, n: int = 1, *, key: str | None = None, bindings: int = 1,
                     params: int = 1):
        task = {"kind": "estimate", "template": template, "observables": [[["Z", 1.0]]],
                "params": wire.encode_array(np.zeros((bindings, params)))}
        body: dict = {"tasks": [task] * n}
        if key:
            body["idempotency_key"] = key
        return await self.call("POST", f"/v1/sessions/{s['id']}/tasks", body, token=s["token"])

    async def wait(self, s: dict, ids: list[str], timeout: float = 20.0) -> list[dict]:
        status, out = await self.call("POST", "/v1/tasks/wait", {"ids": ids, "timeout": timeout}, token=s["token"])
        assert status == 200, out
        return out["tasks"]

    async def close(self) -> None:
        await self.http.close()


def one_qubit() -> QuantumCircuit:
    qc = QuantumCircuit(1)
    qc.rx(Parameter("a"), 0)
    return qc


@contextlib.asynccontextmanager
async def daemon(tmp: Path, devices: list[dict], *, workers: bool = True, redis_url: str | None = None,
                 worker_url: str | None = None, policy: dict | None = None, **sections):
    """A started Daemon (start_workers off: the workers are threads here) and an Api on its socket."""
    raw = {"state_dir": str(tmp / "state"),
           "daemon": {"tcp": None, "start_workers": False, "heartbeat_timeout_s": 1.0, "drain_timeout_s": 10,
                      **sections.pop("daemon", {})},
           "devices": devices, "policy": policy or {}, **sections}
    cfg = parse_config(raw)
    if redis_url:
        cfg.redis_url = redis_url
    d = Daemon(cfg, hooks=SlurmIntegration())
    await d.startup()
    threads = [WorkerThread(worker_url or d.redis_url, spec, 1.0) for spec in cfg.devices] if workers else []
    api = Api(cfg.socket_path)
    try:
        if workers:
            await until(lambda: all(dev.alive for dev in d.scheduler.devices.values()))
        yield d, api, threads
    finally:
        await api.close()
        for t in threads:
            await asyncio.to_thread(t.stop)
        await d.shutdown()


@contextlib.asynccontextmanager
async def embedded_redis(tmp: Path):
    async with EmbeddedRedis(tmp / "redis-only") as r:
        yield r


async def until(cond, timeout: float = 10.0, every: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)
