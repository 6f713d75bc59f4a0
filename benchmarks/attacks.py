"""Replays issue 14's and 21's attacks against a private `qsched up` (embedded Redis, a real null worker) and
prints, per attack, what the attacker got, how long it took, the p99 latency a bystander client saw
meanwhile (health requests every 5 ms, from its own process) and the daemon's RSS after against before. The issue's own
"before" figures are printed beside them.

    .venv/bin/python benchmarks/attacks.py

The last line printed is one JSON object {"attacks": [...]}. Traffic stays on the daemon's unix socket.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import struct
import sys
import time

import aiohttp
import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(__file__))
from _daemon import private_daemon  # noqa: E402

DEVICES = [{"name": "null0", "type": "null", "pool": "null", "max_qubits": 20, "max_bindings": 2_000_000,
            "max_batch_bindings": 2_000_000}]
DAEMON = {"idle_timeout_s": 2.0, "body_timeout_s": 2.0, "max_connections_per_peer": 256}

BEFORE = {
    "qasm3 qubit[20000000] (46 B)": "daemon OOM-killed in 22 s",
    "QPY declaring 2^31-1 qubits (135 B)": "daemon OOM-killed in 6.5 s",
    "observable of 2,000,000 terms": "every client stalled 4.9 s",
    "NaN parameter": "accepted: NaN answered",
    "20 clients not reading a 27 MB result": "RSS 302 -> 1,965 MB, never released",
    "slowloris header, idle, short body": "held forever",
    "300 connections held by one user": "fd limit: 7,500 tracebacks/s, others refused",
    "200 simultaneous session opens": "136 x HTTP 500",
    "over TCP without a credential: /v1/queue": "answered",
    # issue 21
    "wait naming one result 100,000 times": "Redis OOM-killed in ~10 s (2 GiB cgroup)",
    "sample of 10^5 shots x 10^5 bindings (194 B)": "201; worker OOM-killed 3 times, pool blocked 31-33 s",
    "1e4000 / NaN / 100,000-deep JSON / 8 MiB class": "500, 201 then FAILED, 500, echoed whole",
    "64 MiB of {}, as a session open": "1.74 GB RSS, 6-9 s freeze for everyone",
}


def qpy_declaring(num_qubits: int) -> bytes:
    from qiskit import QuantumCircuit, qpy
    qc = QuantumCircuit(2)
    qc.h(0)
    buf = io.BytesIO()
    qpy.dump(qc, buf)
    data = bytearray(buf.getvalue())
    at = struct.unpack_from("!Q", data, 20)[0]
    struct.pack_into("!I", data, at + 5, num_qubits)
    return bytes(data)


def daemon_process(state: str) -> psutil.Process:
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "up" in cmd and any(state in c for c in cmd):
            return p
    raise RuntimeError("daemon process not found")


BYSTANDER = """
import asyncio, json, sys, time
import aiohttp

