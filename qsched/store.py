"""The Redis repository. Connections are passed in; every multi-key change is one MULTI or one Lua call.

Layout (names in keys.py): a session hash + pending list + usage hash; per task a hash (metadata and
observables), a params string (raw float64) and, once finished, a result string (state, newline,
JSON body; written once: result_entry);
templates as hashes (QPY bytes + info); batches as hashes; per device an inbox and a processing list;
one events stream that workers append to and the daemon follows.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError, WatchError

from . import keys
from .errors import Fenced, ReplicationTimeout
from .models import Batch, Session, SessionState, Task, TaskState, Usage, Window

# a task's payload as a worker needs it, inline in a batch or fetched (params: raw float64, base64 inline)
INLINE_FIELDS = ("id", "kind", "template", "shots", "method", "observables", "submitted", "bindings", "seed",
                 "params")
EVENTS_MAXLEN = 10_000           # the daemon follows the stream live; this only bridges short gaps
INLINE_RESULT_BYTES = 65_536


def result_entry(state: str, body: str) -> str:
    """A task's result as stored (and carried inline by its completion event): its final state
    (DONE or FAILED), a newline, then the JSON body the worker wrote ({"result"...} or {"error"...})."""
    return f"{state}\n{body}"


def split_result(raw: bytes) -> tuple[str, memoryview]:
    """A stored result -> (state, body); the body is a view, not a copy (results can be large)."""
    cut = raw.find(b"\n")
    return raw[:cut].decode(), memoryview(raw)[cut + 1:]

# Worker side: the payloads of a batch that came without them, in one round trip.
FETCH_LUA = """
local out = {}
for i = 1, #KEYS, 2 do
  local f = redis.call('HMGET', KEYS[i], """ + ", ".join(f"'{f}'" for f in INLINE_FIELDS[:-1]) + """, 'state')
  table.insert(out, cjson.encode(f))
  table.insert(out, redis.call('GET', KEYS[i+1]) or '')
end
return out
"""

# Worker side: finish a batch. A result is written once: a task that already has one, or was cancelled,
# keeps what it has. Usage is charged here so it is exactly-once with the results.
COMPLETE_LUA = """
-- KEYS: processing, events, usage, batch, then (task, result) pairs
-- ARGV: entry, event json, ttl, exec_s, finished, then (state, payload, circuits, shots) per task
-- The entry in the processing list is the fence: a worker whose batch was taken back (it hung, and
-- the daemon requeued the tasks) finds it gone and writes nothing, so no task is answered twice.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return -1 end
local ttl = tonumber(ARGV[3])
local written = 0
for i = 5, #KEYS, 2 do
  local j = 6 + (i - 5) * 2
  local tkey, rkey = KEYS[i], KEYS[i+1]
  local state = redis.call('HGET', tkey, 'state')
  if state and state ~= 'CANCELLED' and state ~= 'DONE' and state ~= 'FAILED'
     and redis.call('EXISTS', rkey) == 0 then
    redis.call('SET', rkey, ARGV[j] .. '\\n' .. ARGV[j+1], 'EX', ttl)
    redis.call('HSET', tkey, 'state', ARGV[j], 'finished', ARGV[5])
    redis.call('EXPIRE', tkey, ttl)
    redis.call('HINCRBY', KEYS[3], 'tasks', 1)
    redis.call('HINCRBY', KEYS[3], 'circuits', tonumber(ARGV[j+2]))
    redis.call('HINCRBY', KEYS[3], 'shots', tonumber(ARGV[j+3]))
    written = written + 1
  end
