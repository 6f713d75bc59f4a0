"""The shipped Prometheus config, alert rules and Grafana dashboard against a REAL Prometheus scraping a
real daemon: promtool accepts the files, and every PromQL expression of the dashboard returns data.

Needs the `prometheus` and `promtool` binaries (Debian package `prometheus`; installed with apt-get when
we are root and apt exists, like the Slurm tests). Elsewhere the tests skip, except with CI=true, where a
Prometheus that cannot be installed or started is a failure.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "configs" / "prometheus"
DASHBOARD = REPO / "configs" / "grafana" / "qsched-dashboard.json"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SCRAPE_S = 1.0

# Grafana template variables -> what "All" means in a raw query
GRAFANA_VARS = {"pool": ".*", "device": ".*"}


def _unavailable(why: str):
    if CI:
        pytest.fail(f"Prometheus tests cannot run under CI=true: {why}")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prom_bins() -> tuple[str, str]:
    """(prometheus, promtool): found on PATH, else installed from the Debian package."""
    def found():
        return shutil.which("prometheus"), shutil.which("promtool")
    prom, tool = found()
    if prom and tool:
        return prom, tool
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _unavailable("prometheus/promtool not installed, and installing needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if cp.returncode != 0:          # stale package lists: refresh once and retry
            subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=300)
            cp = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    except subprocess.TimeoutExpired:
        _unavailable("apt-get install prometheus timed out")
    prom, tool = found()
    if cp.returncode != 0 or not (prom and tool):
        _unavailable(f"apt-get install prometheus failed ({cp.returncode}):\n{cp.stderr[-2000:]}")
    return prom, tool


# ------------------------------------------------------------------------------ the dashboard's queries
def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, rows' nested panels included."""
    out = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", "?"), t["expr"]))
    walk(dash.get("panels", []))
    return out


def variable_queries(dash: dict) -> list[tuple[str, str, str]]:
    """(variable, metric selector, label) for each `label_values(selector, label)` template variable."""
    out = []
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q)
        assert m, f"variable {v['name']}: only label_values(selector, label) queries are supported: {q!r}"
        out.append((v["name"], m.group(1), m.group(2)))
    return out


