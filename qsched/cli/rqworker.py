"""A burst RQ worker for `qsched submit --local`, on the store's one connection factory (so a Sentinel
or TLS URL works as for the daemon). The URL comes on stdin: it may hold a password, and argv does not
keep secrets (every local user can read it)."""
from __future__ import annotations

import sys


def main() -> None:
    from rq import Queue
    from rq.serializers import JSONSerializer
    from rq.worker import SimpleWorker

    from .. import keys
    from ..redisconn import sync_client
    conn = sync_client(sys.stdin.readline().strip())
    q = Queue(keys.RQ_QUEUE, connection=conn, serializer=JSONSerializer)   # nothing in the store is unpickled
    SimpleWorker([q], connection=conn, serializer=JSONSerializer).work(burst=True)


if __name__ == "__main__":
    main()
