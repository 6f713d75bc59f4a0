"""Connection admission for the daemon's listeners: a cap per peer (uid on the Unix socket, address on
TCP) and in all, so one local user cannot take every file descriptor and starve the others; and an
event-loop exception handler that logs an accept failure (EMFILE, ENFILE) once per interval instead
of once per retry.

A connection over a cap is answered at once with 503 + Retry-After naming the limit, then closed; the
client's retry (client/retry.py) backs off on 503 as it does for a restarting daemon.
"""
from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger("qsched.daemon")

# descriptors kept free for Redis connections, workers' pipes, the parser and log files
FD_RESERVE = 64
REFUSED_LINGER_S = 1.0         # a refused connection is kept this long for the client to read its 503


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (systemd's default soft limit is 1024); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def peer_uid(transport: asyncio.BaseTransport | None) -> int | None:
    """The peer's uid on a Unix socket (SO_PEERCRED); None over TCP."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def peer_of(transport: asyncio.BaseTransport) -> str:
    """'uid:N' for a Unix-socket peer, 'ip:ADDR' for TCP."""
    uid = peer_uid(transport)
    if uid is not None:
        return f"uid:{uid}"
    peer = transport.get_extra_info("peername")
    return f"ip:{peer[0] if isinstance(peer, tuple) else peer}"


class ConnectionLimiter:
    """Counts open connections per peer and in all, across every listener of the daemon."""

    def __init__(self, per_peer: int, total: int, *, log_interval_s: float = 10.0):
        self.per_peer, self.total = per_peer, total
        self.open: Counter[str] = Counter()
        self.refused = 0
        self.on_refuse: Callable[[str], None] = lambda reason: None
        self._log_interval_s = log_interval_s
        self._logged_at: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def admit(self, peer: str) -> tuple[str, int] | None:
        """None if the peer may open one more connection (then counted), else (field, limit)."""
        if self.open[peer] >= self.per_peer:
            return "daemon.max_connections_per_peer", self.per_peer
        if sum(self.open.values()) >= self.total:
            return "daemon.max_connections", self.total
        self.open[peer] += 1
        return None

    def release(self, peer: str) -> None:
        self.open[peer] -= 1
        if self.open[peer] <= 0:
            del self.open[peer]

    def refused_one(self, peer: str, field: str, limit: int) -> None:
        self.refused += 1
        self.on_refuse(field.rsplit(".", 1)[-1])
        now = time.monotonic()
        if now - self._logged_at.get(peer, -1e9) < self._log_interval_s:
            self._unlogged[peer] += 1
            return
        more = self._unlogged.pop(peer, 0)
        self._logged_at[peer] = now
        log.warning("connection from %s refused: %s = %d reached%s", peer, field, limit,
                    f" ({more} more refused since the last message)" if more else "")

    def factory(self, make_handler: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Gate(self, make_handler)


class _Gate(asyncio.Protocol):
    """The listener's protocol: admits the connection, then hands every event to aiohttp's handler."""

    def __init__(self, limiter: ConnectionLimiter, make_handler: Callable[[], asyncio.Protocol]):
        self._limiter, self._make = limiter, make_handler
        self._inner: asyncio.Protocol | None = None
        self._peer = ""
        self._refused: asyncio.BaseTransport | None = None
        self._closer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self._peer = peer_of(transport)
        over = self._limiter.admit(self._peer)
        if over is not None:
            field, limit = over
            self._limiter.refused_one(self._peer, field, limit)
            body = json.dumps({"error": {"code": "unavailable", "field": field, "limit": limit,
                                         "message": f"{field}: {limit} open connections reached; retry"}}).encode()
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            # a lingering close: the client sends its request before it reads, and closing at once
            # would answer that with a reset (a broken pipe for the client) instead of the 503
            if transport.can_write_eof():
                transport.write_eof()
            self._closer = asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.close)
            self._refused = transport
            return
        self._inner = self._make()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)            # a refused connection's request is dropped

    def eof_received(self):
        if self._refused is not None:
            self._refused.close()
            return None
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc) -> None:
        if self._closer is not None:
            self._closer.cancel()
        if self._inner is not None:
            self._limiter.release(self._peer)
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class LimitedRunner(web.AppRunner):
    """An AppRunner whose sites create connections through the limiter (sites ask `runner.server` for
    their protocol factory)."""

    def __init__(self, app: web.Application, limiter: ConnectionLimiter, **kwargs):
        super().__init__(app, **kwargs)
        self._limiter = limiter
        self._gated: Callable[[], asyncio.Protocol] | None = None

    async def setup(self) -> None:
        await super().setup()
        server = super().server
        assert server is not None
        self._gated = self._limiter.factory(server)

    @property
    def server(self):
        return self._gated if super().server is not None else None


class AcceptErrorLog:
    """Event-loop exception handler: accept() failures (out of descriptors) are logged once per interval
    with a count, everything else goes to the default handler."""

    def __init__(self, interval_s: float = 10.0):
        self.interval_s = interval_s
        self.suppressed = 0
        self._last = -1e9

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if not str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self.suppressed += 1
            return
        self._last = now
        more, self.suppressed = self.suppressed, 0
        log.error("cannot accept connections: %s (out of file descriptors; %d more such errors since the "
                  "last message)", context.get("exception"), more)
