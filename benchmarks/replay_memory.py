"""Redis memory of replay records (issue 24): JOBS records of TASKS tasks each, written through the
store's own record script into a private redis-server, measured as used_memory before and after, and
per 1,000 jobs of 1,000 tasks (linear: every record is the same three keys).

    python benchmarks/replay_memory.py [--jobs 20] [--tasks 1000] [--bindings 1]

A task's result is an estimate's answer, as a worker stores it: `bindings` expectation values and
their standard deviations (float64, base64 in JSON)."""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from qsched import keys, wire
from qsched.daemon.redis_server import redis_server_binary
from qsched.redisconn import async_client
from qsched.store import Store


async def measure(url: str, jobs: int, tasks: int, bindings: int) -> dict:
    r = async_client(url)
    store = Store(r, result_ttl_s=3600)
    rng = np.random.default_rng(1)
    try:
        before = (await r.info("memory"))["used_memory"]
        result_bytes = 0
        for j in range(jobs):
            sid = f"s{j}"
            for i in range(tasks):
                z = rng.standard_normal((bindings, 1))
                body = json.dumps({"result": wire.encode_tree({"evs": z, "stds": z}),
                                   "meta": {"device": "aer0", "batch": "b", "exec_s": 0.001}})
                result_bytes += len(body)
                await r.set(keys.task_result(f"{sid}.t{i}"), f"DONE\n{body}")
            entries = [(f"job:{j}", i, f"{i:032x}", f"{sid}.t{i}") for i in range(tasks)]
            for k in range(0, tasks, 500):
                await store.replay_record(entries[k:k + 500], 3600, 10 * tasks, 1 << 30)
            await r.delete(*[keys.task_result(f"{sid}.t{i}") for i in range(tasks)])
        after = (await r.info("memory"))["used_memory"]
        per_task = (after - before) / (jobs * tasks)
        return {"jobs": jobs, "tasks_per_job": tasks, "bindings": bindings,
                "result_bytes_per_task": round(result_bytes / (jobs * tasks)),
                "record_bytes_per_task": round(per_task),
                "per_1000_jobs_of_1000_tasks_MiB": round(per_task * 1e6 / 2**20)}
    finally:
        await store.close()
        await r.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--bindings", type=int, default=1)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "redis.sock"
        proc = subprocess.Popen([redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--save", "",
                                 "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            while not sock.exists():
                time.sleep(0.01)
            out = asyncio.run(measure(f"unix://{sock}", a.jobs, a.tasks, a.bindings))
        finally:
            proc.kill()
            proc.wait()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
