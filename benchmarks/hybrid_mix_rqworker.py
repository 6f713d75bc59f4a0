"""The per-circuit and fifo-bursts strategies' one RQ worker: owns the device, runs RQ jobs in FIFO order
(one circuit per job for per-circuit, one whole burst per job for fifo-bursts).

Started by hybrid_mix.py; a SimpleWorker (no fork per job) so the device is built once and the
queue round trip is RQ's own (~3 ms per job here), not a fork's.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hybrid_mix_device  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--queue", required=True)
    ap.add_argument("--device", default="emulated-qpu")
    ap.add_argument("--setup-s", type=float, required=True)
    ap.add_argument("--rep-s", type=float, required=True)
    ap.add_argument("--qubits", type=int, required=True)
    ap.add_argument("--ready-key", required=True)
    a = ap.parse_args(argv)

    from redis import Redis
    from rq import Queue, SimpleWorker
    from rq.serializers import JSONSerializer

    dev = hybrid_mix_device.make_device(a.device, setup_s=a.setup_s, rep_s=a.rep_s, num_qubits=a.qubits)
    dev.run(hybrid_mix_device.random_bindings(__import__("numpy").random.default_rng(0), 1,
                                              dev.circuit.num_parameters), 1)  # warm: transpile, aer init
    hybrid_mix_device._WORKER_DEVICE = dev
    conn = Redis.from_url(a.redis_url)
    q = Queue(a.queue, connection=conn, serializer=JSONSerializer)
    w = SimpleWorker([q], connection=conn, serializer=JSONSerializer)
    conn.set(a.ready_key, "1")
    logging.getLogger("rq.worker").setLevel(logging.WARNING)
    w.work(logging_level="WARNING", with_scheduler=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