async def main(sock):
    lat, failed = [], 0
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(sys.stdin, stop.set)
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as http:
        print("ready", flush=True)
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                async with http.get("http://q/v1/health") as r:
                    await r.read()
                    failed += r.status != 200
            except aiohttp.ClientError:
                failed += 1
            lat.append(time.perf_counter() - t0)
            await asyncio.sleep(0.005)
    lat.sort()
    print(json.dumps({"p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1000 if lat else None, "failed": failed}))

asyncio.run(main(sys.argv[1]))
"""


class Bystander:
    """Another user's client, in its own process: a health request every 5 ms while an attack runs."""

    def __init__(self, sock: str):
        self.sock, self.p99_ms, self.failed = sock, float("nan"), 0

    async def __aenter__(self):
        self.proc = await asyncio.create_subprocess_exec(sys.executable, "-c", BYSTANDER, self.sock,
                                                         stdin=asyncio.subprocess.PIPE,
                                                         stdout=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None
        await self.proc.stdout.readline()
        return self

    async def __aexit__(self, *exc) -> None:
        out, _ = await self.proc.communicate(b"stop\n")
        got = json.loads(out.decode().strip().splitlines()[-1])
        self.p99_ms, self.failed = got["p99_ms"], got["failed"]


def raw(path: str, data: bytes, timeout: float = 15.0) -> tuple[float, bytes]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    t0 = time.perf_counter()
    s.sendall(data)
    try:
        got = s.recv(4096)
    except TimeoutError:
        got = b"(no answer)"
    s.close()
    return time.perf_counter() - t0, got


async def run(url: str) -> list[dict]:
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter

    from qsched import wire
    sock = url.removeprefix("unix://")
    state = os.path.dirname(sock)
    proc = daemon_process(state)
    http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock, limit=0))
    async with http.post("http://q/v1/sessions", json={"pool": "null"}) as r:
        s = await r.json()
    auth = {"Authorization": f"Bearer {s['token']}"}
    qc = QuantumCircuit(1)
    qc.rx(Parameter("a"), 0)
    async with http.post(f"http://q/v1/sessions/{s['id']}/templates", data=wire.dump_qpy(qc), headers=auth) as r:
        h = (await r.json())["hash"]
    rows = []

    async def attack(name: str, coro_fn):
        rss0 = proc.memory_info().rss
        async with Bystander(sock) as b:
            t0 = time.perf_counter()
            got = await coro_fn()
            took = time.perf_counter() - t0
        await asyncio.sleep(0.5)
        rows.append({"attack": name, "before": BEFORE[name], "after": got, "took_s": round(took, 3),
                     "bystander_p99_ms": round(b.p99_ms, 1), "bystander_failed": b.failed,
                     "rss_mb_before": round(rss0 / 2**20), "rss_mb_after": round(proc.memory_info().rss / 2**20)})
        print(f"{name:42s} {got[:60]:60s} {took:7.3f} s  bystander p99 {b.p99_ms:7.1f} ms "
              f"(failed {b.failed})  RSS {rss0 / 2**20:5.0f} -> {proc.memory_info().rss / 2**20:5.0f} MB",
              flush=True)

    async def status_of(method, path, headers=auth, **kw) -> str:
        async with http.request(method, f"http://q{path}", headers=headers, **kw) as r:
            body = await r.json()
            err = body.get("error", {})
            return f"{r.status} {err.get('field', '')} limit={err.get('limit')}" if r.status >= 400 else str(r.status)

    tpl = f"/v1/sessions/{s['id']}/templates"
    await attack("qasm3 qubit[20000000] (46 B)",
                 lambda: status_of("POST", tpl, json={"qasm3": "OPENQASM 3.0; qubit[20000000] q;"}))
    await attack("QPY declaring 2^31-1 qubits (135 B)",
                 lambda: status_of("POST", tpl, data=qpy_declaring(2**31 - 1)))
    task = {"kind": "estimate", "template": h, "params": wire.encode_array(np.zeros((1, 1)))}
    bomb = json.dumps({"tasks": [{**task, "observables": [[["Z", 1.0]] * 2_000_000]}]}).encode()  # 24 MB
    await attack("observable of 2,000,000 terms", lambda: status_of(
        "POST", f"/v1/sessions/{s['id']}/tasks", data=bomb, headers={**auth, "Content-Type": "application/json"}))
    nan = {**task, "observables": [[["Z", 1.0]]], "params": wire.encode_array(np.array([[np.nan]]))}
    await attack("NaN parameter", lambda: status_of("POST", f"/v1/sessions/{s['id']}/tasks", json={"tasks": [nan]}))

    async def slow_readers() -> str:
        big = {**task, "observables": [[["Z", 1.0]]], "params": wire.encode_array(np.zeros((1_300_000, 1)))}
        async with http.post(f"http://q/v1/sessions/{s['id']}/tasks?wait=30", json={"tasks": [big]},
                             headers=auth) as r:
            [tid] = (await r.json())["ids"]
        async with http.get(f"http://q/v1/tasks/{tid}", headers=auth) as r:
            size = len(await r.read())                                  # a reader gets all of it
        req = f"GET /v1/tasks/{tid} HTTP/1.1\r\nHost: q\r\nAuthorization: Bearer {s['token']}\r\n\r\n".encode()
        readers = []
        for _ in range(20):
            c = socket.socket(socket.AF_UNIX)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.connect(sock)
            c.sendall(req)
            readers.append(c)
        await asyncio.sleep(DAEMON["body_timeout_s"] * 2 + 1)
        dropped = 0
        for c in readers:
            c.settimeout(2)
            received, chunk = 0, b"x"
            try:
                while chunk:
                    chunk = c.recv(1 << 20)
                    received += len(chunk)
            except (TimeoutError, ConnectionError):
                pass
            dropped += received < size
            c.close()
        return f"{dropped}/20 dropped before the end of the {size / 2**20:.0f} MB answer"
    await attack("20 clients not reading a 27 MB result", slow_readers)

    async def slow_clients() -> str:
        out = await asyncio.gather(*(asyncio.to_thread(raw, sock, data) for data in (
            b"", b"GET /v1/health HTTP/1.1\r\nHost:",
            b"POST /v1/sessions HTTP/1.1\r\nHost: q\r\nContent-Length: 100\r\n\r\n{\"po")))
        return ", ".join(f"{'closed' if not got else got.split(b' ')[1].decode()} after {t:.1f} s" for t, got in out)
    await attack("slowloris header, idle, short body", slow_clients)

    async def hoard() -> str:
        held = []
        for _ in range(300):
            c = socket.socket(socket.AF_UNIX)
            c.connect(sock)
            held.append(c)
        await asyncio.sleep(0.5)
        _, got = await asyncio.to_thread(raw, sock, b"GET /v1/health HTTP/1.1\r\nHost: q\r\n\r\n")
        for c in held:
            c.close()
        first = got.split(b"\r\n", 1)[0].decode()
        return f"over the cap: {first}" + (" (max_connections_per_peer)" if b"per_peer" in got else "")
    await attack("300 connections held by one user", hoard)

    async def opens() -> str:
        async def one():
            async with http.post("http://q/v1/sessions", json={"pool": "null"}) as r:
                return r.status
        codes = await asyncio.gather(*(one() for _ in range(200)))
        return ", ".join(f"{codes.count(c)} x {c}" for c in sorted(set(codes)))
    await attack("200 simultaneous session opens", opens)

    async def amplified_wait() -> str:
        async with http.post(f"http://q/v1/sessions/{s['id']}/tasks?wait=30", headers=auth, json={
                "tasks": [{**task, "observables": [[["Z", 1.0]]],
                           "params": wire.encode_array(np.zeros((8_000, 1)))}]}) as r:   # a 134 KB result
            [tid] = (await r.json())["ids"]
        return await status_of("POST", "/v1/tasks/wait", json={"ids": [tid] * 100_000})
    await attack("wait naming one result 100,000 times", amplified_wait)
    qc0 = QuantumCircuit(1)
    qc0.h(0)
    async with http.post(f"http://q/v1/sessions/{s['id']}/templates", data=wire.dump_qpy(qc0), headers=auth) as r:
        h0 = (await r.json())["hash"]
    huge_sample = {"kind": "sample", "template": h0, "shots": 100_000,
                   "params": {"dtype": "float64", "shape": [100_000, 0], "data": ""}}
    await attack("sample of 10^5 shots x 10^5 bindings (194 B)",
                 lambda: status_of("POST", f"/v1/sessions/{s['id']}/tasks", json=huge_sample))

    async def bad_values() -> str:
        as_json = {"Content-Type": "application/json"}
        nan = json.dumps({**task, "observables": [[["Z", float("nan")]]]}).encode()
        got = [await status_of("POST", "/v1/sessions", data=b'{"pool": "null", "weight": 1e4000}', headers=as_json),
               await status_of("POST", f"/v1/sessions/{s['id']}/tasks", data=nan, headers={**auth, **as_json}),
               await status_of("POST", tpl, data=b"[" * 100_000 + b"]" * 100_000, headers={**auth, **as_json})]
        async with http.post("http://q/v1/sessions", json={"pool": "null", "class": "x" * (8 << 20)}) as r:
            got.append(f"{r.status}, {len(await r.read())} B answered")
        return "; ".join(got)
    await attack("1e4000 / NaN / 100,000-deep JSON / 8 MiB class", bad_values)
    bomb_open = b"[" + b"{}," * ((64 << 20) // 3 - 1) + b"{}]"
    await attack("64 MiB of {}, as a session open", lambda: status_of(
        "POST", "/v1/sessions", data=bomb_open, headers={"Content-Type": "application/json"}))
    await http.close()
    return rows


async def over_tcp(port: int) -> str:
    async with aiohttp.ClientSession() as c, c.get(f"http://127.0.0.1:{port}/v1/queue") as r:
        return f"{r.status} {(await r.json()).get('error', {}).get('code', '')}"


def main() -> None:
    with private_daemon(DEVICES, daemon=DAEMON) as url:
        rows = asyncio.run(run(url))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with private_daemon(DEVICES, daemon={"tcp": f"127.0.0.1:{port}"}):
        got = asyncio.run(over_tcp(port))
    name = "over TCP without a credential: /v1/queue"
    print(f"{name:42s} {got}")
    rows.append({"attack": name, "before": BEFORE[name], "after": got})
    print(json.dumps({"attacks": rows}))


if __name__ == "__main__":
    main()
