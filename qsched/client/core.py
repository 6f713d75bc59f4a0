"""The Python client (sync `Client` and `AsyncClient`), used directly and by the Qiskit and PennyLane
SDKs. Inside a Slurm job it finds the daemon and the job's session from the environment the SPANK
plugin sets (QSCHED_URL, QSCHED_SESSION, QSCHED_POOL, QSCHED_CLASS); on a laptop, the local socket."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

import numpy as np

from . import errors, wire
from .config import default_state_dir
from .errors import QschedError, TaskCancelled, TaskFailed, Timeout

POLL_S = 30.0       # one long-poll; waits longer than this poll again


def default_url() -> str:
    return os.environ.get("QSCHED_URL") or f"unix://{default_state_dir() / 'qsched.sock'}"


def _munge_credential() -> str | None:
    """Inside a Slurm job over TCP: a MUNGE credential proves who we are."""
    try:
        from .slurm.munge import encode
    except ImportError:
        return None
    try:
        return encode()
    except Exception:
        return None


@dataclass
class TaskResult:
    id: str
    kind: str | None
    data: dict
    meta: dict = field(default_factory=dict)

    @property
    def evs(self) -> np.ndarray:
        return self.data["evs"]

    @property
    def stds(self) -> np.ndarray:
        return self.data["stds"]

    @property
    def jacobian(self) -> np.ndarray:
        return self.data["jacobian"]

    @property
    def registers(self) -> dict:
        """{name: {"num_bits": n, "array": uint8 [bindings, shots, bytes]}} (Qiskit BitArray layout)."""
        return self.data["registers"]

    def counts(self, register: str | None = None, binding: int = 0) -> dict[str, int]:
        reg = self.registers[register or next(iter(self.registers))]
        n, arr = reg["num_bits"], reg["array"][binding]
        ints = np.zeros(arr.shape[0], dtype=np.uint64)
        for b in range(arr.shape[1]):
            ints = (ints << np.uint64(8)) | arr[:, b].astype(np.uint64)
        vals, cnt = np.unique(ints, return_counts=True)
        return {format(int(v), f"0{n}b"): int(c) for v, c in zip(vals, cnt)}


def _task_outcome(d: dict):
    """A finished task's JSON -> TaskResult, or raise its error."""
    state = d["state"]
    if state == "DONE":
        return TaskResult(d["id"], None, wire.decode_tree(d["result"]), d.get("meta", {}))
    if state == "CANCELLED":
        raise TaskCancelled(f"task {d['id']} was cancelled", field="task")
    err = d.get("error") or {}
    raise TaskFailed(err.get("message", f"task {d['id']} failed"), field=err.get("field"), limit=err.get("limit"))


def _expired_template(e: QschedError) -> bool:
    return bool(e.field) and e.field.endswith(".template")


class TemplateCache:
    """Templates this session already sent: later tasks send only the digest. Circuits are re-serialized
    each call (QPY dump ~0.1 ms) because a QuantumCircuit is mutable and cannot be a cache key."""

    def __init__(self):
        self.sent: set[str] = set()

    def qpy(self, circuit) -> tuple[str, bytes | None]:
        data = wire.dump_qpy(circuit)
        d = wire.digest(data)
        return d, (None if d in self.sent else data)


def task_body(kind: str, template: str, params, *, observables=None, shots=None, method=None) -> dict:
    p = np.atleast_2d(np.asarray(params if params is not None else np.zeros((1, 0)), dtype=np.float64))
    body = {"kind": kind, "template": template, "params": wire.encode_array(p), "shots": shots}
    if observables is not None:
        body["observables"] = wire.observables_to_wire(observables)
    if method:
        body["method"] = method
    return body


