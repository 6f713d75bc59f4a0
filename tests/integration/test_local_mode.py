"""`qsched submit --local` on RQ: the job runs, and what RQ keeps in the daemon's Redis is JSON, so
nothing in the store is ever unpickled."""
from __future__ import annotations

import time
import zlib

import redis
from click.testing import CliRunner

from qsched import keys
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


def _clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for k in ("QSCHED_URL", "QSCHED_SESSION", "QSCHED_POOL", "QSCHED_CLASS", "QSCHED_REDIS_URL"):
        monkeypatch.delenv(k, raising=False)


def test_the_scripts_directives_hold_and_the_time_limit_kills_the_whole_job(fresh_daemon, tmp_path, monkeypatch):
    import subprocess
    d = fresh_daemon(devices=[{"name": "null0", "type": "null", "pool": "null"},
                              {"name": "null1", "type": "null", "pool": "other"}])
    script = tmp_path / "long.sh"
    marker = "61.25"                                   # a sleep nobody else runs
    script.write_text("#!/bin/bash\n#SBATCH --qpu=other\n#SBATCH --qpu-class=debug\n#SBATCH --time=0:02\n"
                      "#SBATCH --job-name=limited\n"
                      f"echo \"pool=$QSCHED_POOL class=$QSCHED_CLASS\"\nsleep {marker} &\nsleep {marker}\n")
    script.chmod(0o755)
    _clean_env(monkeypatch, tmp_path)
    res = CliRunner().invoke(submit, ["--local", "--wait", "--config", str(d.config_path), str(script)])
    assert res.exit_code == 124, res.output
    job_id = res.output.strip().splitlines()[0]
    out = (tmp_path / f"qsched-{job_id}.out").read_text()
    assert "pool=other class=debug" in out and "CANCELLED DUE TO TIME LIMIT" in out
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout.split()
    assert left == [], "a child of the job survived its time limit"
    names = [r.get("name") for r in d.client().accounting()]
    assert "limited" in names                          # --job-name named the session


def _two_barrier_jobs(d, tmp_path, cap_s: int) -> list[int]:
    """Submit two jobs at once; each waits (a barrier) until both have started, or exits 1 after cap_s."""
    import threading
    started = tmp_path / "started"
    started.mkdir()
    script = tmp_path / "barrier.sh"
    script.write_text("#!/bin/bash\n"
                      f"touch {started}/$$\n"
                      "SECONDS=0\n"
                      f"while [ $(ls {started} | wc -l) -lt 2 ]; do\n"
                      f"  [ $SECONDS -ge {cap_s} ] && {{ echo 'the other job never started'; exit 1; }}\n"
                      "  sleep 0.05\n"
                      "done\n")
    script.chmod(0o755)
    codes = []

    def one():
        codes.append(CliRunner().invoke(submit, ["--local", "--wait", "--config", str(d.config_path),
                                                 str(script)]).exit_code)
    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(list(started.iterdir())) == 2
    return codes


def test_local_jobs_run_concurrently_up_to_local_workers(fresh_daemon, tmp_path, monkeypatch):
    """Two jobs with local.workers = 2 run at the same time: run one after the other, the first would
    never see the second and exit 1. No wall-clock bound: on a loaded machine the submissions
    themselves can take seconds."""
    d = fresh_daemon(devices=[{"name": "null0", "type": "null", "pool": "null"}], extra={"local": {"workers": 2}})
    _clean_env(monkeypatch, tmp_path)
    codes = _two_barrier_jobs(d, tmp_path, cap_s=60)
    assert codes == [0, 0], codes                      # one after the other, the first would exit 1


def test_simultaneous_submissions_start_no_more_than_local_workers(fresh_daemon, tmp_path, monkeypatch):
    """With local.workers = 1, two jobs submitted at the same moment run one after the other: the first
    gives up waiting for the second, which then finds it started. (Counting only the workers RQ had
    registered, each submission started its own and both ran at once.)"""
    d = fresh_daemon(devices=[{"name": "null0", "type": "null", "pool": "null"}], extra={"local": {"workers": 1}})
    _clean_env(monkeypatch, tmp_path)
    codes = _two_barrier_jobs(d, tmp_path, cap_s=4)
    assert sorted(codes) == [0, 1], codes
    r = redis.Redis(unix_socket_path=str(d.state_dir / "redis" / "redis.sock"))
    deadline = time.monotonic() + 30
    while r.zcard(keys.LOCAL_WORKERS):                 # the worker gave its place back on leaving
        assert time.monotonic() < deadline, r.zrange(keys.LOCAL_WORKERS, 0, -1, withscores=True)
        time.sleep(0.1)
