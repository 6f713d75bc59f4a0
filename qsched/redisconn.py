"""The one place qsched makes Redis connections: daemon, workers, heartbeats and the RQ local mode.

A store is named by one URL string, which travels to workers in a 0600 file and to heartbeats over a
pipe (never argv or the environment: it may hold a password):
- ``unix:///path/redis.sock`` (the embedded default), ``redis://[user:pass@]host:port/db``,
  ``rediss://...`` (TLS; ``?ssl_ca_certs=/path&ssl_certfile=...&ssl_keyfile=...``);
- ``redis+sentinel://[user:pass@]h1:p1,h2:p2,h3:p3/SERVICE[/db][?sentinel_password=...]``
  (``rediss+sentinel://`` for TLS to both the sentinels and the data nodes): the primary is looked up
  from the sentinels on every (re)connect, so a failover is followed by reconnecting.

The password in the URL is for the data nodes; ``sentinel_password`` for the sentinels (Redis 6 ACL:
``user:pass``). `redact` is for anything printed or logged.
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import redis as redis_sync
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel as ssentinel

from .errors import ConfigError, Unavailable

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
TLS_QUERY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
# over a network a dead peer must show as an error, not a hang (a blocking read waits at most 1 s more)
TCP_TIMEOUTS = {"socket_connect_timeout": 3.0, "socket_keepalive": True}


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: dict[str, Any] = field(default_factory=dict)
    tls: bool = False

    def node_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"db": self.db, "username": self.username, "password": self.password, **TCP_TIMEOUTS}
        if self.tls:
            kw.update(ssl=True, **self.ssl)
        return kw

    def sentinel_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"password": self.sentinel_password, **TCP_TIMEOUTS, "socket_timeout": 3.0}
        if self.tls:
            kw.update(ssl=True, **self.ssl)
        return kw


def is_sentinel(url: str) -> bool:
    return url.split("://", 1)[0] in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelTarget:
    scheme, _, rest = url.partition("://")
    if scheme not in SENTINEL_SCHEMES:
        raise ConfigError(f"redis.url: not a Sentinel URL ({redact(url)})", field="redis.url")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        u, _, p = userinfo.partition(":")
        username, password = urllib.parse.unquote(u) or None, urllib.parse.unquote(p) or None
    sentinels = []
    for h in hosts.split(","):
        host, _, port = h.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"redis.url: sentinel address {h!r}: expected HOST:PORT", field="redis.url")
        sentinels.append((host.strip("[]"), int(port)))
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ConfigError("redis.url: a Sentinel URL names the service: redis+sentinel://HOST:PORT,.../SERVICE",
                          field="redis.url")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ConfigError(f"redis.url: expected /SERVICE[/DB] after the sentinels, got /{path}", field="redis.url")
    q = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
    unknown = set(q) - {"sentinel_password", *TLS_QUERY}
    if unknown:
        raise ConfigError(f"redis.url: unknown option {sorted(unknown)[0]!r}", field="redis.url")
    ssl: dict[str, Any] = {k: q[k] for k in TLS_QUERY if k in q}
    if "ssl_check_hostname" in ssl:
        ssl["ssl_check_hostname"] = ssl["ssl_check_hostname"].lower() in ("1", "true", "yes")
    return SentinelTarget(tuple(sentinels), urllib.parse.unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0,
                          username, password, q.get("sentinel_password"), ssl, scheme.startswith("rediss"))


def sentinel_url(addresses: list[str], service: str, *, db: int = 0, tls: bool = False) -> str:
    """The URL of a `redis.sentinel:` config block (passwords are added by with_password)."""
    return f"{'rediss' if tls else 'redis'}+sentinel://{','.join(addresses)}/{urllib.parse.quote(service)}" + (
        f"/{db}" if db else "")


def with_password(url: str, password: str | None, *, username: str | None = None) -> str:
    """url with the data nodes' credentials put in (from a password file: the config holds no secret)."""
    if not password:
        return url
    scheme, _, rest = url.partition("://")
    if scheme == "unix":
        sep = "&" if "?" in rest else "?"
        return f"{url}{sep}password={urllib.parse.quote(password, safe='')}"
    netloc_end = len(rest.split("/", 1)[0].split("?", 1)[0])
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    hosts = netloc.rpartition("@")[2]
    cred = (urllib.parse.quote(username, safe="") if username else "") + ":" + urllib.parse.quote(password, safe="")
    return f"{scheme}://{cred}@{hosts}{tail}"


def with_query(url: str, **params: str | None) -> str:
    extra = {k: v for k, v in params.items() if v}
    if not extra:
        return url
    return url + ("&" if "?" in url else "?") + urllib.parse.urlencode(extra)


def redact(url: str | None) -> str:
    """The URL with its passwords replaced, for logs and listings."""
    if not url:
        return ""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        user, _, hosts = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{hosts}" if ":" in user else netloc
    base, q, query = (netloc + slash + tail).partition("?")
    if q:
        pairs = urllib.parse.parse_qsl(query)
        query = "&".join(f"{k}={'***' if 'password' in k else v}" for k, v in pairs)
    return f"{scheme}{sep}{base}{q}{query}"


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
