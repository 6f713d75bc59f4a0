"""Transports: send one HTTP request to the daemon and decode its answer; no retries here (those are
the core's, see core.ClientCore.execute). A failure to reach the daemon raises retry.Unreachable,
which says whether the request may have reached it."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import threading
import urllib.parse
from typing import Any

from ..errors import QschedError
from .core import decode_response
from .retry import Unreachable, os_cause


def _munge_credential(purpose: str) -> str | None:
    """Inside a Slurm job or on a login node over TCP: a MUNGE credential proves who we are. Its payload
    names the request's purpose, so a credential captured for a listing cannot open a session."""
    try:
        from ..slurm.munge import credential_for, encode
    except ImportError:
        return None
    socket = os.environ.get("QSCHED_MUNGE_SOCKET") or None     # munged's socket, when not the default
    try:
        return credential_for(purpose, socket=socket) if purpose else encode(socket=socket)
    except (QschedError, OSError, subprocess.SubprocessError):   # no munged: the daemon says what it needs
        return None


def identity_headers(unix: bool, purpose: str = "") -> dict[str, str]:
    """Who we are: the unix socket tells the daemon our uid; over TCP a MUNGE credential does (encoded
    afresh for each request: munged refuses a replayed one)."""
    if unix:
        return {}
    cred = _munge_credential(purpose)
    return {"X-Qsched-Munge": cred} if cred else {}


def _encode(body: Any, headers: dict[str, str] | None) -> tuple[bytes, dict[str, str]]:
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        headers.setdefault("Content-Type", "application/json")
        return json.dumps(body).encode(), headers
    return body or b"", headers


def daemon_urls(url: str) -> list[str]:
    """QSCHED_URL may list several daemons (a leader and its standbys), comma-separated: tried in turn."""
    urls = [u.strip() for u in url.split(",") if u.strip()]
    return urls or [url]


def tls_context() -> ssl.SSLContext:
    """For https:// daemons: verify the server against QSCHED_CA_FILE (else the system's CAs), and
    present QSCHED_CLIENT_CERT/QSCHED_CLIENT_KEY where the daemon asks for a client certificate."""
    ctx = ssl.create_default_context(cafile=os.environ.get("QSCHED_CA_FILE") or None)
    cert = os.environ.get("QSCHED_CLIENT_CERT")
    if cert:
        ctx.load_cert_chain(cert, os.environ.get("QSCHED_CLIENT_KEY") or None)
    return ctx


class _Target:
    """One daemon address: a unix socket, http://HOST:PORT or https://HOST:PORT."""

    def __init__(self, url: str):
        u = urllib.parse.urlparse(url)
        self.url = url
        self.unix = u.scheme == "unix"
        self.tls = u.scheme == "https"
        self.addr: Any = u.path if self.unix else (u.hostname or "127.0.0.1", u.port or 8765)
        self.host = b"localhost" if self.unix else f"{self.addr[0]}:{self.addr[1]}".encode()