# ------------------------------------------------------------------------------------------- sync
class _Transport:
    """HTTP/1.1 with keep-alive over a unix or TCP socket, one connection per thread. Hand-rolled because
    http.client parses every response's headers with the email package: that alone was a fifth of a
    null task's round trip."""

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout = url, timeout
        u = urllib.parse.urlparse(url)
        self.unix = u.scheme == "unix"
        self._addr = u.path if self.unix else (u.hostname or "127.0.0.1", u.port or 8765)
        self._host = b"localhost" if self.unix else f"{self._addr[0]}:{self._addr[1]}".encode()
        self._local = threading.local()       # a connection per thread: a Client can be shared by threads
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    # the calling thread's connection and its read buffer
    _sock = property(lambda self: getattr(self._local, "sock", None),
                     lambda self, v: setattr(self._local, "sock", v))
    _buf = property(lambda self: getattr(self._local, "buf", b""),
                    lambda self, v: setattr(self._local, "buf", v))

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX if self.unix else socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._addr)
        if not self.unix:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._buf = sock, b""
        with self._open_lock:
            self._open.add(sock)

    def _recv(self) -> None:
        chunk = self._sock.recv(262144)
        if not chunk:
            raise ConnectionResetError("connection closed by the daemon")
        self._buf += chunk

    def _read_until(self, sep: bytes) -> bytes:
        while (i := self._buf.find(sep)) < 0:
            self._recv()
        line, self._buf = self._buf[:i], self._buf[i + len(sep):]
        return line

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._recv()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _response(self) -> tuple[int, dict, bytes]:
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
            body, self._buf = self._buf, b""
            hdrs["connection"] = "close"
        return status, hdrs, body

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            with self._open_lock:
                self._open.discard(self._sock)
        self._sock, self._buf = None, b""

    def request(self, method: str, path: str, body=None, headers=None, timeout=None):
        headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        body = body or b""
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self._host, b"Content-Length: %d" % len(body)]
        head += [f"{k}: {v}".encode() for k, v in headers.items()]
        message = b"\r\n".join(head) + b"\r\n\r\n" + body
        for attempt in (0, 1):
            if self._sock is not None and self._sock.fileno() < 0:    # closed by close() in another thread
                self._sock, self._buf = None, b""
            fresh = self._sock is None
            try:
                if fresh:
                    self._connect()
                self._sock.settimeout(timeout or self.timeout)
                try:
                    self._sock.sendall(message)
                except (BrokenPipeError, ConnectionResetError):
                    if not fresh:
                        raise
                    # the daemon may have answered early (413 for a body over its limit) and closed
                status, hdrs, data = self._response()
                break
            except (ConnectionError, ValueError, IndexError) as e:
                self._drop()
                # only a kept-alive connection the daemon closed while idle is retried: the request
                # never reached it. A fresh connection failing means the daemon is not there.
                if fresh or attempt:
                    raise errors.Unavailable(f"qsched daemon at {self.url}: {e}") from None
            except OSError as e:          # no socket file, refused, timed out
                self._drop()
                raise errors.Unavailable(f"qsched daemon at {self.url}: {e}") from None
        if hdrs.get("connection", "").lower() == "close":
            self._drop()
        obj = json.loads(data) if data and hdrs.get("content-type", "").startswith("application/json") else data
        if status >= 400:
            raise errors.from_json(status, obj if isinstance(obj, dict) else {})
        return obj

    def close(self):
        """Close every thread's connection (a thread's next request opens a new one)."""
        with self._open_lock:
            socks, self._open = self._open, set()
        for sock in socks:
            sock.close()
        self._sock, self._buf = None, b""


class TaskFuture:
    def __init__(self, session: "Session", tid: str):
        self.session, self.id = session, tid
        self._done: dict | None = None

    def _absorb(self, d: dict) -> None:
        if d["state"] in ("DONE", "FAILED", "CANCELLED"):
            self._done = d

    def done(self) -> bool:
        if self._done is None:
            self._absorb(self.session._get(self.id, 0))
        return self._done is not None

    def state(self) -> str:
        return self._done["state"] if self._done else self.session._get(self.id, 0)["state"]

    def result(self, timeout: float | None = None) -> TaskResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._done is None:
            left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if left <= 0:
                raise Timeout(f"task {self.id}: not finished within {timeout} s", field="timeout", limit=timeout)
            self._absorb(self.session._get(self.id, left))
        return _task_outcome(self._done)

    def cancel(self) -> str:
        return self.session.client._t.request("DELETE", f"/v1/tasks/{self.id}", headers=self.session._auth())["state"]