end
redis.call('HINCRBYFLOAT', KEYS[3], 'device_seconds', ARGV[4])
redis.call('EXPIRE', KEYS[4], ttl)
-- small results (as stored: state, newline, body) ride along with the event, so the daemon can
-- answer a waiting client without a read
local ev = {'XADD', KEYS[2], 'MAXLEN', '~', '""" + str(EVENTS_MAXLEN) + """', '*', 'e', ARGV[2]}
for i = 5, #KEYS, 2 do
  local j = 6 + (i - 5) * 2
  if #ARGV[j + 1] <= """ + str(INLINE_RESULT_BYTES) + """ then
    ev[#ev + 1] = KEYS[i]              -- the task's key: its last part is the task id
    ev[#ev + 1] = ARGV[j] .. '\\n' .. ARGV[j + 1]
  end
end
redis.call(unpack(ev))
return written
"""


TASK_FIELDS = ("id", "session", "kind", "template", "bindings", "shots", "seq", "submitted", "attempts", "state",
               "method")

# Daemon side: accept new tasks and dispatch batches in one atomic call (the hot path: one round trip).
COMMIT_LUA = """
-- ARGV: nnew, nbatch, idempotency ttl (0: no key), the ids json, the leader's fence ('' : none)
-- KEYS end with the idempotency key (if any), then the leader lease (if fenced)
local nnew, nbatch = tonumber(ARGV[1]), tonumber(ARGV[2])
local names = {""" + ", ".join(f"'{f}'" for f in TASK_FIELDS) + """, 'observables'}
local k, a = 1, 6
local last = #KEYS
if ARGV[5] ~= '' then
  -- a daemon that lost the lease (paused past its expiry) writes nothing: the new leader owns the state
  if redis.call('GET', KEYS[last]) ~= ARGV[5] then return redis.error_reply('FENCED the leader lease is not ours') end
  last = last - 1
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[last], ARGV[4], 'EX', tonumber(ARGV[3]))
end
if nnew > 0 then
  local pending = KEYS[1]
  k = 2
  for _ = 1, nnew do
    local h = {}
    for f = 1, #names do h[#h + 1] = names[f]; h[#h + 1] = ARGV[a + f - 1] end
    redis.call('HSET', KEYS[k], unpack(h))
    redis.call('SET', KEYS[k + 1], ARGV[a + #names])
    redis.call('RPUSH', pending, ARGV[a])
    k, a = k + 2, a + #names + 1
  end
end
for _ = 1, nbatch do
  local ntasks, bid, entry, created = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local pending, bkey, inbox = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  a, k = a + 4, k + 3
  for _ = 1, ntasks do
    redis.call('LREM', pending, 1, ARGV[a])
    redis.call('HSET', KEYS[k], 'state', 'SCHEDULED', 'batch', bid)
    a, k = a + 1, k + 1
  end
  redis.call('HSET', bkey, 'created', created)
  -- the inbox entry is the batch itself, so a worker learns its tasks in the same round trip
  redis.call('LPUSH', inbox, entry)
end
return 1
"""


# Daemon side: take a batch back from a device's inbox (late binding, drain) or from a hung worker's
# processing list, and put its live tasks back at the head of their session's queue, in order.
# Atomic against the worker's BLMOVE and COMPLETE: exactly one of them gets the entry.
RECALL_LUA = """
-- KEYS: list, pending, batch, sessions set, leader lease, then one task key per task id
-- ARGV: entry, sid, count as an attempt (0/1), the leader's fence ('': none), then the task ids in order
if ARGV[4] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[4] then
  return redis.error_reply('FENCED the leader lease is not ours')
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local open = redis.call('SISMEMBER', KEYS[4], ARGV[2]) == 1
for j = #ARGV, 5, -1 do
  local tkey = KEYS[j + 1]
  local st = redis.call('HGET', tkey, 'state')
  if st == 'SCHEDULED' or st == 'RUNNING' then
    if open then
      redis.call('HSET', tkey, 'state', 'PENDING', 'batch', '')
      if ARGV[3] == '1' then redis.call('HINCRBY', tkey, 'attempts', 1) end
      redis.call('LPUSH', KEYS[2], ARGV[j])
    else
      redis.call('HSET', tkey, 'state', 'CANCELLED')
    end
  end
end
redis.call('DEL', KEYS[3])
return 1
"""


# Worker side: after taking one batch, take waiting batches (of any session) with the same merge key,
# oldest first, within a bindings budget, for one device call (cross-session batching). Atomic against
# the daemon's RECALL: each entry is taken by exactly one of them.
TAKE_MATCHING_LUA = """
-- KEYS: inbox, processing; ARGV: merge key, max batches, bindings budget
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local taken, n, budget = {}, tonumber(ARGV[2]), tonumber(ARGV[3])
for i = #entries, 1, -1 do
  if #taken >= n then break end
  local ok, b = pcall(cjson.decode, entries[i])
  if ok and b['merge'] == ARGV[1] and (b['bindings'] or 0) <= budget then
    redis.call('LREM', KEYS[1], 1, entries[i])
    redis.call('LPUSH', KEYS[2], entries[i])
    budget = budget - (b['bindings'] or 0)
    taken[#taken + 1] = entries[i]
  end
end
return taken
"""


# The leader lease: taken only when free, with a fencing token that grows with every new leader.
ACQUIRE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local v = redis.call('INCR', KEYS[2]) .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], v, 'PX', tonumber(ARGV[2]))
return v
"""
# Renew our lease (ttl > 0) or give it up (ttl 0); 0 when it is no longer ours.
RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2])) else redis.call('DEL', KEYS[1]) end
return 1
"""

# A device's worker lease: taken when free, or from a holder the caller has seen dead (ARGV[3]);
# else the holder's token. A device has one worker: a second (an orphan of a killed daemon, a worker
# started twice) would take its batches and beat in its name.
CLAIM_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and cur ~= ARGV[3] then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
"""
# A heartbeat counts only from the lease's holder, and renews the lease; a lease gone meanwhile (it
# lapsed in a store outage or a failover longer than its TTL) is nobody's and is taken back.
BEAT_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
redis.call('SET', KEYS[2], ARGV[3], 'PX', tonumber(ARGV[2]))
return 1
"""


class HotScript:
    """A Lua script on a connection of its own, called without redis-py's client layers (pool, retry,
    observability hooks): on the daemon's per-request path they cost more than Redis itself. Calls must
    not overlap (the scheduler serializes commits)."""

    def __init__(self, pool, script: str):
        self.pool, self.script = pool, script
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self.conn: Any = None

    async def __call__(self, keys: list, args: list, *, wait: tuple[int, int] | None = None):
        """wait=(replicas, timeout_ms): then WAIT on the same connection (WAIT counts the replicas that
        have this connection's writes) and raise ReplicationTimeout if fewer acknowledged in time."""
        if self.conn is None:
            self.conn = self.pool.make_connection()
            await self.conn.connect()
        try:
            try:
                await self.conn.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
                out = await self.conn.read_response()
            except NoScriptError:
                await self.conn.send_command("SCRIPT", "LOAD", self.script)
                await self.conn.read_response()
                await self.conn.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
                out = await self.conn.read_response()
            if wait is not None:
                await self.conn.send_command("WAIT", *wait)
                _check_acked(int(await self.conn.read_response()), wait)
            return out
        except ReplicationTimeout:
            raise                             # the connection is fine
        except BaseException:
            await self.conn.disconnect()      # a broken or half-read connection is never reused
            self.conn = None
            raise

    async def wait_again(self, wait: tuple[int, int]) -> None:
        """WAIT for every write made so far on this connection (a retry of a write that timed out).
        ConnectionError if that connection is gone (a failover broke it): the write may not be on
        the current primary, so the caller must read it back from there, not wait for it."""
        if self.conn is None:
            raise RedisConnectionError("the connection that made the unacknowledged write is gone")
        try:
            await self.conn.send_command("WAIT", *wait)
            _check_acked(int(await self.conn.read_response()), wait)
        except ReplicationTimeout:
            raise
        except BaseException:
            await self.conn.disconnect()
            self.conn = None
            raise

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.disconnect()


class Store:
    """Async repository used by the daemon."""

    def __init__(self, redis, *, result_ttl_s: int = 86_400, wait_replicas: int = 0, wait_timeout_ms: int = 100):
        self.r = redis
        self.ttl = result_ttl_s
        # acknowledged only once this many replicas have it (async replication loses the last writes of
        # a primary that dies; a promoted replica that has them loses nothing acknowledged)
        self.wait = (wait_replicas, wait_timeout_ms) if wait_replicas > 0 else None
        self._commit = HotScript(redis.connection_pool, COMMIT_LUA)
        self._recall = redis.register_script(RECALL_LUA)
        self._acquire = redis.register_script(ACQUIRE_LUA)
        self._renew = redis.register_script(RENEW_LUA)
        self.fence = ""                       # the leader lease's value while this daemon holds it
        self.on_fenced: Callable[[], None] | None = None

    async def close(self) -> None:
        await self._commit.close()

    # sessions ---------------------------------------------------------------------------------------
    async def create_session(self, s: Session) -> None:
        if self.wait is None:
            async with self.r.pipeline(transaction=True) as p:
                p.hset(keys.session(s.id), mapping=s.to_redis())
                p.sadd(keys.SESSIONS, s.id)
                await p.execute()
            return
        # MULTI/EXEC then WAIT in one round trip on one connection (WAIT counts that connection's writes)
        async with self.r.pipeline(transaction=False) as p:
            p.execute_command("MULTI")
            p.hset(keys.session(s.id), mapping=s.to_redis())
            p.sadd(keys.SESSIONS, s.id)
            p.execute_command("EXEC")
            p.execute_command("WAIT", *self.wait)
            acked = (await p.execute())[-1]
        try:
            _check_acked(int(acked), self.wait)
        except ReplicationTimeout:
            # not acknowledged: the client opens another, so do not leave this one open (best effort)
            async with self.r.pipeline(transaction=True) as p:
                p.srem(keys.SESSIONS, s.id)
                p.delete(keys.session(s.id))
                await p.execute()
            raise

    async def close_session(self, sid: str, cancelled: list[str]) -> Usage:
        now = time.time()

        def build(p):
            p.hset(keys.session(sid), mapping={"state": SessionState.CLOSED.value, "closed": now})
            p.srem(keys.SESSIONS, sid)
            p.delete(keys.session_pending(sid))
            for tid in cancelled:
                p.hset(keys.task(tid), mapping={"state": TaskState.CANCELLED.value, "finished": now})
                p.expire(keys.task(tid), self.ttl)
                p.delete(keys.task_params(tid))
            for k in (keys.session(sid), keys.session_usage(sid)):
                p.expire(k, self.ttl)
            p.hgetall(keys.session_usage(sid))
        res = await self._write(build)
        return Usage.from_redis(_str(res[-1]))

    async def record_accounting(self, record: dict) -> None:
        await self.r.xadd(keys.ACCOUNTING, {"e": json.dumps(record)}, maxlen=1_000_000, approximate=True)

    async def accounting(self, since: float, limit: int, *, newest_first: bool = False,
                         match=lambda record: True, page: int = 1000) -> list[dict]:
        """Up to `limit` usage records of sessions closed since `since` (Unix time) that `match`, oldest
        (or newest) first. The ledger is read a page at a time, so a filter never hides older matches."""
        lo = f"{int(since * 1000)}-0" if since > 0 else "-"
        hi = "+"
        out: list[dict] = []
        while len(out) < limit:
            if newest_first:
                rows = await self.r.xrevrange(keys.ACCOUNTING, max=hi, min=lo, count=page)
            else:
                rows = await self.r.xrange(keys.ACCOUNTING, min=lo, max=hi, count=page)
            for _, fields in rows:
                record = json.loads(fields[b"e"])
                if match(record):
                    out.append(record)
                    if len(out) == limit:
                        break
            if len(rows) < page:
                break
            last = _s(rows[-1][0])
            if newest_first:
                hi = "(" + last
            else:
                lo = "(" + last
        return out

    async def session_usage(self, sid: str) -> Usage:
        return Usage.from_redis(_str(await self.r.hgetall(keys.session_usage(sid))))

    async def get_session(self, sid: str) -> Session | None:
        h = _str(await self.r.hgetall(keys.session(sid)))
        return Session.from_redis(h) if h else None

    # templates --------------------------------------------------------------------------------------
    async def put_template(self, digest: str, qpy: bytes, info: dict, ttl_s: int) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.hset(keys.template(digest), mapping={"qpy": qpy, "info": json.dumps(info)})
            p.expire(keys.template(digest), ttl_s)
            await p.execute()

    async def template_info(self, digest: str, ttl_s: int) -> dict | None:
        """The template's info, keeping it alive for another ttl_s; None once it has expired."""
        async with self.r.pipeline(transaction=False) as p:
            p.hget(keys.template(digest), "info")
            p.expire(keys.template(digest), ttl_s)
            raw, _ = await p.execute()
        return json.loads(raw) if raw else None

    # tasks ------------------------------------------------------------------------------------------
    async def commit(self, sid: str | None, new: list[tuple[Task, str, bytes]], batches: list[Batch],
                     idempotency_key: str | None = None) -> None:
        """New tasks of one session, then batches for device inboxes: one atomic call, one round trip.
        Tasks are durable (and acknowledged) only once this returns; with an idempotency key, so is the
        answer a retry of the same submission gets."""
        keys_: list[str] = []
        args: list = [len(new), len(batches), 0, "", self.fence]
        if idempotency_key and new:
            args[2:4] = [self.ttl, json.dumps([t.id for t, _, _ in new])]
        if new:
            assert sid is not None
            keys_.append(keys.session_pending(sid))
            for t, observables, params in new:
                keys_ += [keys.task(t.id), keys.task_params(t.id)]
                h = t.to_redis()
                args += [*(h[f] for f in TASK_FIELDS), observables, params]
        for b in batches:
            keys_ += [keys.session_pending(b.session), keys.batch(b.id), keys.device_inbox(b.device)]
            keys_ += [keys.task(tid) for tid in b.tasks]
            args += [len(b.tasks), b.id, b.entry(), b.created, *b.tasks]
        if idempotency_key and new:
            assert sid is not None
            keys_.append(keys.session_submit(sid, idempotency_key))
        if self.fence:
            keys_.append(keys.LEADER)
        try:
            await self._commit(keys_, args, wait=self.wait if new else None)
        except ResponseError as e:
            raise self._fenced(e) from None

    async def _write(self, build: Callable[[Any], None]) -> list:
        """Run the commands `build(pipeline)` queues as one MULTI/EXEC, and while this daemon leads
        (a fence is set) only if the leader lease is still ours: WATCHed, so a lease taken over
        between the check and EXEC aborts it. A paused ex-leader that wakes up writes nothing."""
        if not self.fence:
            async with self.r.pipeline(transaction=True) as p:
                build(p)
                return await p.execute()
        for _ in range(8):              # our own lease renewals also touch the key: check again
            async with self.r.pipeline(transaction=True) as p:
                try:
                    await p.watch(keys.LEADER)
                    if _s(await p.get(keys.LEADER)) != self.fence:
                        raise self._fenced(ResponseError("FENCED the leader lease is not ours"))
                    p.multi()
                    build(p)
                    return await p.execute()
                except WatchError:
                    continue
        raise self._fenced(ResponseError("FENCED the leader lease kept changing"))

    def _fenced(self, e: ResponseError) -> Exception:
        """A FENCED refusal: this daemon is no longer the leader (it stops); any other error as it was."""
        if not str(e).startswith("FENCED"):
            return e
        if self.on_fenced is not None:
            self.on_fenced()
        return Fenced("daemon: no longer the leader (another daemon holds the lease); retry on the leader",
                      field="daemon")

    async def wait_replicated(self) -> None:
        """Raise ReplicationTimeout unless the commits so far have reached redis.wait_replicas replicas."""
        if self.wait is not None:
            await self._commit.wait_again(self.wait)

    async def last_event_id(self) -> str:
        last = await self.r.xrevrange(keys.EVENTS, count=1)
        return _s(last[0][0]) if last else "0-0"

    async def read_events(self, conn, after: str, *, block_ms: int = 1000,
                          count: int = 500) -> list[tuple[str, dict | None, dict[str, bytes]]]:
        """Completion events after `after`, as (id, event, inline results by task id); the event is None
        when its body does not parse. `conn` is a connection of its own (XREAD blocks)."""
        resp = await conn.xread({keys.EVENTS: after}, block=block_ms, count=count)
        return [(_s(eid), *parse_event(fields)) for _, entries in resp or () for eid, fields in entries]

    async def submitted_ids(self, sid: str, idempotency_key: str) -> list[str] | None:
        """The task ids an earlier submission with this key was answered with, if any."""
        raw = await self.r.get(keys.session_submit(sid, idempotency_key))
        return json.loads(raw) if raw else None

    async def recall(self, batch: Batch, device: str, source: str, *, attempt: bool = False) -> bool:
        """Take the batch back from the device's "inbox" or "processing" list and requeue its live tasks
        at the head of their session's queue (counting a run attempt if asked). False: the entry was no
        longer there (a worker took it, or it finished)."""
        lst = keys.device_inbox(device) if source == "inbox" else keys.device_processing(device)
        keys_ = [lst, keys.session_pending(batch.session), keys.batch(batch.id), keys.SESSIONS, keys.LEADER,
                 *(keys.task(t) for t in batch.tasks)]
        try:
            return bool(await self._recall(keys=keys_, args=[batch.entry(), batch.session, int(attempt), self.fence,
                                                             *batch.tasks]))
        except ResponseError as e:
            raise self._fenced(e) from None

    # the leader lease -----------------------------------------------------------------------------
    async def acquire_lease(self, holder: str, ttl_ms: int) -> str | None:
        """The lease if no daemon holds it, with a new fencing token (epoch): 'EPOCH HOLDER'; else None."""
        return _s(await self._acquire(keys=[keys.LEADER, keys.LEADER_EPOCH], args=[holder, ttl_ms]))

    async def renew_lease(self, value: str, ttl_ms: int) -> bool:
        return bool(await self._renew(keys=[keys.LEADER], args=[value, ttl_ms]))

    async def lease_holder(self) -> str | None:
        return _s(await self.r.get(keys.LEADER))

    async def release_lease(self, value: str) -> None:
        await self._renew(keys=[keys.LEADER], args=[value, 0])

    async def known_devices(self, configured: list[str]) -> set[str]:
        """The devices an earlier daemon ran that the config no longer has; records the current ones."""
        before = {_s(x) for x in await self.r.smembers(keys.DEVICES)}
        if configured:
            await self.r.sadd(keys.DEVICES, *configured)
        return before - set(configured)

    async def forget_device(self, device: str) -> None:
        await self.r.srem(keys.DEVICES, device)

    async def device_batches(self, device: str) -> tuple[list[Batch], list[Batch]]:
        """A device's (processing, inbox) batches, oldest first."""
        async with self.r.pipeline(transaction=False) as p:
            p.lrange(keys.device_processing(device), 0, -1)
            p.lrange(keys.device_inbox(device), 0, -1)
            proc, inbox = await p.execute()
        return ([Batch.from_entry(x) for x in reversed(proc)], [Batch.from_entry(x) for x in reversed(inbox)])

    async def fail_tasks(self, tids: list[str], message: str) -> None:
        """Answer tasks that can never run with an error (written once, like a worker's result)."""
        body = result_entry(TaskState.FAILED.value, json.dumps({"error": {"code": "task_failed", "message": message}}))

        def build(p):
            for tid in tids:
                p.lrem(keys.session_pending(tid.split(".", 1)[0]), 1, tid)
                p.set(keys.task_result(tid), body, ex=self.ttl, nx=True)
                p.hset(keys.task(tid), mapping={"state": TaskState.FAILED.value, "finished": time.time()})
                p.expire(keys.task(tid), self.ttl)
        await self._write(build)

    async def cancel_task(self, tid: str, sid: str) -> None:
        def build(p):
            p.hset(keys.task(tid), mapping={"state": TaskState.CANCELLED.value, "finished": time.time()})
            p.lrem(keys.session_pending(sid), 1, tid)
            p.expire(keys.task(tid), self.ttl)
        await self._write(build)

    async def task_fields(self, tid: str, *fields: str) -> list:
        return [_s(v) for v in await self.r.hmget(keys.task(tid), *fields)]

    async def results(self, tids: list[str]) -> list[tuple[str, memoryview] | None]:
        """Each task's (state, body) if it has a result: see split_result."""
        raw = await self.r.mget([keys.task_result(t) for t in tids]) if tids else []
        return [None if r is None else split_result(r) for r in raw]

    async def result_sizes(self, tids: list[str]) -> list[int]:
        async with self.r.pipeline(transaction=False) as p:
            for t in tids:
                p.strlen(keys.task_result(t))
            return await p.execute()

    async def heartbeats(self, devices: list[str]) -> list[dict | None]:
        raw = await self.r.mget([keys.device_heartbeat(d) for d in devices]) if devices else []
        return [json.loads(x) if x else None for x in raw]

    async def save_cost_model(self, per_binding: dict[tuple[str, str], float]) -> None:
        def build(p):
            for (device, kind), seconds in per_binding.items():
                p.hset(keys.device_model(device), kind, seconds)
        await self._write(build)

    async def load_cost_model(self, devices: list[str]) -> dict[tuple[str, str], float]:
        async with self.r.pipeline(transaction=False) as p:
            for d in devices:
                p.hgetall(keys.device_model(d))
            res = await p.execute()
        return {(d, _s(k)): float(v) for d, h in zip(devices, res) for k, v in h.items()}

    async def save_usage(self, entries: dict[str, dict[str, tuple[float, float]]]) -> None:
        """Decayed usage entries (kind -> name -> (device-seconds, as of Unix time)), see keys.usage."""
        def build(p):
            for kind, names in entries.items():
                if names:
                    p.hset(keys.usage(kind), mapping={n: f"{v!r} {t!r}" for n, (v, t) in names.items()})
        await self._write(build)

    async def load_usage(self, kinds=("user", "account", "assoc")) -> dict[str, dict[str, tuple[float, float]]]:
        async with self.r.pipeline(transaction=False) as p:
            for kind in kinds:
                p.hgetall(keys.usage(kind))
            res = await p.execute()
        return {kind: _pairs(h) for kind, h in zip(kinds, res)}

    async def save_quota_usage(self, entries: dict[str, tuple[float, float]]) -> None:
        """Quota usage (key -> (device-seconds, window start)), see keys.QUOTA_USED."""
        if entries:
            used = {k: f"{v!r} {w!r}" for k, (v, w) in entries.items()}
            await self._write(lambda p: p.hset(keys.QUOTA_USED, mapping=used))

    async def load_quota_usage(self) -> dict[str, tuple[float, float]]:
        return _pairs(await self.r.hgetall(keys.QUOTA_USED))

    async def update_session(self, sid: str, fields: dict) -> None:
        """Change an open session's class, weight or hold (the admin's `qsched session update`)."""
        await self._write(lambda p: p.hset(keys.session(sid), mapping=fields))

    async def sessions_device_seconds(self, sids: list[str]) -> dict[str, float]:
        """Device-seconds each session has used (its usage hash, charged by the workers)."""
        async with self.r.pipeline(transaction=False) as p:
            for sid in sids:
                p.hget(keys.session_usage(sid), "device_seconds")
            res = await p.execute()
        return {sid: float(v or 0) for sid, v in zip(sids, res)}

    async def running_batch_ids(self, device: str) -> set[str]:
        """Batches a device's worker has taken (its processing list: one, or a dead predecessor's too)."""
        return {Batch.from_entry(e).id for e in await self.r.lrange(keys.device_processing(device), 0, -1)}

    async def running_counts(self, devices: list[str]) -> list[int]:
        async with self.r.pipeline(transaction=False) as p:
            for d in devices:
                p.llen(keys.device_processing(d))
            return await p.execute()

    async def device_states(self, devices: list[str]) -> dict[str, dict]:
        return await self._device_hashes(keys.device_state, devices)

    async def vendor_states(self, devices: list[str]) -> dict[str, dict]:
        """What remote devices' vendors say (their workers write it: keys.device_vendor)."""
        return await self._device_hashes(keys.device_vendor, devices)

    async def _device_hashes(self, key, devices: list[str]) -> dict[str, dict]:
        async with self.r.pipeline(transaction=False) as p:
            for d in devices:
                p.hgetall(key(d))
            res = await p.execute()
        return {d: _str(h) for d, h in zip(devices, res) if h}

    async def set_device_state(self, device: str, state: str, reason: str, since: float) -> None:
        await self._write(lambda p: p.hset(keys.device_state(device),
                                           mapping={"state": state, "reason": reason, "since": since}))

    async def windows(self) -> list[Window]:
        return [Window.from_json(json.loads(v)) for v in (await self.r.hgetall(keys.MAINTENANCE)).values()]

    async def save_window(self, w: Window) -> None:
        await self._write(lambda p: p.hset(keys.MAINTENANCE, w.id, json.dumps(w.to_json())))

    async def forget_windows(self, ids: list[str]) -> None:
        if ids:
            await self._write(lambda p: p.hdel(keys.MAINTENANCE, *ids))

    async def note_worker_exit(self, device: str, why: str) -> None:
        """Record a worker's death on the batches it held, for the error their tasks fail with."""
        for b in await self.running_batch_ids(device):
            await self.r.hset(keys.batch(b), "last_error", why)

    async def secret(self) -> bytes:
        """The daemon's HMAC key for session tokens: made once, shared by restarts and replicas."""
        await self.r.set(keys.SECRET, secrets.token_bytes(32), nx=True)
        return await self.r.get(keys.SECRET)

    # recovery ---------------------------------------------------------------------------------------
    async def load_state(self, devices: list[str]):
        """Everything the scheduling index is rebuilt from after a restart."""
        sids = sorted(_s(x) for x in await self.r.smembers(keys.SESSIONS))
        async with self.r.pipeline(transaction=False) as p:
            for sid in sids:
                p.hgetall(keys.session(sid))
                p.lrange(keys.session_pending(sid), 0, -1)
            res = await p.execute()
        sessions, pending = [], {}
        for sid, h, lst in zip(sids, res[0::2], res[1::2]):
            if h:
                sessions.append(Session.from_redis(_str(h)))
                pending[sid] = [_s(x) for x in lst]
        outstanding: dict[str, list[Batch]] = {}
        async with self.r.pipeline(transaction=False) as p:
            for d in devices:
                p.lrange(keys.device_processing(d), 0, -1)
                p.lrange(keys.device_inbox(d), 0, -1)
            res = await p.execute()
        for d, proc, inbox in zip(devices, res[0::2], res[1::2]):
            # processing is LPUSHed by BLMOVE and inbox by the daemon: oldest is at the right of each
            outstanding[d] = [Batch.from_entry(x) for x in [*reversed(proc), *reversed(inbox)]]
        tids = [t for lst in pending.values() for t in lst]
        tids += [t for lst in outstanding.values() for b in lst for t in b.tasks]
        async with self.r.pipeline(transaction=False) as p:
            for tid in tids:
                p.hgetall(keys.task(tid))
            res = await p.execute()
        tasks = [Task.from_redis(_str(h)) for h in res if h]
        return sessions, pending, tasks, outstanding


class DeviceQueue:
    """The worker's side of the repository, for one device (sync: a worker does one thing at a time).
    The daemon fills the device's inbox; this takes from it, reads payloads and templates, and writes
    results once."""

    def __init__(self, redis, device: str, *, result_ttl_s: int = 86_400):
        self.r = redis
        self.device = device
        self.ttl = result_ttl_s
        self.inbox = keys.device_inbox(device)
        self.processing = keys.device_processing(device)
        self._fetch = redis.register_script(FETCH_LUA)
        self._complete = redis.register_script(COMPLETE_LUA)
        self._take_matching = redis.register_script(TAKE_MATCHING_LUA)
        self._claim = redis.register_script(CLAIM_LUA)
        self._beat = redis.register_script(BEAT_LUA)
        self._release = redis.register_script(RENEW_LUA)
        self.lease = keys.device_worker(device)

    def take(self, timeout_s: float):
        """The next batch's entry, moved atomically to the processing list; None after the timeout."""
        return self.r.blmove(self.inbox, self.processing, timeout_s, "RIGHT", "LEFT")

    def take_matching(self, merge: str, max_batches: int, max_bindings: int) -> list:
        """Waiting entries with this merge key (any session), oldest first, moved to the processing list."""
        return self._take_matching(keys=[self.inbox, self.processing], args=[merge, max_batches, max_bindings])

    def held(self) -> list:
        """Entries a predecessor left in the processing list, oldest first."""
        return list(reversed(self.r.lrange(self.processing, 0, -1)))

    def count_death(self, bid: str) -> tuple[int, str]:
        """One more death of the worker running this batch; returns the count and the last recorded error."""
        deaths = self.r.hincrby(keys.batch(bid), "deaths", 1)
        return deaths, _s(self.r.hget(keys.batch(bid), "last_error") or b"")

    def template_qpy(self, digest: str) -> bytes | None:
        return self.r.hget(keys.template(digest), "qpy") or None

    def payloads(self, tids: list[str], *, any_state: bool = False) -> list[dict]:
        """Payloads of tasks still to run (not cancelled or answered meanwhile), in one round trip.
        any_state: also those (a remote job's results are split over all the tasks it was sent with)."""
        res = self._fetch(keys=[k for tid in tids for k in (keys.task(tid), keys.task_params(tid))])
        out = []
        for fields_raw, params in zip(res[0::2], res[1::2]):
            values = [None if v is False else v for v in json.loads(fields_raw)]
            d = dict(zip(INLINE_FIELDS[:-1], values[:-1]))
            if d["id"] is not None and (any_state and params or values[-1] in (TaskState.SCHEDULED.value,
                                                                               TaskState.RUNNING.value)):
                out.append(d | {"params": params})
        return out

    def complete(self, entry, batch: Batch, event: str, exec_s: float, finished: float,
                 rows: list[tuple[str, str, str, int, int]]) -> int:
        """Write each task's (id, state, body, circuits, shots) once, charge usage, announce the batch.
        -1: the entry had left the processing list (the batch was taken back), nothing was written."""
        tkeys: list[str] = []
        args: list = []
        for tid, state, body, circuits, shots in rows:
            tkeys += [keys.task(tid), keys.task_result(tid)]
            args += [state, body, circuits, shots]
        return self._complete(keys=[self.processing, keys.EVENTS, keys.session_usage(batch.session),
                                    keys.batch(batch.id), *tkeys],
                              args=[entry, event, self.ttl, exec_s, finished, *args])

    def claim(self, token: str, ttl_s: float, *, dead: str = "") -> str | None:
        """Take the device's worker lease (or take it over from `dead`, a holder seen gone): None when
        ours, else the live holder's token."""
        out = self._claim(keys=[self.lease], args=[token, int(ttl_s * 1000), dead])
        return None if out == 1 else _s(out)

    def beat(self, info: dict, ttl_s: float, token: str) -> bool:
        """Heartbeat and renew the lease; False when the lease is no longer `token`'s (nothing written)."""
        return bool(self._beat(keys=[self.lease, keys.device_heartbeat(self.device)],
                               args=[token, int(ttl_s * 1000), json.dumps(info)]))

    def release(self, token: str) -> None:
        """Give the lease up and clear the heartbeat, if they are still ours."""
        if self._release(keys=[self.lease], args=[token, 0]):
            self.r.delete(keys.device_heartbeat(self.device))


def parse_event(fields: dict) -> tuple[dict | None, dict[str, bytes]]:
    """A completion event's fields (COMPLETE_LUA): the event, and the small results that rode along
    keyed by their task's key, whose last part is the task id."""
    inline = {_s(k).rsplit(":", 1)[-1]: v for k, v in fields.items() if k != b"e"}
    try:
        return json.loads(fields[b"e"]), inline
    except (KeyError, ValueError):
        return None, inline


def _pairs(h: dict) -> dict[str, tuple[float, float]]:
    """A hash of name -> "number number" (usage as of a time, quota use in a window), as floats."""
    out = {}
    for n, raw in h.items():
        try:
            a, b = _s(raw).split()
            out[_s(n)] = (float(a), float(b))
        except ValueError:
            continue             # not ours; never fatal
    return out


def _check_acked(acked: int, wait: tuple[int, int]) -> None:
    if acked < wait[0]:
        raise ReplicationTimeout(f"store: {acked} of {wait[0]} replicas acknowledged the write within {wait[1]} ms; "
                                 "retry", field="redis.wait_replicas")


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def _str(h: dict) -> dict:
    return {_s(k): _s(v) for k, v in h.items()}


class RemoteJournal:
    """The worker's write-ahead journal of remote (vendor) jobs, for one device (sync, like DeviceQueue).
    A job's record and its tasks' pointers are written before the job is submitted, the vendor's job id
    as soon as it is known: a worker that restarts (or gets the tasks again after the daemon requeued
    them) finds the record and resumes polling the same remote job instead of submitting it again."""

    RECORD_TTL_S = 7 * 86_400

    def __init__(self, redis, device: str):
        self.r = redis
        self.device = device

    def claims(self, tids: list[str]) -> dict[str, str]:
        """task id -> token of the remote job already answering it."""
        raw = self.r.mget([keys.task_remote(t) for t in tids]) if tids else []
        return {t: _s(v) for t, v in zip(tids, raw) if v}

    def begin(self, token: str, tids: list[str], **fields) -> None:
        """Write-ahead: the record (state submitting) and every task's pointer, atomically."""
        with self.r.pipeline(transaction=True) as p:
            p.hset(keys.remote_job(token), mapping={"device": self.device, "state": "submitting",
                                                    "tasks": json.dumps(tids), "created": time.time(),
                                                    **{k: _scalar(v) for k, v in fields.items()}})
            p.expire(keys.remote_job(token), self.RECORD_TTL_S)
            p.sadd(keys.device_remote_jobs(self.device), token)
            for t in tids:
                p.set(keys.task_remote(t), token, ex=self.RECORD_TTL_S)
            p.execute()

    def get(self, token: str) -> dict:
        h = _str(self.r.hgetall(keys.remote_job(token)))
        if "tasks" in h:
            h["tasks"] = json.loads(h["tasks"])
        return h

    def update(self, token: str, **fields) -> None:
        self.r.hset(keys.remote_job(token), mapping={k: _scalar(v) for k, v in fields.items()})

    def in_flight(self) -> list[str]:
        return sorted(_s(t) for t in self.r.smembers(keys.device_remote_jobs(self.device)))

    def ended(self, token: str) -> None:
        self.r.srem(keys.device_remote_jobs(self.device), token)

    def set_once(self, token: str, field: str, value) -> None:
        self.r.hsetnx(keys.remote_job(token), field, _scalar(value))

    def release(self, tids: list[str]) -> None:
        """The tasks were answered: a later batch holding them (there is none) would start afresh."""
        if tids:
            self.r.delete(*[keys.task_remote(t) for t in tids])

    def live(self, tids: list[str]) -> set[str]:
        """Tasks still wanted: not cancelled or answered, and their session still open (a closed
        session's running tasks are not waited for on the vendor's side)."""
        sids = sorted({t.split(".", 1)[0] for t in tids})
        with self.r.pipeline(transaction=False) as p:
            for t in tids:
                p.hget(keys.task(t), "state")
            for sid in sids:
                p.sismember(keys.SESSIONS, sid)
            res = p.execute()
        open_ = {sid for sid, ok in zip(sids, res[len(tids):]) if ok}
        return {t for t, st in zip(tids, res[:len(tids)])
                if _s(st) in (TaskState.SCHEDULED.value, TaskState.RUNNING.value) and t.split(".", 1)[0] in open_}

    def set_vendor(self, status: str, reason: str) -> None:
        self.r.hset(keys.device_vendor(self.device), mapping={"status": status, "reason": reason, "at": time.time()})


def _scalar(v):
    return json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v)
