"""Task answers: stored results spliced into the JSON answer without decoding them (they can be large),
the live state of tasks still running, and the bound on what one answer gathers from Redis.

A stored result is its final state and its body (store.result_entry); the body is a JSON object
({"result": ...} or {"error": ...}) whose fields are spliced after the id and the state."""
from __future__ import annotations

import json

from aiohttp import web

from ..errors import NotFound
from ..models import TaskState
from ..store import split_result
from .http import ANSWERS, RESERVED, SCHEDULER, STREAM_ABOVE
from .scheduler import Scheduler

READ_CHUNK = 1000            # results sized or read per Redis call: no reply over an unbounded list
# a finished task whose result did not fit in this answer (daemon.max_answer_bytes): not final, so a
# client asks again, and the next answer starts with it
DEFERRED = "READY"


async def tasks_response(request: web.Request, tids: list[str], *, status: int = 200, extra: dict | None = None,
                         ready: dict[str, bytes] | None = None) -> web.Response:
    """{**extra, "tasks": [one object per id, in order]}."""
    parts, reserved = await _gather(request, tids, ready or {})
    head = json.dumps(extra)[:-1].encode() + b',' if extra else b'{'
    out: list = [head, b'"tasks":[']          # one join: a large result is copied once, into the body
    for i, p in enumerate(parts):
        out += [b","] * bool(i) + p
    out.append(b"]}")
    return _response(b"".join(out), status, reserved)


async def task_response(request: web.Request, tid: str, ready: dict[str, bytes] | None = None) -> web.Response:
    """One task's object."""
    parts, reserved = await _gather(request, [tid], ready or {})
    return _response(b"".join(parts[0]), 200, reserved)


def _response(body: bytes, status: int, reserved: int) -> web.Response:
    resp = web.Response(body=body, status=status, content_type="application/json")
    resp[RESERVED] = reserved
    return resp


async def _gather(request: web.Request, tids: list[str], ready: dict[str, bytes]) -> tuple[list[list], int]:
    """Each task's JSON fragments, and the bytes reserved of the AnswerBudget (released once sent).
    `ready` holds results that came inline with completion events: not read again. Results are taken
    in order while they fit in daemon.max_answer_bytes (the first one always); the others are left for
    the next request (DEFERRED), so one answer never gathers more than that from Redis or the events."""
    sch = request.app[SCHEDULER]
    budget = request.app[ANSWERS]
    missing = [t for t in tids if t not in ready]
    sizes = {t: len(raw) for t, raw in ready.items()}
    for i in range(0, len(missing), READ_CHUNK):
        chunk = missing[i:i + READ_CHUNK]
        sizes.update(zip(chunk, await sch.store.result_sizes(chunk)))
    found: dict[str, tuple[str, memoryview] | None] = {}
    read, total = [], 0
    for tid in tids:
        n = sizes.get(tid, 0)
        if n and total and total + n > budget.limit:
            found[tid] = (DEFERRED, memoryview(b""))
        elif n:
            total += n
            if tid in ready:
                found[tid] = split_result(ready[tid])
            else:
                read.append(tid)
    reserved = 0
    if total > STREAM_ABOVE:
        # held twice while the body is built (Redis's copy and the body), once while it is sent
        reserved = await budget.reserve(2 * total, sch.config.body_timeout_s)
    try:
        for i in range(0, len(read), READ_CHUNK):
            chunk = read[i:i + READ_CHUNK]
            found.update(zip(chunk, await sch.store.results(chunk)))
        return await _parts(sch, tids, found), reserved
    except BaseException:
        await budget.release(reserved)
        raise


async def _parts(sch: Scheduler, tids: list[str], found: dict[str, tuple[str, memoryview] | None]) -> list[list]:
    running: dict[str, set[str]] = {}         # the device's taken batches, read once per device per answer
    out: list[list] = []
    for tid in tids:
        res = found.get(tid)
        if res is not None:
            state, body = res
            if state == DEFERRED:
                out.append([json.dumps({"id": tid, "state": DEFERRED}).encode()])
            else:
                out.append([b'{"id":"', tid.encode(), b'","state":"', state.encode(), b'",', body[1:]])
            continue
        t = sch.tasks.get(tid)
        if t is not None:
            state, error = t.state.value, None
            if t.state == TaskState.SCHEDULED and t.batch and t.batch in await _running(sch, t.batch, running):
                state = TaskState.RUNNING.value
        else:
            state, error = await sch.store.task_fields(tid, "state", "error")
            if state is None:
                raise NotFound(f"task: no task {tid!r}", field="task")
        d: dict = {"id": tid, "state": state}
        if error:
            d["error"] = {"code": "task_failed", "message": error}
        out.append([json.dumps(d).encode()])
    return out


async def _running(sch: Scheduler, bid: str, seen: dict[str, set[str]]) -> set[str]:
    """A scheduled task is RUNNING once its device's worker has taken its batch."""
    for name, dev in sch.devices.items():
        if bid in dev.outstanding:
            if name not in seen:
                seen[name] = await sch.store.running_batch_ids(dev.spec.name)
            return seen[name]
    return set()