class Session:
    def __init__(self, client: "Client", info: dict):
        self.client = client
        self.info = info
        self.id = info["id"]
        self.token = info.get("token")
        self.pool = info.get("pool")
        self.closed = False
        self.usage: dict | None = None
        self._templates = TemplateCache()

    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def upload(self, circuit) -> str:
        digest, data = self._templates.qpy(circuit)
        if data is not None:
            self.client._t.request("POST", f"/v1/sessions/{self.id}/templates", body=data,
                                   headers={**self._auth(), "Content-Type": "application/x-qpy"})
            self._templates.sent.add(digest)
        return digest

    def _template(self, circuit_or_hash) -> str:
        return circuit_or_hash if isinstance(circuit_or_hash, str) else self.upload(circuit_or_hash)

    def submit(self, kind: str, circuit, params=None, *, observables=None, shots=None, method=None) -> TaskFuture:
        return self.submit_many([dict(kind=kind, circuit=circuit, params=params, observables=observables,
                                      shots=shots, method=method)])[0]

    def _post_tasks(self, tasks: list[dict], query: str = "", timeout: float | None = None) -> dict:
        """All tasks in one request. A template the daemon has let expire (unused for days) is uploaded
        again and the request retried once."""
        for attempt in (0, 1):
            bodies = [task_body(t["kind"], self._template(t.get("circuit", t.get("template"))), t.get("params"),
                                observables=t.get("observables"), shots=t.get("shots"), method=t.get("method"))
                      for t in tasks]
            try:
                return self.client._t.request("POST", f"/v1/sessions/{self.id}/tasks{query}",
                                              body={"tasks": bodies}, headers=self._auth(), timeout=timeout)
            except errors.NotFound as e:
                if attempt or not _expired_template(e):
                    raise
                self._templates.sent.clear()

    def submit_many(self, tasks: list[dict]) -> list[TaskFuture]:
        """All tasks in one request (one primitive call = one request)."""
        return [TaskFuture(self, tid) for tid in self._post_tasks(tasks)["ids"]]

    def run(self, kind: str, circuit, params=None, *, observables=None, shots=None, method=None,
            timeout: float | None = None) -> TaskResult:
        """Submit and wait in one round trip where the task finishes within the long-poll."""
        wait = POLL_S if timeout is None else min(timeout, POLL_S)
        res = self._post_tasks([dict(kind=kind, circuit=circuit, params=params, observables=observables,
                                     shots=shots, method=method)], f"?wait={wait}", timeout=wait + 30)
        fut = TaskFuture(self, res["ids"][0])
        fut._absorb(res["tasks"][0])
        return fut.result(timeout)

    def wait(self, futures: list[TaskFuture], timeout: float | None = None) -> list[TaskResult]:
        """Results of many tasks with one long-poll per round, in order."""
        deadline = None if timeout is None else time.monotonic() + timeout
        todo = [f for f in futures if f._done is None]
        while todo:
            left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if left <= 0:
                raise Timeout(f"{len(todo)} tasks not finished within {timeout} s", field="timeout", limit=timeout)
            res = self.client._t.request("POST", "/v1/tasks/wait", body={"ids": [f.id for f in todo], "timeout": left},
                                         headers=self._auth(), timeout=left + 30)
            for f, d in zip(todo, res["tasks"]):
                f._absorb(d)
            todo = [f for f in todo if f._done is None]
        return [f.result() for f in futures]

    def _get(self, tid: str, wait: float) -> dict:
        return self.client._t.request("GET", f"/v1/tasks/{tid}?wait={wait}", headers=self._auth(),
                                      timeout=wait + 30)

    def status(self) -> dict:
        return self.client._t.request("GET", f"/v1/sessions/{self.id}", headers=self._auth())

    def close(self) -> dict:
        if not self.closed:
            self.usage = self.client._t.request("DELETE", f"/v1/sessions/{self.id}", headers=self._auth())
            self.closed = True
        return self.usage

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.attached:
            self.close()

    attached = False


