"""`make demo`: qsched on the embedded default, four VQE clients sharing one aer device.

Each client alternates a classical phase (an optimizer step; here also a modelled 40 ms of classical
work) with a quantum phase (one gradient task: parameter shift, all shifted circuits in one PUB).
Run concurrently, one client's classical phase overlaps the others' quantum work; run one after
another, the device idles during every classical phase. The summary shows both."""
from __future__ import annotations

import faulthandler
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

CLIENTS = 4
ITERATIONS = 20
QUBITS = 8
CLASSICAL_S = 0.04


def hamiltonian(n: int):
    """Transverse-field Ising chain: sum Z_i Z_{i+1} + 0.7 sum X_i (Qiskit order: rightmost = qubit 0)."""
    from qiskit.quantum_info import SparsePauliOp
    terms = [("I" * (n - i - 2) + "ZZ" + "I" * i, 1.0) for i in range(n - 1)]
    terms += [("I" * (n - i - 1) + "X" + "I" * i, 0.7) for i in range(n)]
    return SparsePauliOp.from_list(terms)


@dataclass
class Progress:
    name: str
    done: int = 0
    energy: float = float("nan")
    waits: list = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0


def problem():
    """The ansatz and Hamiltonian every client shares (read only). Built once, in the main thread:
    building them in each client's short-lived thread crashed the demo now and then (a segfault in
    qiskit's Parameter construction: 2 of 6 runs in one clone on 2026-12-01)."""
    from qiskit.circuit.library import efficient_su2
    return efficient_su2(QUBITS, reps=2, entanglement="linear"), hamiltonian(QUBITS)


def vqe_client(url: str, prog: Progress, seed: int, qc, H) -> None:
    import qsched
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-0.1, 0.1, qc.num_parameters)
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    prog.started = time.perf_counter()
    with qsched.Client(url) as client, client.session(pool="aer", name=prog.name) as s:
        for it in range(1, ITERATIONS + 1):
            r = s.run("gradient", qc, theta[None, :], observables=H, method="parameter-shift")
            prog.waits.append(r.meta["queue_wait_s"])
            g = r.jacobian[0, 0]
            prog.energy = float(r.evs[0, 0])
            # classical phase: an Adam step, plus the rest of the job's classical work
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            theta -= 0.05 * (m / (1 - 0.9 ** it)) / (np.sqrt(v / (1 - 0.999 ** it)) + 1e-8)
            time.sleep(CLASSICAL_S)
            prog.done = it
    prog.finished = time.perf_counter()


def busy_seconds(url: str, device: str = "aer0") -> float:
    import qsched
    with qsched.Client(url) as c:
        text = c.metrics()
    m = re.search(r'qsched_device_busy_seconds_total\{device="%s"\} (\S+)' % device, text)
    return float(m.group(1)) if m else 0.0


def render_plain(progs: list[Progress], t0: float) -> None:
    """One line of progress, for a log or a pipe (no cursor to move back)."""
    done = ", ".join(f"{p.name} {p.done}/{ITERATIONS}" for p in progs)
    print(f"  {time.perf_counter() - t0:5.1f} s: {done}", flush=True)


def render(progs: list[Progress], t0: float, tty: bool, first: bool) -> None:
    lines = []
    for p in progs:
        bar = "#" * int(30 * p.done / ITERATIONS)
        wait = f"{1e3 * np.mean(p.waits):6.1f} ms" if p.waits else "    -    "
        lines.append(f"  {p.name:<9} [{bar:<30}] {p.done:>2}/{ITERATIONS}  E={p.energy:+8.4f}  mean wait {wait}")
    lines.append(f"  elapsed {time.perf_counter() - t0:5.1f} s")
    if tty and not first:
        sys.stdout.write(f"\x1b[{len(lines)}A")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def follow(worker: threading.Thread, progs: list[Progress], t0: float, tty: bool, every_s: float = 5.0) -> None:
    """Show progress until `worker` ends: a terminal redraws the bars in place; a log or a pipe gets a
    short line every `every_s` and the bars once at the end."""
    first, last = True, time.perf_counter()
    while worker.is_alive():
        if tty:
            render(progs, t0, tty, first)
            first = False
        elif time.perf_counter() - last > every_s:
            render_plain(progs, t0)
            last = time.perf_counter()
        worker.join(0.2)
    render(progs, t0, tty, first)


def run_phase(url: str, title: str, concurrent: bool, qc, H) -> dict:
    print(f"\n{title}")
    progs = [Progress(f"vqe-{i}") for i in range(CLIENTS)]
    busy0, t0 = busy_seconds(url), time.perf_counter()
    tty = sys.stdout.isatty()

    def body():
        if concurrent:
            threads = [threading.Thread(target=vqe_client, args=(url, p, i, qc, H)) for i, p in enumerate(progs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for i, p in enumerate(progs):
                vqe_client(url, p, i, qc, H)
    worker = threading.Thread(target=body)
    worker.start()
    follow(worker, progs, t0, tty)
    wall = time.perf_counter() - t0
    busy = busy_seconds(url) - busy0
    return {"wall": wall, "busy": busy, "progs": progs}


def summary(conc: dict, seq: dict) -> None:
    print("\nSummary (one aer device, %d clients x %d iterations, %d qubits, %d parameters)" %
          (CLIENTS, ITERATIONS, QUBITS, 2 * QUBITS * 3))
    print(f"  {'session':<9} {'iters':>5} {'mean wait':>10} {'p95 wait':>10} {'job time':>9}")
    for p in conc["progs"]:
        w = np.array(p.waits) * 1e3
        print(f"  {p.name:<9} {p.done:>5} {w.mean():>7.1f} ms {np.percentile(w, 95):>7.1f} ms "
              f"{p.finished - p.started:>7.2f} s")
    for name, r in (("concurrent (qsched interleaves)", conc), ("one after another", seq)):
        print(f"  {name:<32} makespan {r['wall']:6.2f} s   device busy {100 * r['busy'] / r['wall']:5.1f}%")
    print(f"  speed-up of sharing the device: {seq['wall'] / conc['wall']:.2f}x")


def main() -> None:
    from .paths import daemon_socket
    from .proc import die_with_parent
    faulthandler.enable()                 # a crash in a C extension prints where it happened
    state = tempfile.mkdtemp(prefix="qsched-demo-")
    env = {**os.environ, "QSCHED_STATE_DIR": state}
    env.pop("QSCHED_URL", None)
    env.pop("QSCHED_CONFIG", None)
    print(f"starting qsched on the embedded default (state in {state}) ...")
    # the daemon ends with the demo, however the demo ends: a stray one would hold the TCP port
    daemon = subprocess.Popen([sys.executable, "-m", "qsched", "up"], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(state, "daemon.log"), "wb"), preexec_fn=die_with_parent)
    url = f"unix://{daemon_socket(state)}"
    try:
        import qsched
        deadline = time.monotonic() + 90
        while True:
            try:
                devs = qsched.Client(url, retry_s=0).devices()      # a daemon that died shows at once
                if all(d["up"] for d in devs):
                    break
            except qsched.QschedError:
                pass
            if daemon.poll() is not None or time.monotonic() > deadline:
                sys.exit("qsched did not start; see " + os.path.join(state, "daemon.log"))
            time.sleep(0.2)
        print("devices: " + ", ".join(f"{d['name']} ({d['type']})" for d in devs))
        qc, H = problem()
        conc = run_phase(url, f"{CLIENTS} VQE clients at once, interleaved by qsched (fair share):", True, qc, H)
        seq = run_phase(url, f"the same {CLIENTS} clients one after another:", False, qc, H)
        summary(conc, seq)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