def substitute(expr: str) -> str:
    """Grafana's $var / ${var} with the dashboard's "All" value; no other Grafana macro may be used."""
    def repl(m):
        name = m.group(1) or m.group(2)
        assert name in GRAFANA_VARS, f"unknown Grafana variable ${name} in {expr!r}"
        return GRAFANA_VARS[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


def test_dashboard_is_importable_grafana_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and dash["schemaVersion"] >= 30
    ids = []
    for p in dash["panels"]:
        ids.append(p["id"])
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "pool", "device"} <= names
    exprs = [substitute(e) for _, e in dashboard_exprs(dash)]
    joined = "\n".join(exprs)
    assert 'rate(qsched_device_busy_seconds_total{device=~".*"}[1m])' in joined
    for needed in ("qsched_tasks_completed_total",
                   "qsched_tasks_pending", "qsched_queue_wait_seconds_bucket", "qsched_batch_execution_seconds_bucket",
                   "qsched_sessions_open", "qsched_requests_rejected_total", "qsched_worker_restarts_total",
                   "qsched_device_up"):
        assert needed in joined, f"the dashboard has no panel on {needed}"
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, pool) (rate(qsched_queue_wait_seconds_bucket" in joined


# ------------------------------------------------------------------------------ promtool
def test_promtool_accepts_shipped_config_and_rules(prom_bins):
    _, promtool = prom_bins
    for args in (["check", "config", str(PROM_DIR / "prometheus.yml")],
                 ["check", "rules", str(PROM_DIR / "qsched-rules.yml")]):
        cp = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0, f"promtool {' '.join(args)}:\n{cp.stdout}\n{cp.stderr}"
    # the scrape config points at the daemon's default TCP listener and /metrics
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "qsched")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "127.0.0.1:8765" in job["static_configs"][0]["targets"]
    rules = yaml.safe_load((PROM_DIR / "qsched-rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"QschedDeviceDown", "QschedQueueWaitHigh", "QschedWorkerRestarting"} <= alerts


# ------------------------------------------------------------------------------ a real Prometheus
class Prom:
    def __init__(self, base: str):
        self.base = base

    def get(self, path: str, **params):
        url = self.base + path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None

    def wait_for(self, expr: str, pred, timeout: float = 20.0, what: str = ""):
        deadline = time.monotonic() + timeout
        while True:
            v = self.value(expr)
            if v is not None and pred(v):
                return v
            if time.monotonic() > deadline:
                raise AssertionError(f"{what or expr}: last value {v} after {timeout} s")
            time.sleep(0.25)


@pytest.fixture
def prometheus(prom_bins, tmp_path):
    """A private Prometheus started from the shipped config: 1 s scrapes of the port it is given."""
    prom, _ = prom_bins
    procs = []

    def start(target_port: int) -> Prom:
        cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        cfg["global"].update(scrape_interval=f"{SCRAPE_S:g}s", evaluation_interval=f"{SCRAPE_S:g}s")
        cfg["rule_files"] = [str(PROM_DIR / f) for f in cfg.get("rule_files", [])]
        job = copy.deepcopy(next(j for j in cfg["scrape_configs"] if j["job_name"] == "qsched"))
        job.update(scrape_interval=f"{SCRAPE_S:g}s", scrape_timeout=f"{SCRAPE_S:g}s")
        job["static_configs"][0]["targets"] = [f"127.0.0.1:{target_port}"]
        cfg["scrape_configs"] = [job]
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg))
        port = _free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        p = subprocess.Popen([prom, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                              f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        client = Prom(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:
            if p.poll() is not None:
                pytest.fail(f"prometheus exited ({p.returncode}):\n{(tmp_path / 'prometheus.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(client.base + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return client
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("prometheus not ready within 30 s")
            time.sleep(0.2)

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _worker_pids(daemon_pid: int) -> list[int]:
    import psutil
    return [c.pid for c in psutil.Process(daemon_pid).children(recursive=True)
            if "worker" in c.cmdline()]


def test_dashboard_queries_return_data(fresh_daemon, prometheus):
    """Drive every metric the dashboard shows, then run each of its expressions on Prometheus."""
    import numpy as np
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter

    from qsched import errors

    tcp_port = _free_port()
    d = fresh_daemon(devices=[{"name": "null0", "type": "null", "pool": "null",
                               "options": {"delay_s": 0.005}}],
                     extra={"daemon": {"tcp": f"127.0.0.1:{tcp_port}"}})
    prom = prometheus(tcp_port)
    prom.wait_for('up{job="qsched"}', lambda v: v == 1, what="Prometheus scraping the daemon")
    client = d.client()
    session = client.open_session("null", name="prometheus-test")
    qc = QuantumCircuit(2)
    qc.rx(Parameter("a"), 0)
    qc.cx(0, 1)
    digest = session.upload(qc)

    def run_round(n: int) -> None:
        futs = session.submit_many([dict(kind="estimate", template=digest, params=np.full((3, 1), 0.1 * i),
                                         observables=["ZZ"]) for i in range(n)])
        session.wait(futs, timeout=30)
        with pytest.raises(errors.NotFound):         # a rejected request: counted by code
            client._t.request("GET", "/v1/sessions/000000000000")

    # two rounds, each seen by a scrape: rates and histogram quantiles need an increase inside the window
    run_round(20)
    prom.wait_for("sum(qsched_tasks_completed_total)", lambda v: v >= 20)
    run_round(20)
    prom.wait_for("sum(qsched_tasks_completed_total)", lambda v: v >= 40)

    # a worker that dies is restarted by the daemon: qsched_worker_restarts_total, qsched_device_up
    (wpid,) = _worker_pids(d.proc.pid)
    os.kill(wpid, signal.SIGKILL)
    prom.wait_for("sum(qsched_worker_restarts_total)", lambda v: v >= 1, what="worker restart counted")
    deadline = time.monotonic() + 30
    while not all(x["up"] for x in client.devices()):
        assert time.monotonic() < deadline, "worker not back within 30 s"
        time.sleep(0.2)
    run_round(10)
    prom.wait_for("sum(qsched_tasks_completed_total)", lambda v: v >= 50)
    prom.wait_for('qsched_device_up{device="null0"}', lambda v: v == 1)

    dash = json.loads(DASHBOARD.read_text())
    empty, checked = [], 0
    for title, expr in dashboard_exprs(dash):
        q = substitute(expr)
        res = prom.query(q)
        checked += 1
        if not res:
            empty.append(f"{title}: {q}")
    assert not empty, "dashboard queries with no data:\n" + "\n".join(empty)
    assert checked >= 15

    for name, selector, label in variable_queries(dash):
        series = prom.get("/api/v1/series", **{"match[]": selector})
        values = {s[label] for s in series if label in s}
        assert values, f"variable ${name}: label_values({selector}, {label}) is empty"

    # the numbers behind the main panels are the ones we caused
    busy = prom.value('rate(qsched_device_busy_seconds_total{device="null0"}[1m])')
    assert busy is not None and 0 < busy <= 1
    for q in ("0.5", "0.95", "0.99"):
        p = prom.value(f'histogram_quantile({q}, sum by (le, pool) '
                       f'(rate(qsched_queue_wait_seconds_bucket{{pool="null"}}[5m])))')
        assert p is not None and 0 <= p < 30, (q, p)
        e = prom.value(f'histogram_quantile({q}, sum by (le, device) '
                       f'(rate(qsched_batch_execution_seconds_bucket{{device="null0"}}[5m])))')
        assert e is not None and 0.001 <= e < 5, (q, e)       # null0 holds the device 5 ms per batch
    done = prom.value('sum(qsched_tasks_completed_total{status="DONE"})')
    assert done == 50
    assert prom.value("qsched_sessions_open") == 1
    assert prom.value('qsched_requests_rejected_total{code="not_found"}') == 3
    assert prom.value('qsched_worker_restarts_total{device="null0"}') == 1

    # the alert rules load and evaluate without error against the live series
    deadline = time.monotonic() + 10
    while True:
        rules = [r for g in prom.get("/api/v1/rules")["groups"] for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("2") and r["health"] != "unknown" for r in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    assert {r["name"] for r in rules} >= {"QschedDeviceDown", "QschedQueueWaitHigh", "QschedWorkerRestarting"}
    session.close()
    client.close()
