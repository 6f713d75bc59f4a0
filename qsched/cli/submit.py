"""`qsched submit SCRIPT`: run a hybrid job script on Slurm (sbatch) or, with --local, on RQ workers.

Both ways the script sees the same environment: QSCHED_URL, QSCHED_SESSION, QSCHED_POOL, QSCHED_CLASS
(on Slurm the SPANK plugin sets them), so one script runs on a laptop and on a cluster.

    qsched submit [--nodes N] [--time T] [--qpu POOL] [--class C] [--wait] [--local]
                  [SBATCH OPTIONS...] SCRIPT [SCRIPT ARGS...]

Options qsched does not know go to sbatch unchanged (e.g. --partition=debug, -A proj, --mem 4G).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import click

from .. import keys
from ..errors import QschedError
from ..paths import embedded_redis_socket

# sbatch options that take their value as the next argument (when not written --opt=value / -Xvalue)
_SBATCH_SHORT_WITH_VALUE = set("AaBbCcDdeGiJLMmNnopqSstWwxZ")  # -W is --wait in sbatch, no value
_SBATCH_SHORT_WITH_VALUE.discard("W")
_SBATCH_LONG_WITH_VALUE = {
    "account", "acctg-freq", "array", "batch", "bb", "bbf", "begin", "chdir", "cluster-constraint",
    "clusters", "comment", "constraint", "container", "core-spec", "cores-per-socket", "cpu-freq",
    "cpus-per-gpu", "cpus-per-task", "deadline", "delay-boot", "dependency", "distribution", "error",
    "export-file", "extra-node-info", "gid", "gpu-bind", "gpu-freq", "gpus", "gpus-per-node",
    "gpus-per-socket", "gpus-per-task", "gres", "gres-flags", "hint", "input", "job-name", "licenses",
    "mail-type", "mail-user", "mcs-label", "mem", "mem-bind", "mem-per-cpu", "mem-per-gpu", "mincpus",
    "network", "nice", "nodefile", "nodelist", "ntasks", "ntasks-per-core", "ntasks-per-gpu",
    "ntasks-per-node", "ntasks-per-socket", "output", "partition", "power", "prefer", "priority",
    "profile", "qos", "reservation", "signal", "sockets-per-node", "switches", "thread-spec",
    "threads-per-core", "time-min", "tmp", "uid", "wckey", "wrap", "exclude", "open-mode",
}


def split_passthrough(args: list[str]) -> tuple[list[str], str | None, list[str]]:
    """[sbatch opts...] SCRIPT [script args...] -> (sbatch opts, SCRIPT, script args). A '--' ends the
    sbatch options explicitly."""
    sbatch: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        sbatch.append(a)
        if a.startswith("--"):
            name, eq, _ = a[2:].partition("=")
            if not eq and name in _SBATCH_LONG_WITH_VALUE and i + 1 < len(args):
                sbatch.append(args[i + 1])
                i += 1
        elif len(a) == 2 and a[1] in _SBATCH_SHORT_WITH_VALUE and i + 1 < len(args):
            sbatch.append(args[i + 1])
            i += 1
        i += 1
    if i >= len(args):
        return sbatch, None, []
    return sbatch, args[i], args[i + 1:]


def script_sbatch_options(text: str) -> list[str]:
    """The options of a batch script's `#SBATCH` lines, read as sbatch reads them: from the top, up to
    the first line that is neither blank nor a comment."""
    opts: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        if stripped.startswith("#SBATCH"):
            rest = stripped[len("#SBATCH"):]
            if rest and not rest[0].isspace():
                continue                      # e.g. #SBATCHX: not a directive
            try:
                opts += shlex.split(rest, comments=True)
            except ValueError:
                opts += rest.split()
    return opts


def directive(opts: list[str], *names: str) -> str | None:
    """The last value of an sbatch option among `opts` (`--name=V`, `--name V`, or `-x V`), as sbatch
    takes the last one given."""
    value = None
    for i, o in enumerate(opts):
        name, eq, v = o.partition("=")
        if name in names:
            if eq:
                value = v
            elif i + 1 < len(opts) and not opts[i + 1].startswith("-"):
                value = opts[i + 1]
            elif name == "--qpu":
                value = ""                    # a bare --qpu: the default pool
    return value


def asks_for_qpu(opts: list[str]) -> bool:
    """Do these sbatch options already ask for quantum access (--qpu, --qpu=POOL, --gres=...qpu...)?"""
    for i, o in enumerate(opts):
        name, eq, value = o.partition("=")
        if name == "--qpu":
            return True
        if name == "--gres":
            gres = value if eq else (opts[i + 1] if i + 1 < len(opts) else "")
            if any(g.split(":")[0] == "qpu" for g in gres.split(",")):
                return True
    return False


def build_sbatch_argv(script: str, script_args: list[str], *, nodes: int | None, time_limit: str | None,
                      pool: str | None, klass: str | None, extra: list[str],
                      script_opts: list[str] | None = None) -> list[str]:
    """The sbatch argument list (without --parsable). The SPANK plugin's --qpu asks for the session;
    job_submit.lua adds the license and defaults. Without `pool`, a bare --qpu is added only when
    neither the script's #SBATCH lines (`script_opts`) nor `extra` ask for quantum access already: a
    command-line --qpu would override the script's `#SBATCH --qpu=POOL` (sbatch's command line wins)."""
    argv: list[str] = []
    if nodes is not None:
        argv.append(f"--nodes={nodes}")
    if time_limit:
        argv.append(f"--time={time_limit}")
    if pool:
        argv.append(f"--qpu={pool}")
    elif not asks_for_qpu(list(script_opts or [])) and not asks_for_qpu(extra):
        argv.append("--qpu")
    if klass:
        argv.append(f"--qpu-class={klass}")
    argv += extra
    argv.append(script)
    argv += script_args
    return argv


# --- Slurm -------------------------------------------------------------------------------------------

def _submit_slurm(script, script_args, *, nodes, time_limit, pool, klass, extra, wait) -> int:
    from ..slurm.adapter import CliSlurmAdapter
    adapter = CliSlurmAdapter()
    try:
        script_opts = script_sbatch_options(Path(script).read_text(errors="replace"))
    except OSError:
        script_opts = []
    argv = build_sbatch_argv(script, script_args, nodes=nodes, time_limit=time_limit, pool=pool, klass=klass,
                             extra=extra, script_opts=script_opts)
    job_id = adapter.submit_argv(argv)
    click.echo(job_id)
    if not wait:
        return 0
    # poll instead of sbatch --wait: the id is printed at once, and the exit status comes from Slurm
    delay = 0.2
    while True:
        job = adapter.job(job_id)
        if job is None:
            return 0  # purged already: it ended long ago
        if job.ended:
            if job.state != "COMPLETED":
                click.echo(f"job {job_id} {job.state}", err=True)
            return job.exit_code if job.exit_code else (0 if job.state == "COMPLETED" else 1)
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


# --- local mode: RQ ----------------------------------------------------------------------------------



def local_redis_url(config) -> str:
    """The daemon's Redis: QSCHED_REDIS_URL / redis.url, else the embedded one in the state dir."""
    if config.redis_url:
        return config.redis_url
    sock = embedded_redis_socket(config.state_dir)
    try:
        found = sock.exists()
    except PermissionError:
        found = True
    if not found:
        raise click.ClickException(f"no local qsched daemon: {sock} does not exist (start one with `qsched up`)")
    if not os.access(sock, os.R_OK | os.W_OK):
        raise click.ClickException(f"local mode queues jobs in the daemon's Redis ({sock}), which this user "
                                   "cannot open: a daemon run by root keeps it private. Use Slurm (qsched "
                                   "submit without --local), or run your own `qsched up` for local mode.")
    return f"unix://{sock}"


