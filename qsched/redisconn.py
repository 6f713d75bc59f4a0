"""The one place qsched makes Redis connections: daemon, workers, heartbeats and the RQ local mode,
from one store URL (qsched.redisurl says what it may be). With Sentinel the primary is looked up from
the sentinels on every (re)connect, so a failover is followed by reconnecting.
"""
from __future__ import annotations

from typing import Any

import redis as redis_sync
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel as ssentinel

from .errors import ConfigError, Unavailable
from .redisurl import TCP_TIMEOUTS, is_sentinel, parse_sentinel_url, redact

__all__ = ["async_pool", "async_client", "sync_client", "check_store", "redact"]


# ---------------------------------------------------------------- async (the daemon)

class _BlockingSentinelPool(asentinel.SentinelConnectionPool, aredis.BlockingConnectionPool):
    """Sentinel's primary lookup with the blocking pool's wait for a free connection (the daemon's
    requests queue for up to `timeout` s rather than fail when many arrive at once)."""


def async_pool(url: str, *, max_connections: int, timeout: float = 5.0):
    """The daemon's connection pool (requests wait for a free connection, up to `timeout` s)."""
    if is_sentinel(url):
        t = parse_sentinel_url(url)
        manager = asentinel.Sentinel(list(t.sentinels), sentinel_kwargs=t.sentinel_kwargs())
        return _BlockingSentinelPool(t.service, manager, max_connections=max_connections, timeout=timeout,
                                     is_master=True, **t.node_kwargs())
    kw: dict[str, Any] = {} if url.startswith("unix:") else dict(TCP_TIMEOUTS)
    return aredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout, **kw)


def async_client(url: str, *, pool=None, dedicated: bool = False) -> aredis.Redis:
    """An async client on `pool`, or on a pool of its own (dedicated: one connection, for a blocking
    XREAD). Not redis-py's single_connection_client: that connection reconnects to the address it had,
    so after a Sentinel failover it would keep knocking at the dead primary; a pool's connections look
    the primary up again on each connect."""
    own = pool is None
    if pool is None:
        pool = async_pool(url, max_connections=1 if dedicated else 16)
    r = aredis.Redis(connection_pool=pool)
    r.auto_close_connection_pool = own
    return r


# ---------------------------------------------------------------- sync (workers, heartbeats, RQ, tests)

def sync_client(url: str, *, socket_timeout: float | None = None, decode_responses: bool = False) -> redis_sync.Redis:
    """A blocking client. socket_timeout must exceed the longest blocking command's own timeout."""
    if is_sentinel(url):
        t = parse_sentinel_url(url)
        manager = ssentinel.Sentinel(list(t.sentinels), sentinel_kwargs=t.sentinel_kwargs())
        return manager.master_for(t.service, socket_timeout=socket_timeout, decode_responses=decode_responses,
                                  **t.node_kwargs())
    kw: dict[str, Any] = {} if url.startswith("unix:") else dict(TCP_TIMEOUTS)
    return redis_sync.Redis.from_url(url, socket_timeout=socket_timeout, decode_responses=decode_responses, **kw)


# ---------------------------------------------------------------- what the store must be

async def check_store(r: aredis.Redis, url: str) -> None:
    """Refuse a Redis Cluster at start: the multi-key Lua scripts (commit, complete, recall) touch keys
    of many sessions and devices, which a cluster only allows within one hash slot."""
    try:
        info = await r.info("cluster")
    except redis_sync.exceptions.ResponseError:
        return                     # INFO sections restricted by ACL: the scripts will say what fails
    except redis_sync.exceptions.RedisError as e:
        raise Unavailable(f"redis: cannot reach {redact(url)} ({e})", field="redis.url") from None
    if int(info.get("cluster_enabled", 0)):
        raise ConfigError(f"redis: {redact(url)} is a Redis Cluster node; qsched needs one primary (with "
                          "replicas and Sentinel for failover): its atomic scripts span keys of many sessions "
                          "and devices, which a cluster cannot run across hash slots", field="redis.url")
