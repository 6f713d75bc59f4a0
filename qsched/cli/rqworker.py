"""A burst RQ worker for `qsched submit --local`, on the store's one connection factory (so a Sentinel
or TLS URL works as for the daemon). The URL comes on stdin: it may hold a password, and argv does not
keep secrets (every local user can read it). So does the lease token its submitter took for it in
keys.LOCAL_WORKERS, which it renews while it lives and gives back, under the submitters' lock, only
once it has seen the queue empty (qsched.cli.submit._enqueue_with_workers)."""
from __future__ import annotations

import sys
import threading
import time

LEASE_S = 30.0        # a worker killed -9 frees its place after this
LOCK_S = 30.0         # keys.LOCAL_WORKERS_LOCK expires after this if its holder dies holding it


def main() -> None:
    from rq import Queue
    from rq.serializers import JSONSerializer
    from rq.worker import SimpleWorker

    from .. import keys
    from ..redisconn import sync_client
    url, token = sys.stdin.readline().strip(), sys.stdin.readline().strip()
    conn = sync_client(url)
    q = Queue(keys.RQ_QUEUE, connection=conn, serializer=JSONSerializer)   # nothing in the store is unpickled
    leaving = threading.Event()

    def renew() -> None:
        while not leaving.wait(LEASE_S / 3):
            conn.zadd(keys.LOCAL_WORKERS, {token: time.time() + LEASE_S}, xx=True)
    threading.Thread(target=renew, daemon=True).start()
    while True:
        SimpleWorker([q], connection=conn, serializer=JSONSerializer).work(burst=True)
        with conn.lock(keys.LOCAL_WORKERS_LOCK, timeout=LOCK_S, blocking_timeout=2 * LOCK_S):
            if not q.count:
                leaving.set()
                conn.zrem(keys.LOCAL_WORKERS, token)
                return


if __name__ == "__main__":
    main()
