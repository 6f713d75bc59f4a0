"""`qsched submit --local` on RQ: the job runs, and what RQ keeps in the daemon's Redis is JSON, so
nothing in the store is ever unpickled."""
from __future__ import annotations

import zlib

import redis
from click.testing import CliRunner

from qsched.cli.submit import submit


def test_a_local_job_runs_and_rq_stores_it_as_json(fresh_daemon, tmp_path, monkeypatch):
    d = fresh_daemon(devices=[{"name": "null0", "type": "null", "pool": "null"}])
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\necho \"session=$QSCHED_SESSION pool=$QSCHED_POOL args=$*\"\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    for k in ("QSCHED_URL", "QSCHED_SESSION", "QSCHED_POOL", "QSCHED_CLASS", "QSCHED_REDIS_URL"):
        monkeypatch.delenv(k, raising=False)
    res = CliRunner().invoke(submit, ["--local", "--wait", "--config", str(d.config_path), str(script), "x"])
    assert res.exit_code == 3, res.output
    job_id = res.output.strip().splitlines()[0]
    assert "pool=null args=x" in (tmp_path / f"qsched-{job_id}.out").read_text()
    r = redis.Redis(unix_socket_path=str(d.state_dir / "redis" / "redis.sock"))
    data = zlib.decompress(r.hget(f"rq:job:{job_id}", "data"))          # RQ compresses job data
    assert data[:1] in (b"[", b"{"), data[:20]                           # JSON, not a pickle (b"\x80...")
