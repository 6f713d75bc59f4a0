"""Untrusted circuits are parsed in a process of their own, with a memory limit and a timeout.

A 46-byte OpenQASM 3 text declaring 20,000,000 qubits, or a 135-byte QPY declaring 2^31-1, made the
daemon allocate until the kernel killed it (and with it every worker and the embedded Redis). Here the
parse runs in a child limited to `memory_bytes` of address space: a bomb ends as a MemoryError or a dead
child, the answer is a 4xx naming the limit, and the event loop never waits on a parse."""
from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import re
import struct
from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest, PayloadTooLarge

log = logging.getLogger("qsched.parsing")

_QASM_QUBITS = re.compile(r"\bqubit\s*\[\s*(\d+)\s*\]|\bqreg\s+\w+\s*\[\s*(\d+)\s*\]")
_QASM_BITS = re.compile(r"\bbit\s*\[\s*(\d+)\s*\]|\bcreg\s+\w+\s*\[\s*(\d+)\s*\]")
# QPY (version 12 and later): file header, type key, circuit table (16+), then the circuit header
_QPY_FILE, _QPY_CIRCUIT = "!6sBBBBQc", "!H1cHIIQIQI"


@dataclass(frozen=True)
class Limits:
    max_qubits: int
    max_clbits: int
    max_instructions: int
    max_parameters: int

    def check(self, field: str, *, qubits: int, clbits: int, instructions: int = 0, parameters: int = 0) -> None:
        for what, n, limit in (("qubits", qubits, self.max_qubits), ("classical bits", clbits, self.max_clbits),
                               ("instructions", instructions, self.max_instructions),
                               ("parameters", parameters, self.max_parameters)):
            if n > limit:
                raise BadRequest(f"{field}: {n} {what}, at most {limit}", field=field, limit=limit)


def qasm_declared(text: str) -> tuple[int, int]:
    """Qubits and bits an OpenQASM text declares, read before anything is built."""
    return (sum(int(a or b) for a, b in _QASM_QUBITS.findall(text)),
            sum(int(a or b) for a, b in _QASM_BITS.findall(text)))


def qpy_declared(data: bytes) -> tuple[int, int, int, int] | None:
    """(programs, qubits, clbits, instructions) from a QPY file's headers, before anything is built;
    None for a layout this does not know (the bounded child still guards it)."""
    try:
        magic, version, _, _, _, programs, _ = struct.unpack_from(_QPY_FILE, data, 0)
        if magic != b"QISKIT" or version < 12:
            return None
        at = struct.calcsize(_QPY_FILE) + 1                          # the type key
        if version >= 16:
            (at,) = struct.unpack_from("!Q", data, at)               # the first program's offset
        header = struct.unpack_from(_QPY_CIRCUIT, data, at)
    except struct.error:
        return None
    return programs, header[3], header[4], header[7]


def parse(kind: str, data: bytes, limits: Limits) -> tuple[str, Any]:
    """In the child: ("ok", (qpy, info)) or ("error", (message, field, limit, status))."""
    from .. import wire
    field = "qasm3" if kind == "qasm3" else "template"
    try:
        circuit = wire.load_qasm3(data.decode()) if kind == "qasm3" else wire.load_qpy(data)
        limits.check("template", qubits=circuit.num_qubits, clbits=circuit.num_clbits,
                     instructions=len(circuit.data), parameters=circuit.num_parameters)
        qpy = wire.dump_qpy(circuit) if kind == "qasm3" else data
    except BadRequest as e:
        return "error", (e.message, e.field, e.limit, 400)
    except MemoryError:
        return "error", (f"{field}: the circuit needs more memory than a template may take", field, None, 413)
    info = {**wire.template_info(circuit), "instructions": sorted(circuit.count_ops()),
            "canonical": wire.canonical_digest(qpy, circuit)}
    return "ok", (qpy, info)


def _serve(conn, memory_bytes: int) -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    import qiskit.qpy  # noqa: F401  (imported once, before the first request)
    conn.send("ready")
    while True:
        try:
            kind, data, limits = conn.recv()
        except EOFError:
            return
        try:
            conn.send(parse(kind, data, limits))
        except MemoryError:
            conn.send(("error", ("template: the circuit needs more memory than a template may take",
                                 "template", None, 413)))


STARTUP_TIMEOUT_S = 60.0


class TemplateParser:
    """One child process, one parse at a time (uploads are once per template); a child that runs past
    the timeout or dies is replaced."""

    def __init__(self, *, timeout_s: float = 10.0, memory_bytes: int = 2 << 30):
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None
        self._lock = asyncio.Lock()

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        env_before = os.environ.get("OPENBLAS_NUM_THREADS")
        os.environ["OPENBLAS_NUM_THREADS"] = "1"       # thread arenas would eat the address-space limit
        try:
            self._proc = self._ctx.Process(target=_serve, args=(child, self.memory_bytes), daemon=True,
                                           name="qsched-parse")
            self._proc.start()
        finally:
            if env_before is None:
                os.environ.pop("OPENBLAS_NUM_THREADS", None)
            else:
                os.environ["OPENBLAS_NUM_THREADS"] = env_before
        child.close()
        self._conn = parent
        # the child imports qiskit first (seconds on a loaded machine): that is not the parse's time
        if not (parent.poll(STARTUP_TIMEOUT_S) and parent.recv() == "ready"):
            raise RuntimeError(f"the template parser did not start within {STARTUP_TIMEOUT_S:g} s")

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    async def start(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._start)

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._stop)

    async def parse(self, kind: str, data: bytes, limits: Limits) -> tuple[bytes, dict]:
        field = "qasm3" if kind == "qasm3" else "template"
        if kind == "qasm3":
            qubits, clbits = qasm_declared(data.decode(errors="replace"))
            limits.check(field, qubits=qubits, clbits=clbits)
        elif (declared := qpy_declared(data)) is not None:
            programs, qubits, clbits, instructions = declared
            if programs != 1:
                raise BadRequest(f"template: expected exactly one circuit, got {programs}", field=field, limit=1)
            limits.check(field, qubits=qubits, clbits=clbits, instructions=instructions)
        async with self._lock:
            if self._proc is None or not self._proc.is_alive():
                await asyncio.to_thread(self._start)
            conn = self._conn
            assert conn is not None
            conn.send((kind, data, limits))
            ready = await asyncio.to_thread(conn.poll, self.timeout_s)
            try:
                reply = conn.recv() if ready else None
            except EOFError:
                reply = None
            if reply is None:
                alive = self._proc is not None and self._proc.is_alive()
                await asyncio.to_thread(self._stop)
                await asyncio.to_thread(self._start)         # the next upload finds a parser ready
                if alive:
                    raise BadRequest(f"{field}: parsing took longer than {self.timeout_s:g} s", field=field,
                                     limit=self.timeout_s)
                raise PayloadTooLarge(f"{field}: the circuit needs more than {self.memory_bytes >> 20} MiB "
                                      "to parse", field=field, limit=self.memory_bytes)
        status, value = reply
        if status == "ok":
            qpy, info = value
            return qpy, info
        message, fld, limit, code = value
        raise (PayloadTooLarge if code == 413 else BadRequest)(message, field=fld, limit=limit)