class Client:
    def __init__(self, url: str | None = None, *, timeout: float = 60.0):
        self.url = url or default_url()
        self._t = _Transport(self.url, timeout)

    def _identity(self) -> dict:
        if self._t.unix:
            return {}
        cred = _munge_credential()
        return {"X-Qsched-Munge": cred} if cred else {}

    def health(self) -> dict:
        return self._t.request("GET", "/v1/health")

    def devices(self) -> list[dict]:
        return self._t.request("GET", "/v1/devices")["devices"]

    def queue(self) -> dict:
        return self._t.request("GET", "/v1/queue")

    def sessions(self) -> list[dict]:
        return self._t.request("GET", "/v1/sessions")["sessions"]

    def session_info(self, sid: str) -> dict:
        return self._t.request("GET", f"/v1/sessions/{sid}")

    def close_session(self, sid: str) -> dict:
        """Close any session the caller may close (its own; an admin: any); returns its usage record."""
        return self._t.request("DELETE", f"/v1/sessions/{sid}")

    def accounting(self, since: float = 0.0, user: str | None = None) -> list[dict]:
        q = f"?since={since}" + (f"&user={urllib.parse.quote(user)}" if user else "")
        return self._t.request("GET", f"/v1/acct{q}")["records"]

    def metrics(self) -> str:
        return self._t.request("GET", "/metrics").decode()

    def open_session(self, pool: str | None = None, *, name: str = "", cls: str | None = None,
                     weight: float = 1.0, account: str = "") -> Session:
        body = {"pool": pool or os.environ.get("QSCHED_POOL") or None, "name": name,
                "class": cls or os.environ.get("QSCHED_CLASS") or "batch", "weight": weight, "account": account}
        return Session(self, self._t.request("POST", "/v1/sessions", body=body, headers=self._identity()))

    def attach(self, sid: str) -> Session:
        s = Session(self, self._t.request("POST", f"/v1/sessions/{sid}/attach", headers=self._identity()))
        s.attached = True        # the job's session: Slurm closes it when the job ends
        return s

    def session(self, pool: str | None = None, **kw) -> Session:
        """The job's session when running under Slurm (QSCHED_SESSION), else a new one."""
        sid = os.environ.get("QSCHED_SESSION")
        return self.attach(sid) if sid else self.open_session(pool, **kw)

    def close(self):
        self._t.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------------------------- async
class AsyncTaskFuture:
    def __init__(self, session: "AsyncSession", tid: str):
        self.session, self.id = session, tid
        self._done: dict | None = None

    async def result(self, timeout: float | None = None) -> TaskResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._done is None:
            left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if left <= 0:
                raise Timeout(f"task {self.id}: not finished within {timeout} s", field="timeout", limit=timeout)
            d = await self.session.client._request("GET", f"/v1/tasks/{self.id}?wait={left}",
                                                   headers=self.session._auth())
            if d["state"] in ("DONE", "FAILED", "CANCELLED"):
                self._done = d
        return _task_outcome(self._done)

    def __await__(self):
        return self.result().__await__()

    async def cancel(self) -> str:
        return (await self.session.client._request("DELETE", f"/v1/tasks/{self.id}",
                                                   headers=self.session._auth()))["state"]