def run_local_job(script: str, args: list[str], env: dict, cwd: str, out_path: str, session_id: str | None,
                  socket_path: str | None, time_limit_s: int = -1) -> int:
    """The RQ job: run the script in a process group of its own with the session env, kill the whole
    group at the time limit (saying so in the output file, as Slurm does), then close the session (the
    job ended, so its pending quantum tasks go too). Returns the script's exit status."""
    full_env = dict(os.environ)
    full_env.update(env)
    try:
        with open(out_path, "ab") as out:
            proc = subprocess.Popen([script, *args], cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                return proc.wait(timeout=time_limit_s if time_limit_s > 0 else None)
            except subprocess.TimeoutExpired:
                out.write(f"qsched: job {env.get('QSCHED_JOB_ID', '')} CANCELLED DUE TO TIME LIMIT "
                          f"({time_limit_s} s)\n".encode())
                out.flush()
                _kill_group(proc)
                return TIMEOUT_EXIT
    finally:
        if session_id and socket_path:
            _close_local_session(socket_path, session_id)


TIMEOUT_EXIT = 124             # what timeout(1) returns


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM to the script's whole process group (its children too), SIGKILL to what is left."""
    import signal
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _client(socket_path: str):
    import qsched
    return qsched.Client(f"unix://{socket_path}")


def _open_local_session(socket_path: str, pool: str | None, klass: str | None, name: str) -> dict:
    with _client(socket_path) as c:
        if not pool:
            # the daemon's first pool, as on Slurm the plugstack default would pick one
            pool = os.environ.get("QSCHED_POOL") or next((d["pool"] for d in c.devices()), None)
        return dict(c.open_session(pool, cls=klass, name=name).info)


def _close_local_session(socket_path: str, session_id: str) -> None:
    try:
        import qsched
        with _client(socket_path) as c:
            qsched.client.Session(c, {"id": session_id}).close()
    except QschedError:
        pass  # closed already (by the user's code or the daemon)


def _enqueue_with_workers(conn, redis_url: str, workers: int, enqueue):
    """Queue a local job and start a worker for it while fewer than `local.workers` are alive or starting.

    Workers hold leases in keys.LOCAL_WORKERS (taken here, before the process starts; renewed by the
    worker), and a worker leaves only under the same lock after seeing the queue empty
    (qsched.cli.rqworker): so a job is never queued with no worker left to run it, and simultaneous
    submissions never start more than `local.workers`. A killed worker's lease runs out."""
    from .rqworker import LEASE_S, LOCK_S
    lock = conn.lock(keys.LOCAL_WORKERS_LOCK, timeout=LOCK_S, blocking_timeout=2 * LOCK_S)
    if not lock.acquire():
        raise click.ClickException(f"local mode: {keys.LOCAL_WORKERS_LOCK} stayed taken for {2 * LOCK_S:g} s "
                                   "(is the daemon's Redis overloaded?); nothing was queued")
    try:
        job = enqueue()
        now = time.time()
        conn.zremrangebyscore(keys.LOCAL_WORKERS, "-inf", now)
        if conn.zcard(keys.LOCAL_WORKERS) >= workers:
            return job
        token = uuid.uuid4().hex
        conn.zadd(keys.LOCAL_WORKERS, {token: now + LEASE_S})
    finally:
        lock.release()
    proc = subprocess.Popen([sys.executable, "-m", "qsched.cli.rqworker"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            cwd=os.getcwd())
    assert proc.stdin is not None
    # a pipe, not argv: the URL may hold a password
    proc.stdin.write(redis_url.encode() + b"\n" + token.encode() + b"\n")
    proc.stdin.close()
    return job


def _submit_local(script, script_args, *, pool, klass, time_limit, wait, config_path) -> int:
    from rq import Queue
    from rq.serializers import JSONSerializer

    from ..config import load_config
    from ..redisconn import sync_client
    config = load_config(config_path)
    url = local_redis_url(config)
    socket_path = str(config.socket_path)
    script_path = str(Path(script).resolve())
    if not os.access(script_path, os.X_OK):
        raise click.ClickException(f"{script}: not an executable file")
    # the script's own #SBATCH lines hold where the command line says nothing, as sbatch reads them
    opts = script_sbatch_options(Path(script_path).read_text(errors="replace"))
    pool = pool or directive(opts, "--qpu") or None
    klass = klass or directive(opts, "--qpu-class") or None
    time_limit = time_limit or directive(opts, "--time", "-t")
    name = directive(opts, "--job-name", "-J") or Path(script).name
    session = _open_local_session(socket_path, pool, klass, name=name)
    conn = sync_client(url)
    q = Queue(keys.RQ_QUEUE, connection=conn, serializer=JSONSerializer)   # nothing in the store is unpickled
    cwd = os.getcwd()
    env = {"QSCHED_URL": f"unix://{socket_path}", "QSCHED_SESSION": session["id"],
           "QSCHED_POOL": session.get("pool") or pool or "", "QSCHED_CLASS": session.get("class") or klass or ""}
    job_id = f"local-{uuid.uuid4().hex[:12]}"
    env["QSCHED_JOB_ID"] = job_id
    out_path = os.path.join(cwd, f"qsched-{job_id}.out")
    limit = _seconds(time_limit) if time_limit else -1
    # the job kills its own script at the limit; RQ's timeout is only a backstop for a stuck job
    job = _enqueue_with_workers(conn, url, config.local_workers, lambda: q.enqueue(
        run_local_job, script_path, list(script_args), env, cwd, out_path, session["id"], socket_path, limit,
        job_id=job_id, job_timeout=limit + 60 if limit > 0 else -1, result_ttl=86400, failure_ttl=86400))
    click.echo(job.id)
    if not wait:
        return 0
    while True:
        status = job.get_status(refresh=True)
        if status == "finished":
            return int(job.return_value() or 0)
        if status in ("failed", "stopped", "canceled"):
            click.echo(f"job {job.id} {getattr(status, 'value', status).upper()}", err=True)
            return 1
        time.sleep(0.2)


def _seconds(t: str) -> int:
    """Slurm time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S -> seconds."""
    days = 0
    if "-" in t:
        d, t = t.split("-", 1)
        days = int(d)
        parts = [int(x) for x in t.split(":")]
        parts += [0] * (3 - len(parts))
        h, m, s = parts
    else:
        parts = [int(x) for x in t.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts
    return ((days * 24 + h) * 60 + m) * 60 + s


@click.command("submit", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--nodes", "-N", type=click.IntRange(min=1), default=None, help="Nodes (sbatch --nodes).")
@click.option("--time", "-t", "time_limit", default=None, help="Time limit in Slurm's format (e.g. 10:00).")
@click.option("--qpu", "pool", default=None, metavar="POOL", help="Device pool for the job's quantum session.")
@click.option("--class", "klass", default=None, metavar="CLASS", help="Policy class (interactive, batch, debug).")
@click.option("--wait", is_flag=True, help="Wait for the job to end; exit with its exit status.")
@click.option("--local", is_flag=True, help="Run on local RQ workers against the local daemon instead of Slurm.")
@click.option("--config", "config_path", default=None, envvar="QSCHED_CONFIG", help="qsched.yaml (local mode).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def submit(nodes, time_limit, pool, klass, wait, local, config_path, args):
    """Submit SCRIPT as a hybrid job and print its job id.

    \b
    qsched submit [OPTIONS] [SBATCH OPTIONS...] SCRIPT [SCRIPT ARGS...]
    Unknown options go to sbatch unchanged (--partition=debug, -A proj, --mem 4G).
    """
    extra, script, script_args = split_passthrough(list(args))
    if script is None:
        raise click.UsageError("missing SCRIPT")
    if not os.path.isfile(script):
        raise click.UsageError(f"SCRIPT {script!r} is not a file")
    try:
        if local:
            if extra:
                raise click.UsageError(f"--local does not take sbatch options: {' '.join(extra)}")
            rc = _submit_local(script, script_args, pool=pool, klass=klass, time_limit=time_limit, wait=wait,
                               config_path=config_path)
        else:
            rc = _submit_slurm(script, script_args, nodes=nodes, time_limit=time_limit, pool=pool, klass=klass,
                               extra=extra, wait=wait)
    except QschedError as e:
        raise click.ClickException(e.message) from None
    sys.exit(rc)


def _main():  # pragma: no cover - `python -m qsched.cli.submit` for tests before the group registers it
    submit()


if __name__ == "__main__":  # pragma: no cover
    _main()


__all__ = ["submit", "split_passthrough", "build_sbatch_argv", "script_sbatch_options", "asks_for_qpu",
           "run_local_job"]
