"""Daemon lifecycle: resources open in order and close in reverse (embedded Redis, connections, the
scheduling index, HTTP listeners, workers). SIGTERM/SIGINT: stop accepting, drain outstanding batches
within the timeout, then cancel. SIGHUP: reload the policy (an invalid one keeps the old)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

import redis.asyncio as aredis
from aiohttp import web

from ..config import Config, load_config
from ..errors import QschedError
from ..metrics import Metrics
from ..policy import make_policy
from ..store import Store
from .api import make_app
from .redis_server import EmbeddedRedis
from .scheduler import Scheduler
from .supervisor import WorkerSupervisor

log = logging.getLogger("qsched.daemon")


def slurm_hooks(config: Config) -> dict:
    """MUNGE identity, job checks and accounting, when the Slurm side is installed and configured."""
    try:
        from ..slurm import daemon_hooks
    except ImportError:
        return {}
    return daemon_hooks(config)


@contextlib.asynccontextmanager
async def _site(runner_app: web.Application, *, tcp: str | None = None, path: Path | None = None, mode: int = 0o666):
    runner = web.AppRunner(runner_app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        if tcp:
            host, _, port = tcp.rpartition(":")
            await web.TCPSite(runner, host, int(port)).start()
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


async def serve(config: Config, *, config_path: str | None = None, ready=None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    async with contextlib.AsyncExitStack() as stack:
        url = config.redis_url
        if not url:
            url = (await stack.enter_async_context(EmbeddedRedis(config.state_dir))).url
        r = aredis.Redis.from_url(url, max_connections=64)
        stack.push_async_callback(r.aclose)
        r_events = aredis.Redis.from_url(url, single_connection_client=True)   # XREAD blocks: its own
        stack.push_async_callback(r_events.aclose)
        store = Store(r, result_ttl_s=config.result_ttl_s)
        stack.push_async_callback(store.close)
        sch = Scheduler(store, config, make_policy(config.policy), metrics, await store.secret())
        await sch.recover()
        hooks = slurm_hooks(config)
        if config.start_workers:
            await stack.enter_async_context(WorkerSupervisor(config, url, r, metrics, config_path))
        loops = [asyncio.create_task(sch.run_dispatcher(), name="dispatcher"),
                 asyncio.create_task(sch.run_events(r_events), name="events"),
                 asyncio.create_task(sch.run_device_watch(), name="device-watch")]
        for extra in hooks.get("background", []):
            loops.append(asyncio.create_task(extra(sch), name=getattr(extra, "__name__", "hook")))

        async def cancel_loops():
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
        stack.push_async_callback(cancel_loops)

        await stack.enter_async_context(_site(make_app(sch, hooks=hooks), tcp=config.tcp, path=config.socket_path))
        await stack.enter_async_context(_site(make_app(sch, admin=True, hooks=hooks),
                                              path=config.admin_socket_path, mode=0o600))

        def reload_policy():
            try:
                fresh = load_config(config_path) if config_path else config
                sch.set_policy(make_policy(fresh.policy))
                log.info("SIGHUP: policy reloaded (%s)", fresh.policy.name)
            except QschedError as e:
                log.error("SIGHUP: invalid policy kept out, old one stays: %s", e)
        loop.add_signal_handler(signal.SIGHUP, reload_policy)

        log.info("qsched daemon ready: tcp=%s socket=%s devices=%s policy=%s", config.tcp, config.socket_path,
                 ",".join(d.name for d in config.devices), config.policy.name)
        if ready:
            ready(sch)
        await stop.wait()
        log.info("stopping: no new sessions or tasks; draining %d outstanding batches (timeout %.0f s)",
                 sum(len(d.outstanding) for d in sch.devices.values()), config.drain_timeout_s)
        sch.accepting = False
        deadline = loop.time() + config.drain_timeout_s
        while not sch.idle() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if not sch.idle():
            log.warning("drain timeout: %d batches still running stay in Redis for the next start",
                        sum(len(d.outstanding) for d in sch.devices.values()))
    log.info("qsched daemon stopped")


def run(config: Config, *, config_path: str | None = None, ready=None) -> None:
    asyncio.run(serve(config, config_path=config_path, ready=ready))