class AsyncSession(Session):
    async def upload(self, circuit) -> str:
        digest, data = self._templates.qpy(circuit)
        if data is not None:
            await self.client._request("POST", f"/v1/sessions/{self.id}/templates", data=data,
                                       headers={**self._auth(), "Content-Type": "application/x-qpy"})
            self._templates.sent.add(digest)
        return digest

    async def submit(self, kind, circuit, params=None, *, observables=None, shots=None, method=None):
        return (await self.submit_many([dict(kind=kind, circuit=circuit, params=params,
                                             observables=observables, shots=shots, method=method)]))[0]

    async def submit_many(self, tasks):
        for attempt in (0, 1):
            bodies = []
            for t in tasks:
                c = t.get("circuit", t.get("template"))
                digest = c if isinstance(c, str) else await self.upload(c)
                bodies.append(task_body(t["kind"], digest, t.get("params"), observables=t.get("observables"),
                                        shots=t.get("shots"), method=t.get("method")))
            try:
                res = await self.client._request("POST", f"/v1/sessions/{self.id}/tasks",
                                                 json_body={"tasks": bodies}, headers=self._auth())
                return [AsyncTaskFuture(self, tid) for tid in res["ids"]]
            except errors.NotFound as e:          # an expired template: upload again, once
                if attempt or not _expired_template(e):
                    raise
                self._templates.sent.clear()

    async def close(self):
        if not self.closed:
            self.usage = await self.client._request("DELETE", f"/v1/sessions/{self.id}", headers=self._auth())
            self.closed = True
        return self.usage

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        if not self.attached:
            await self.close()


class AsyncClient:
    def __init__(self, url: str | None = None, *, timeout: float = 60.0):
        self.url = url or default_url()
        self.timeout = timeout
        self._http = None

    async def _session(self):
        import aiohttp
        if self._http is None:
            u = urllib.parse.urlparse(self.url)
            conn = aiohttp.UnixConnector(path=u.path) if u.scheme == "unix" else aiohttp.TCPConnector()
            self._base = "http://localhost" if u.scheme == "unix" else f"http://{u.hostname}:{u.port or 8765}"
            self._http = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None))
        return self._http

    async def _request(self, method, path, *, json_body=None, data=None, headers=None):
        import aiohttp
        http = await self._session()
        try:
            async with http.request(method, self._base + path, json=json_body, data=data, headers=headers) as resp:
                obj = await resp.json(content_type=None) if resp.content_type == "application/json" else await resp.read()
                if resp.status >= 400:
                    raise errors.from_json(resp.status, obj if isinstance(obj, dict) else {})
                return obj
        except aiohttp.ClientConnectionError as e:
            raise errors.Unavailable(f"qsched daemon at {self.url}: {e}") from None

    def _identity(self):
        if self.url.startswith("unix:"):
            return {}
        cred = _munge_credential()
        return {"X-Qsched-Munge": cred} if cred else {}

    async def health(self):
        return await self._request("GET", "/v1/health")

    async def devices(self):
        return (await self._request("GET", "/v1/devices"))["devices"]

    async def open_session(self, pool=None, *, name="", cls=None, weight=1.0, account="") -> AsyncSession:
        body = {"pool": pool or os.environ.get("QSCHED_POOL") or None, "name": name,
                "class": cls or os.environ.get("QSCHED_CLASS") or "batch", "weight": weight, "account": account}
        return AsyncSession(self, await self._request("POST", "/v1/sessions", json_body=body, headers=self._identity()))

    async def attach(self, sid) -> AsyncSession:
        s = AsyncSession(self, await self._request("POST", f"/v1/sessions/{sid}/attach", headers=self._identity()))
        s.attached = True
        return s

    async def session(self, pool=None, **kw) -> AsyncSession:
        sid = os.environ.get("QSCHED_SESSION")
        return await self.attach(sid) if sid else await self.open_session(pool, **kw)

    async def close(self):
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


__all__ = ["Client", "AsyncClient", "Session", "AsyncSession", "TaskFuture", "AsyncTaskFuture", "TaskResult",
           "QschedError", "default_url"]
