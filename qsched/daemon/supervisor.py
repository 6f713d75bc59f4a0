"""Starts one worker process per local device, and restarts a worker that exits (with backoff).
A worker killed mid-batch leaves the batch in its processing list; its successor runs it again."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import psutil

log = logging.getLogger("qsched.supervisor")

STOP_GRACE_S = 5.0
_NOT_RUNNING = frozenset({psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE,
                          psutil.STATUS_DEAD})


class WorkerSupervisor:
    def __init__(self, config, redis_url: str, store, metrics, config_path: str | None):
        self.config = config
        self.redis_url = redis_url
        self.store = store
        self.metrics = metrics
        self.config_path = config_path
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    def _url_file(self) -> str:
        """The Redis URL may hold a password: it goes to the workers in a 0600 file, never in argv (ps
        shows argv to every local user) or the environment."""
        path = self.config.state_dir / "worker-redis-url"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.redis_url)
        return str(path)

    def _argv(self, device: str) -> list[str]:
        argv = [sys.executable, "-m", "qsched", "worker", "--device", device, "--redis-url-file", self._url_file(),
                "--parent-pid", str(os.getpid())]
        if self.config_path:
            argv += ["--config", self.config_path]
        return argv

    async def __aenter__(self):
        for d in self.config.devices:
            if not d.start_worker:
                continue              # its worker runs on another host and beats into the same store
            self._tasks.append(asyncio.create_task(self._watch(d.name), name=f"worker-{d.name}"))
        return self

    async def _watch(self, name: str) -> None:
        backoff = 0.5
        while not self._stopping:
            proc = await asyncio.create_subprocess_exec(*self._argv(name), stdin=asyncio.subprocess.DEVNULL)
            self.procs[name] = proc
            started = asyncio.get_running_loop().time()
            rc = await proc.wait()
            if asyncio.get_running_loop().time() - started > 60:
                backoff = 0.5              # it ran fine for a while: this is not a crash loop
            if self._stopping:
                return
            why = f"worker for device {name} exited with " + (
                f"signal {signal.Signals(-rc).name}" if rc < 0 else f"status {rc}")
            log.error("%s; restarting in %.1f s", why, backoff)
            self.metrics.worker_restarts.labels(name).inc()
            try:
                await self.store.note_worker_exit(name, why)
            except Exception as e:
                log.warning("could not record the worker's death on its batches: %s", e)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    def lost(self, name: str, pid: int | None = None) -> None:
        """The daemon saw the device's heartbeat stop: a worker that is stopped (SIGSTOP, a debugger) is
        killed, and its watch starts a successor. `pid`: whose heartbeat it was. A predecessor's (killed,
        or from before a restart: its key outlived it) says nothing of the worker starting now, which
        must not be killed for it."""
        proc = self.procs.get(name)
        if proc is None or proc.returncode is not None or self._stopping:
            return
        if pid is not None and proc.pid != pid:
            log.info("device %s: the heartbeat that stopped was pid %s's, not its current worker's (%d)", name,
                     pid, proc.pid)
            return
        try:
            status = psutil.Process(proc.pid).status()
        except psutil.NoSuchProcess:
            return
        if status not in _NOT_RUNNING:
            # the heartbeat process beats while the worker is alive and not stopped: a missed beat from
            # a running worker is a starved heartbeat (a loaded node) or a stalled store, not a hang
            log.warning("worker for device %s (pid %d) is %s but its heartbeat stopped: not killing it", name,
                        proc.pid, status)
            return
        log.error("worker for device %s (pid %d) stopped beating: killing it", name, proc.pid)
        proc.kill()

    async def __aexit__(self, *exc):
        """SIGTERM: each worker finishes its current batch, then exits; SIGKILL after a grace period.
        The daemon has already drained (up to drain_timeout_s): a batch still running here stays in
        its processing list and runs again on the next start."""
        self._stopping = True
        for p in self.procs.values():
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        waits = [p.wait() for p in self.procs.values() if p.returncode is None]
        if waits:
            done, pending = await asyncio.wait([asyncio.ensure_future(w) for w in waits],
                                               timeout=STOP_GRACE_S)
            for p in self.procs.values():
                if p.returncode is None:
                    p.kill()
                    await p.wait()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
