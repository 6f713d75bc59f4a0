"""Store URLs, without importing redis (config and the CLI run on compute nodes that lack it).

A store is named by one URL string, which travels to workers in a 0600 file and to heartbeats over a
pipe (never argv or the environment: it may hold a password):
- ``unix:///path/redis.sock`` (the embedded default), ``redis://[user:pass@]host:port/db``,
  ``rediss://...`` (TLS; ``?ssl_ca_certs=/path&ssl_certfile=...&ssl_keyfile=...``);
- ``redis+sentinel://[user:pass@]h1:p1,h2:p2,h3:p3/SERVICE[/db][?sentinel_password=...]``
  (``rediss+sentinel://`` for TLS to both the sentinels and the data nodes).

The password in the URL is for the data nodes; ``sentinel_password`` for the sentinels (Redis 6 ACL:
``user:pass``). `redact` is for anything printed or logged. Connections: qsched.redisconn.
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

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
