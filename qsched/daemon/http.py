"""HTTP plumbing shared by the routes: the application's keys, bounded body reads, chunked sending of
large answers, and the middleware that turns every error into JSON naming the field and the limit."""
from __future__ import annotations

import asyncio
import json
import logging
import re

from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import RedisError

from ..errors import BadRequest, PayloadTooLarge, QschedError, RequestTimeout, Unavailable
from ..integration import SlurmIntegration
from .answers import AnswerBudget
from .parsing import TemplateParser
from .scheduler import Scheduler

log = logging.getLogger("qsched.api")

SCHEDULER = web.AppKey("scheduler", Scheduler)
ADMIN = web.AppKey("admin", bool)
HOOKS = web.AppKey("hooks", SlurmIntegration)
PARSER = web.AppKey("parser", TemplateParser)
ANSWERS = web.AppKey("answers", AnswerBudget)
RESERVED = web.ResponseKey("answer_bytes", int)      # its share of the AnswerBudget, given back once sent
_SURROGATE = re.compile(rb"\\[uU][dD][89a-fA-F]")


async def read_body(request: web.Request, max_bytes: int | None = None) -> bytes:
    """The body, within daemon.body_timeout_s: a client that announces a body and sends it slowly (or
    never) does not hold a handler forever. max_bytes: this endpoint's own limit, below
    daemon.max_body_bytes (a session open is a few hundred bytes; 64 MiB of `{},` took 1.7 GB and
    seconds of the event loop to parse)."""
    limit = request.app[SCHEDULER].config.body_timeout_s
    if max_bytes is not None and (request.content_length or 0) > max_bytes:
        raise _too_large(request, max_bytes)
    try:
        if max_bytes is None:
            return await asyncio.wait_for(request.read(), limit)       # over client_max_size: 413
        return await asyncio.wait_for(_read_at_most(request, max_bytes), limit)
    except asyncio.TimeoutError:
        raise RequestTimeout(f"body: not received within {limit:g} s", field="body", limit=limit) from None


async def _read_at_most(request: web.Request, max_bytes: int) -> bytes:
    """A body without a Content-Length (chunked) is read until it passes max_bytes, not to its end."""
    parts, size = [], 0
    async for chunk in request.content.iter_chunked(64 << 10):
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(request, max_bytes)
        parts.append(chunk)
    return b"".join(parts)


def _too_large(request: web.Request, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"body: larger than {max_bytes} bytes, the limit of {request.method} {request.path}",
                           field="body", limit=max_bytes)


async def json_body(request: web.Request, *, max_terms: int | None = None, max_bytes: int | None = None) -> dict:
    """The body as a JSON object. With max_terms (a task submission), a body that must hold more Pauli
    terms than that is refused before it is parsed: a 24 MB body of 2,000,000 terms took json.loads
    1.9 s of the event loop. Every term is a JSON array and so is every observable, and a task adds a
    few more, so a body with more '[' than 2 x max_terms + 4 per object cannot be within the limit."""
    raw = await read_body(request, max_bytes)
    if not raw:
        return {}
    if max_terms is not None and len(raw) > TERMS_PRESCAN_ABOVE and \
            raw.count(b"[") > 2 * max_terms + 4 * raw.count(b"{") + 256:
        raise PayloadTooLarge(f"observables: more than daemon.max_terms_per_request = {max_terms} Pauli terms in "
                              "one request; send fewer tasks per request", field="observables", limit=max_terms)
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadRequest(f"body: invalid JSON ({type(e).__name__})", field="body") from None
    if not isinstance(obj, dict):
        raise BadRequest("body: expected a JSON object", field="body")
    if _SURROGATE.search(raw):          # rare, so the whole body is checked only then
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            raise BadRequest("body: lone UTF-16 surrogates are not text", field="body") from None
    return obj


MAX_MESSAGE = 1000
SMALL_BODY = 64 << 10          # a session open, an admin change: a few hundred bytes
WAIT_BODY = 4 << 20            # 100,000 task ids
STREAM_ABOVE = 1 << 20
TERMS_PRESCAN_ABOVE = 1 << 20         # smaller bodies parse in well under a millisecond
STREAM_CHUNK = 256 << 10


async def _stream(request: web.Request, resp: web.Response) -> web.StreamResponse:
    """Send a large answer in chunks, each within body_timeout_s: the transport buffers one chunk, not
    the whole answer, and a client that stops reading is dropped (20 clients not reading a 27 MB
    result held 1.6 GB before)."""
    body = resp.body
    assert isinstance(body, (bytes, bytearray))
    out = web.StreamResponse(status=resp.status, headers={"Content-Type": resp.content_type})
    out.content_length = len(body)
    limit = request.app[SCHEDULER].config.body_timeout_s
    await out.prepare(request)
    view = memoryview(body)
    for i in range(0, len(body), STREAM_CHUNK):
        try:
            await asyncio.wait_for(out.write(view[i:i + STREAM_CHUNK]), limit)
        except (asyncio.TimeoutError, ConnectionResetError):
            log.warning("dropped a client that stopped reading a %d-byte answer", len(body))
            if request.transport is not None:
                request.transport.abort()
            return out
    await out.write_eof()
    return out


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        resp = await handler(request)
        try:
            if isinstance(resp, web.Response) and isinstance(resp.body, (bytes, bytearray)) \
                    and len(resp.body) > STREAM_ABOVE:
                return await _stream(request, resp)
            return resp
        finally:
            await request.app[ANSWERS].release(resp.get(RESERVED, 0))
    except QschedError as e:
        if e.status < 500:
            request.app[SCHEDULER].metrics.rejected.labels(e.code).inc()
        headers = {"Retry-After": "1"} if e.status == 503 else None
        answer = e.to_json()
        if len(e.message) > MAX_MESSAGE:       # never echo a large refused value whole
            answer["error"]["message"] = e.message[:MAX_MESSAGE] + "..."
        return web.json_response(answer, status=e.status, headers=headers)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SCHEDULER].config.max_body_bytes
        too_large = PayloadTooLarge(f"body: larger than the limit of {limit} bytes", field="body", limit=limit)
        request.app[SCHEDULER].metrics.rejected.labels(too_large.code).inc()
        return web.json_response(too_large.to_json(), status=413)
    except RedisError as e:
        err = Unavailable(f"store: Redis is unavailable or saturated ({type(e).__name__}); retry", field="store")
        return web.json_response(err.to_json(), status=err.status, headers={"Retry-After": "1"})
    except web.HTTPException as e:
        if e.status >= 400:
            return web.json_response({"error": {"code": "http", "message": e.reason}}, status=e.status)
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return web.json_response({"error": {"code": "internal", "message": "internal error; see daemon log"}},
                                 status=500)