class _Transport:
    """HTTP/1.1 with keep-alive over a unix or TCP (or TLS) socket, one connection per thread. Hand-rolled
    because http.client parses every response's headers with the email package: that alone was a fifth
    of a null task's round trip. Several daemon URLs: a new connection tries them in turn, from the one
    that last answered."""

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout = url, timeout
        self._targets = [_Target(u) for u in daemon_urls(url)]
        self._cur = 0
        self._ctx: ssl.SSLContext | None = None
        self._local = threading.local()       # a connection per thread: a Client can be shared by threads
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    @property
    def unix(self) -> bool:
        return self._targets[self._cur].unix

    @property
    def _host(self) -> bytes:
        return self._targets[self._cur].host

    # the calling thread's connection and its read buffer
    _sock = property(lambda self: getattr(self._local, "sock", None),
                     lambda self, v: setattr(self._local, "sock", v))
    # a bytearray: appending a chunk and consuming from the front cost the chunk, not the buffer
    # (bytes += chunk copied the whole answer per chunk: 45 s for a 127 MiB result)
    @property
    def _buf(self) -> bytearray:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = bytearray()
        return buf

    @_buf.setter
    def _buf(self, v: bytearray) -> None:
        self._local.buf = v

    def _connect(self) -> None:
        first, n = self._cur, len(self._targets)
        for k in range(n):
            i = (first + k) % n
            try:
                sock = self._connect_to(self._targets[i])
            except OSError:
                if k == n - 1:
                    raise
                continue
            self._cur = i
            self._sock, self._buf = sock, bytearray()
            with self._open_lock:
                self._open.add(sock)
            return

    def _next_target(self) -> None:
        """The daemon went away or stopped answering mid-request: a retry tries the next one first (a
        stopped ex-leader may still accept connections that nothing reads)."""
        self._cur = (self._cur + 1) % len(self._targets)

    def _connect_to(self, t: _Target) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX if t.unix else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(t.addr)
            if not t.unix:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if t.tls:
                if self._ctx is None:
                    self._ctx = tls_context()
                sock = self._ctx.wrap_socket(sock, server_hostname=t.addr[0])
        except BaseException:
            sock.close()
            raise
        return sock

    def _recv(self) -> None:
        chunk = self._sock.recv(262144)
        if not chunk:
            raise ConnectionResetError("connection closed by the daemon")
        self._buf += chunk

    def _read_until(self, sep: bytes) -> bytes:
        buf, start = self._buf, 0
        while (i := buf.find(sep, start)) < 0:
            start = max(0, len(buf) - len(sep) + 1)      # search only what arrived since
            self._recv()
        line = bytes(buf[:i])
        del buf[:i + len(sep)]
        return line

    def _read_exactly(self, n: int) -> bytes | bytearray:
        buf = self._buf
        if len(buf) >= n:
            data = bytes(buf[:n])
            del buf[:n]
            return data
        # a large body: received straight into its own buffer, no copy per chunk
        out = bytearray(n)
        have = len(buf)
        out[:have] = buf
        buf.clear()
        view = memoryview(out)
        while have < n:
            k = self._sock.recv_into(view[have:], min(n - have, 1 << 20))
            if not k:
                raise ConnectionResetError("connection closed by the daemon")
            have += k
        return out

    def _response(self) -> tuple[int, dict, bytes | bytearray]:
        head = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        hdrs = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if "content-length" in hdrs:
            body = self._read_exactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
                parts.append(self._read_exactly(size))
                self._read_until(b"\r\n")
            self._read_until(b"\r\n")
            body = b"".join(parts)
        else:                                    # body until close
            try:
                while True:
                    self._recv()
            except ConnectionResetError:
                pass
            body, self._buf = bytes(self._buf), bytearray()
            hdrs["connection"] = "close"
        return status, hdrs, body

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            with self._open_lock:
                self._open.discard(self._sock)
        self._sock, self._buf = None, bytearray()

    def _unreachable(self, e: BaseException, *, sent: bool) -> Unreachable:
        return Unreachable(f"qsched daemon at {self.url}: {e}", cause=os_cause(e), sent=sent)

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                timeout: float | None = None) -> Any:
        data, headers = _encode(body, headers)
        for attempt in (0, 1):
            if self._sock is not None and self._sock.fileno() < 0:    # closed by close() in another thread
                self._sock, self._buf = None, bytearray()
            fresh = self._sock is None
            if fresh:
                try:
                    self._connect()
                except OSError as e:        # no socket file, refused: the request never left
                    raise self._unreachable(e, sent=False) from None
            head = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self._host, b"Content-Length: %d" % len(data)]
            head += [f"{k}: {v}".encode() for k, v in headers.items()]
            message = b"\r\n".join(head) + b"\r\n\r\n" + data
            try:
                self._sock.settimeout(timeout or self.timeout)
                try:
                    self._sock.sendall(message)
                except (BrokenPipeError, ConnectionResetError):
                    if not fresh:
                        raise
                    # the daemon may have answered early (413 for a body over its limit) and closed
                status, hdrs, resp = self._response()
                break
            except (ConnectionError, ValueError, IndexError) as e:
                self._drop()
                # only a kept-alive connection the daemon closed while idle is retried here: the request
                # never reached it. A fresh connection failing is the core's to retry, or not.
                if fresh or attempt:
                    self._next_target()
                    raise self._unreachable(e, sent=True) from None
            except OSError as e:          # timed out
                self._drop()
                self._next_target()
                raise self._unreachable(e, sent=True) from None
        if hdrs.get("connection", "").lower() == "close":
            self._drop()
        return decode_response(status, hdrs.get("content-type", ""), resp)

    def close(self) -> None:
        """Close every thread's connection (a thread's next request opens a new one)."""
        with self._open_lock:
            socks, self._open = self._open, set()
        for sock in socks:
            sock.close()
        self._sock, self._buf = None, bytearray()


SyncTransport = _Transport


class AsyncTransport:
    """The same requests over aiohttp (one pooled ClientSession, made on first use inside the loop)."""

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout = url, timeout
        self._targets = [_Target(u) for u in daemon_urls(url)]
        self._cur = 0
        self._http: dict[int, Any] = {}       # one pooled ClientSession per daemon address

    @property
    def unix(self) -> bool:
        return self._targets[self._cur].unix

    def _session(self, t: _Target) -> Any:
        import aiohttp
        i = self._targets.index(t)
        if i not in self._http:
            conn = aiohttp.UnixConnector(path=t.addr) if t.unix else aiohttp.TCPConnector(
                ssl=tls_context() if t.tls else False)
            self._http[i] = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None))
        return self._http[i]

    async def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                      timeout: float | None = None) -> Any:
        import aiohttp
        data, headers = _encode(body, headers)
        first, n = self._cur, len(self._targets)
        for k in range(n):
            t = self._targets[(first + k) % n]
            base = "http://localhost" if t.unix else f"{'https' if t.tls else 'http'}://{t.addr[0]}:{t.addr[1]}"
            try:
                limit = aiohttp.ClientTimeout(total=timeout or self.timeout)
                async with self._session(t).request(method, base + path, data=data, headers=headers,
                                                    timeout=limit) as resp:
                    raw = await resp.read()
                    self._cur = (first + k) % n
                    return decode_response(resp.status, resp.content_type, raw)
            except aiohttp.ClientConnectorError as e:          # never connected: the request never left
                if k < n - 1:
                    continue                                   # the next daemon of the list
                raise Unreachable(f"qsched daemon at {self.url}: {e}", cause=os_cause(e.os_error),
                                  sent=False) from None
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                self._cur = (first + k + 1) % n                # it went away mid-request: the next one next
                cause = "timed out" if isinstance(e, asyncio.TimeoutError) else \
                    os_cause(e) if isinstance(e, OSError) else "connection reset"
                raise Unreachable(f"qsched daemon at {self.url}: {e or type(e).__name__}", cause=cause,
                                  sent=True) from None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for http in self._http.values():
            await http.close()
        self._http = {}
