"""The daemon: startup, serve, shutdown (as uvicorn's Server). Resources open in order and close in
reverse (embedded Redis, connections, the scheduling index, workers, background tasks, listeners).

Every background task is owned and supervised here: an exception is logged with its traceback,
counted in qsched_background_task_errors_total, and the task restarts after a capped backoff; a
background task never ends silently.

SIGTERM/SIGINT: stop accepting, take back batches no worker has started, wait for the running ones
(up to drain_timeout_s), then stop. A second SIGTERM/SIGINT stops at once. SIGHUP: reload the policy
(an invalid config keeps the old one)."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from .. import redisconn
from ..config import CONFIG_KEYS, Config, load_config
from ..errors import QschedError
from ..integration import SlurmIntegration
from ..metrics import Metrics
from ..policy import make_policy
from ..store import Store
from .answers import AnswerBudget
from .api import make_app
from .connections import FD_RESERVE, AcceptErrorLog, ConnectionLimiter, LimitedRunner, raise_fd_limit
from .gates import check, sd_notify, tls_context
from .leader import LeaderLease
from .parsing import TemplateParser
from .redis_server import EmbeddedRedis
from .scheduler import Scheduler
from .supervisor import WorkerSupervisor

log = logging.getLogger("qsched.daemon")

BACKOFF_MAX_S = 5.0


class Daemon:
    def __init__(self, config: Config, *, config_path: str | None = None, hooks: SlurmIntegration | None = None,
                 ready: Callable[[Scheduler], None] | None = None, known_types: set[str] | None = None):
        self.config = config
        self.config_path = config_path
        self.known_types = known_types      # the device types start parsed against: a reload uses them too
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task] = set()
        self.hooks = hooks
        self.ready = ready
        self.metrics = Metrics()
        self.scheduler: Scheduler | None = None
        self.supervisor: WorkerSupervisor | None = None
        self.embedded_redis: EmbeddedRedis | None = None
        self.limiter = ConnectionLimiter(0, 0)
        self.answers: AnswerBudget | None = None
        self.redis_url = ""
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task] = []
        self._stopping_tasks = False
        self._stop = asyncio.Event()
        self.lease: LeaderLease | None = None
        self._lease_task: asyncio.Task | None = None
        self.exit_code = 0
        self._force = asyncio.Event()
        # ours alone (NotifyAccess=main): children (Redis, workers, the parser) must not inherit it
        self._notify_socket = os.environ.pop("NOTIFY_SOCKET", None)

    # ---------------------------------------------------------------- phases
    async def startup(self) -> None:
        cfg = self.config
        if self.hooks is None:            # before anything is created: a refused config leaves nothing behind
            self.hooks = await asyncio.to_thread(check, cfg)      # may run sinfo and munge
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        asyncio.get_running_loop().set_exception_handler(AcceptErrorLog())
        fds = raise_fd_limit() - FD_RESERVE
        self.limiter = ConnectionLimiter(cfg.max_connections_per_peer, min(cfg.max_connections or fds, fds))
        self.limiter.on_refuse = lambda limit: self.metrics.connections_refused.labels(limit).inc()
        stack = self._stack
        url = cfg.redis_url
        embedded = None
        if not url:
            embedded = self.embedded_redis = await stack.enter_async_context(
                EmbeddedRedis(cfg.state_dir, cfg.redis_socket_group))
            url = embedded.url
        self.redis_url = url
        # a request waits for a free connection (up to 5 s, then 503) instead of failing when many arrive
        pool = redisconn.async_pool(url, max_connections=cfg.redis_max_connections, timeout=5)
        r = redisconn.async_client(url, pool=pool)
        stack.push_async_callback(r.aclose)
        stack.push_async_callback(pool.disconnect)
        await redisconn.check_store(r, url)
        # parse children start before the lease wait: a standby that takes over is ready sooner
        parser = TemplateParser(timeout_s=cfg.parse_timeout_s, memory_bytes=cfg.parse_memory_bytes)
        await parser.start()
        stack.push_async_callback(parser.close)
        r_events = redisconn.async_client(url, dedicated=True)   # XREAD blocks: a connection of its own
        stack.push_async_callback(r_events.aclose)
        store = Store(r, result_ttl_s=cfg.result_ttl_s, wait_replicas=cfg.redis_wait_replicas,
                      wait_timeout_ms=cfg.redis_wait_timeout_ms)
        stack.push_async_callback(store.close)
        if cfg.leader_lease_s > 0:
            if cfg.start_workers and any(d.start_worker for d in cfg.devices):
                log.warning("daemon.leader_lease_s with local workers: a leader and its standby would each run "
                            "a worker for those devices after a takeover; give them start_worker: false and run "
                            "`qsched worker` on the device hosts")
            self.lease = LeaderLease(store, cfg.leader_lease_s)
            sd_notify(self._notify_socket, "STATUS=standby: waiting for the leader lease")
            if await self.lease.acquire(self._stop) is None:
                return                        # stopped while a standby
            stack.push_async_callback(self.lease.release)
            store.on_fenced = lambda: self._step_down("a write was fenced")
        sch = self.scheduler = Scheduler(store, cfg, make_policy(cfg.policy), self.metrics, await store.secret(),
                                         on_worker_lost=self._worker_lost)
        await sch.recover()
        if cfg.start_workers and any(d.start_worker for d in cfg.devices):
            self.supervisor = await stack.enter_async_context(
                WorkerSupervisor(cfg, url, store, self.metrics, self.config_path))
        stack.push_async_callback(self._cancel_background)
        self.spawn("dispatcher", sch.run_dispatcher)
        self.spawn("events", lambda: sch.run_events(r_events))
        self.spawn("device-watch", sch.run_device_watch)
        if cfg.session_idle_timeout_s:
            self.spawn("session-expiry", sch.run_session_expiry)
        if self.lease is not None:
            self._lease_task = asyncio.create_task(self.lease.hold(self._step_down), name="leader-lease")
        if embedded is not None:
            self.spawn("embedded-redis", embedded.watch)
        for extra in self.hooks.background:
            self.spawn(getattr(extra, "__name__", "hook"), functools.partial(extra, sch))
        answers = self.answers = AnswerBudget(cfg.max_answer_bytes)       # one for both listeners
        await stack.enter_async_context(self._site(make_app(sch, hooks=self.hooks, parser=parser, answers=answers),
                                                   tcp=cfg.tcp, path=cfg.socket_path))
        # the admin socket (0600) is not capped: an admin must get in while users hold every connection
        await stack.enter_async_context(self._site(make_app(sch, admin=True, hooks=self.hooks, parser=parser,
                                                            answers=answers),
                                                   path=cfg.admin_socket_path, mode=0o600, limited=False))
        log.info("qsched daemon ready: tcp=%s socket=%s devices=%s policy=%s", cfg.tcp, cfg.socket_path,
                 ",".join(d.name for d in cfg.devices), cfg.policy.name)
        sd_notify(self._notify_socket, "READY=1")
        if self.ready:
            self.ready(sch)

    async def serve(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        sd_notify(self._notify_socket, "STOPPING=1")
        sch = self.scheduler
        if sch is not None:
            await self._drain(sch)
        await self._stack.aclose()
        log.info("qsched daemon stopped")

    async def run(self) -> None:
        """startup / serve / shutdown with the signal handlers a foreground daemon wants."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            await self.startup()
            await self.serve()
        finally:
            await self.shutdown()

    async def __aenter__(self) -> "Daemon":
        await self.startup()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.shutdown()

    # ---------------------------------------------------------------- control
    def request_stop(self) -> None:
        if self._stop.is_set():
            log.warning("second stop signal: stopping now without waiting for running batches")
            self._force.set()
        self._stop.set()

    def _step_down(self, why: str) -> None:
        """Lost the leader lease: stop at once, writing nothing more (the new leader owns the state); exit
        non-zero so that a service manager starts this daemon again, as a standby."""
        if self.exit_code:
            return
        log.error("leader lease lost (%s): stopping so the new leader alone serves", why)
        self.exit_code = 3
        if self.lease is not None:
            self.lease.value = None           # nothing to release
        if self.scheduler is not None:
            self.scheduler.accepting = False
        self._force.set()
        self._stop.set()

    def _on_sighup(self) -> None:
        # the handler runs in the event loop: the reload's file read and check (which may run sinfo and
        # munge) go to a thread, in a task; reloads run one at a time, in the order of the signals
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def _load_checked(self) -> Config:
        assert self.config_path is not None
        fresh = load_config(self.config_path, known_types=self.known_types)
        check(fresh)
        return fresh

    async def reload(self) -> QschedError | None:
        """SIGHUP: parse and check the config file as start does, then apply its policy. Returns why it was
        refused (the old policy stays), or None. Other sections are applied only by a restart: the log
        names those that changed."""
        if not self.config_path:
            log.warning("SIGHUP: the daemon runs on the built-in defaults (no config file): nothing to reload")
            return None
        async with self._reload_lock:
            try:
                fresh = await asyncio.to_thread(self._load_checked)
            except QschedError as e:
                log.error("SIGHUP: invalid policy or config kept out, the old policy stays: %s", e)
                return e
            self.config.policy = fresh.policy         # what runs, and what a standby takes over with
            if self.scheduler is not None:
                self.scheduler.set_policy(make_policy(fresh.policy))
            log.info("SIGHUP: policy reloaded (%s)", fresh.policy.name)
            changed = sorted(k for k in CONFIG_KEYS - {"policy"} if fresh.raw.get(k) != self.config.raw.get(k))
            if changed:
                log.warning("SIGHUP: changes to %s not applied (only policy: is reloaded; restart the daemon to "
                            "apply them)", ", ".join(changed))
            return None

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """Run a background task under supervision (see the module doc)."""
        task = asyncio.create_task(self._supervise(name, factory), name=name)
        self._tasks.append(task)
        return task

    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        backoff = 0.1
        while True:
            try:
                await factory()
                log.error("background task %s returned; restarting it", name)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping_tasks:
                    return        # redis-py can turn a cancelled read into a ConnectionError: it is ours
                log.exception("background task %s failed; restarting it in %.1f s", name, backoff)
            self.metrics.background_errors.labels(name).inc()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _cancel_background(self) -> None:
        self._stopping_tasks = True
        if self._lease_task is not None:
            self._lease_task.cancel()
        for t in self._tasks:
            t.cancel()
        if not self._tasks:
            return
        # a task cancelled inside a blocking Redis read (XREAD) can hang in redis-py's clean-up: do not
        # wait for it past a bound; closing its connection next ends the read
        _, stuck = await asyncio.wait(self._tasks, timeout=3.0)
        if stuck:
            log.warning("background tasks still stopping at shutdown: %s", ", ".join(t.get_name() for t in stuck))

    def _worker_lost(self, device: str, pid: int | None = None) -> None:
        if self.supervisor is not None:
            self.supervisor.lost(device, pid)

    async def _drain(self, sch: Scheduler) -> None:
        """Stop accepting; batches still in an inbox go back to their queues (the next daemon runs them);
        wait for the running ones, which end on their own, up to drain_timeout_s."""
        sch.accepting = False
        try:
            recalled = await sch.recall_waiting()
        except QschedError as e:
            log.warning("drain: could not take back waiting batches: %s", e)
            recalled = 0
        sch.release_waiters()
        running = sum(len(d.outstanding) for d in sch.devices.values())
        log.info("stopping: no new sessions or tasks; %d waiting batches requeued, %d running (timeout %.0f s)",
                 recalled, running, self.config.drain_timeout_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout_s
        while not sch.idle() and loop.time() < deadline and not self._force.is_set():
            await asyncio.sleep(0.05)
        if not sch.idle():
            log.warning("drain ended with %d batches still running: they stay in Redis for the next start",
                        sum(len(d.outstanding) for d in sch.devices.values()))

    def _tls(self) -> ssl.SSLContext | None:
        cfg = self.config
        if not cfg.tls_cert_file:
            host = (cfg.tcp or "").rpartition(":")[0]
            if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
                log.warning("daemon.tcp %s is plaintext: session tokens and MUNGE credentials cross the network "
                            "in clear (set daemon.tls)", cfg.tcp)
        return tls_context(cfg)

    @contextlib.asynccontextmanager
    async def _site(self, app: web.Application, *, tcp: str | None = None, path: Path | None = None,
                    mode: int = 0o666, limited: bool = True):
        # the drain answers long-polls at once; the shutdown timeout only bounds a handler that is stuck
        opts: dict = dict(access_log=None, handle_signals=False, shutdown_timeout=5.0,
                          keepalive_timeout=self.config.idle_timeout_s)     # idle and half-sent requests
        runner = LimitedRunner(app, self.limiter, **opts) if limited else web.AppRunner(app, **opts)
        await runner.setup()
        try:
            if tcp:
                host, _, port = tcp.rpartition(":")
                await web.TCPSite(runner, host, int(port), ssl_context=self._tls()).start()
            if path:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.unlink(missing_ok=True)
                await web.UnixSite(runner, str(path)).start()
                os.chmod(path, mode)
            yield runner
        finally:
            await runner.cleanup()
            if path:
                path.unlink(missing_ok=True)


def run(config: Config, *, config_path: str | None = None, ready=None, known_types: set[str] | None = None) -> None:
    d = Daemon(config, config_path=config_path, ready=ready, known_types=known_types)
    asyncio.run(d.run())
    if d.exit_code:
        raise SystemExit(d.exit_code)
