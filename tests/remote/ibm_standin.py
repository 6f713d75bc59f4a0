"""STAND-IN for the IBM Qiskit Runtime REST API, for tests only: the cloud QPU cannot be reached from
here. It implements the part of the API that QRMI's `IBMQiskitRuntimeService` calls (paths and JSON
read from qiskit-community/qrmi: src/ibm/qiskit_runtime_service.rs and the generated client in
dependencies/quantum_compute_client): IAM `POST /identity/token`, `GET /backends/{name}/status|
configuration|properties`, `POST /sessions`, `GET|PATCH /sessions/{id}`, `DELETE /sessions/{id}/close`,
`GET|POST /jobs`, `GET /jobs/{id}`, `POST /jobs/{id}/cancel`, `GET /jobs/{id}/results`.

Jobs really run: the pubs (OpenQASM 3 + parameter arrays, as qrmi.primitives send them) execute on aer,
and results are encoded with qiskit-ibm-runtime's RuntimeEncoder, as the service does, so answers can
be checked against a reference. Faults are injected per route: HTTP errors (429 with Retry-After, 5xx),
slow answers (client timeouts), jobs that fail remotely, jobs that the service loses."""
from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

API_KEY = "standin-apikey-0123456789"        # what the tests' credentials file holds
SERVICE_CRN = "crn:v1:standin:qsched-tests"


@dataclass
class Fault:
    method: str
    path: str                   # regular expression matched against the request path
    status: int = 500
    times: int = 1              # how many matching requests it answers (then it is spent)
    retry_after: float | None = None
    delay_s: float = 0.0        # answer this late (a client with a shorter timeout gives up)
    passthrough: bool = False   # after the delay, answer normally (a slow but successful call)
    hits: int = 0


@dataclass
class Job:
    id: str
    program: str
    params: dict
    session_id: str | None
    created: float
    status: str = "Queued"
    reason: str = ""
    result: str | None = None        # as the service sends it (JSON text)
    cancel_requests: int = 0
    started: float | None = None
    finished: float | None = None
    fail: str | None = None     # fail remotely with this reason when it runs
    lost: bool = False
    run_s: float = 0.0          # the stand-in's run_s when the job was created


@dataclass
class StandIn:
    backend: str = "fake_manila"
    fake: str = "FakeManilaV2"      # qiskit-ibm-runtime calibration snapshot served as configuration
    queue_s: float = 0.05           # queued this long before running
    run_s: float = 0.2              # running at least this long (a QPU's execution)
    seed: int = 11
    backend_status: str = "active"
    faults: list[Fault] = field(default_factory=list)
    jobs: dict[str, Job] = field(default_factory=dict)
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)     # when each of `requests` was answered
    tokens: set = field(default_factory=set)
    sessions: dict[str, dict] = field(default_factory=dict)
    fail_next_jobs: list[str] = field(default_factory=list)
    lose_next_jobs: int = 0
    corrupt_next_results: int = 0    # answer GET /jobs/{id}/results with what no decoder reads
    url: str = ""

    # ---------------------------------------------------------------- test controls
    def fault(self, method: str, path: str, **kw) -> Fault:
        f = Fault(method, path, **kw)
        self.faults.append(f)
        return f

    def submissions(self) -> list[Job]:
        return list(self.jobs.values())

    def _log(self, method: str, path: str, status: int) -> None:
        self.requests.append((method, path, status))
        self.stamps.append(time.time())

    def answered(self, method: str, path: str) -> list[tuple[int, float]]:
        """(status, when) of each matching request, in order."""
        return [(st, t) for (m, p, st), t in zip(self.requests, self.stamps) if m == method and re.fullmatch(path, p)]

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and re.fullmatch(path, p))

    # ---------------------------------------------------------------- server
    def start(self) -> "StandIn":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True, name="ibm-standin")
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("stand-in did not start")
        return self

    def stop(self) -> None:
        if getattr(self, "_loop", None) is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._stop = asyncio.Event()

        async def main():
            app = web.Application(middlewares=[self._middleware])
            r = app.router
            r.add_post("/identity/token", self._token)
            r.add_get("/backends/{name}/status", self._status)
            r.add_get("/backends/{name}/configuration", self._configuration)
            r.add_get("/backends/{name}/properties", self._properties)
            r.add_post("/sessions", self._session_create)
            r.add_get("/sessions/{id}", self._session_get)
            r.add_patch("/sessions/{id}", self._session_patch)
            r.add_delete("/sessions/{id}/close", self._session_close)
            r.add_get("/jobs", self._jobs_list)
            r.add_post("/jobs", self._job_create)
            r.add_get("/jobs/{id}", self._job_get)
            r.add_delete("/jobs/{id}", self._job_delete)
            r.add_post("/jobs/{id}/cancel", self._job_cancel)
            r.add_get("/jobs/{id}/results", self._job_results)
            r.add_get("/jobs/{id}/logs", self._job_logs)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]   # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            await self._stop.wait()
            await runner.cleanup()

        self._loop.run_until_complete(main())

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        for f in self.faults:
            if f.hits < f.times and f.method == request.method and re.fullmatch(f.path, request.path):
                f.hits += 1
                if f.delay_s:
                    await asyncio.sleep(f.delay_s)
                if not f.passthrough:
                    self._log(request.method, request.path, f.status)
                    headers = {"Retry-After": str(int(f.retry_after))} if f.retry_after is not None else {}
                    return web.json_response({"errors": [{"code": f.status, "message": "injected fault"}]},
                                             status=f.status, headers=headers)
                break
        if request.path != "/identity/token":
            auth = request.headers.get("Authorization", "")
            if auth.removeprefix("Bearer ") not in self.tokens:
                self._log(request.method, request.path, 401)
                return web.json_response({"errors": [{"message": "unauthorized"}]}, status=401)
        resp = await handler(request)
        self._log(request.method, request.path, resp.status)
        return resp

    # ---------------------------------------------------------------- IAM and backends
    async def _token(self, request):
        form = await request.post()
        if form.get("grant_type") != "urn:ibm:params:oauth:grant-type:apikey" or form.get("apikey") != API_KEY:
            return web.json_response({"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be "
                                                                                 "found."}, status=400)
        token = secrets.token_hex(16)
        self.tokens.add(token)
        now = int(time.time())
        return web.json_response({"access_token": token, "refresh_token": "not_supported", "token_type": "Bearer",
                                  "expires_in": 3600, "expiration": now + 3600, "scope": "ibm openid"})

    def _fake_files(self) -> tuple[dict, dict]:
        import qiskit_ibm_runtime.fake_provider as fp
        b = getattr(fp, self.fake)()
        d = Path(b.dirname)
        conf = json.loads((d / b.conf_filename).read_text())
        props = json.loads((d / b.props_filename).read_text())
        conf["backend_name"] = self.backend
        props["backend_name"] = self.backend
        return conf, props

    async def _status(self, request):
        if request.match_info["name"] != self.backend:
            return web.json_response({"errors": [{"message": "backend not found"}]}, status=404)
        return web.json_response({"state": self.backend_status == "active", "status": self.backend_status,
                                  "message": "", "length_queue": sum(j.status == "Queued" for j in self.jobs.values()),
                                  "backend_version": "1.0.0"})

    async def _configuration(self, request):
        return web.json_response(self._fake_files()[0])

    async def _properties(self, request):
        return web.json_response(self._fake_files()[1])

    # ---------------------------------------------------------------- sessions
    async def _session_create(self, request):
        body = await request.json()
        sid = "sess-" + secrets.token_hex(6)
        self.sessions[sid] = {"id": sid, "backend_name": self.backend, "mode": body.get("mode", "dedicated"),
                              "max_ttl": body.get("max_ttl", 28800), "active_ttl": body.get("max_ttl", 28800),
                              "state": "open", "accepting_jobs": True}
        return web.json_response(self.sessions[sid])

    async def _session_get(self, request):
        s = self.sessions.get(request.match_info["id"])
        return web.json_response(s) if s else web.json_response({"errors": []}, status=404)

    async def _session_patch(self, request):
        s = self.sessions.get(request.match_info["id"])
        if s:
            s.update(await request.json())
            s["state"] = "closed" if not s.get("accepting_jobs", True) else s["state"]
        return web.Response(status=204)

    async def _session_close(self, request):
        s = self.sessions.get(request.match_info["id"])
        if s:
            s["state"] = "closed"
        for j in self.jobs.values():
            if j.session_id == request.match_info["id"] and j.status in ("Queued", "Running"):
                j.status, j.reason = "Cancelled", "session closed"
        return web.Response(status=204)

    # ---------------------------------------------------------------- jobs
    def _job_json(self, j: Job) -> dict:
        out = {"id": j.id, "backend": self.backend, "state": {"status": j.status, "reason": j.reason or None},
               "status": j.status, "program": {"id": j.program}, "created": _iso(j.created), "cost": 600,
               "session_id": j.session_id, "private": False}
        if j.finished and j.started:
            out["usage"] = {"seconds": round(j.finished - j.started, 6)}
        return out

    async def _jobs_list(self, request):
        jobs = list(self.jobs.values())
        if request.query.get("pending") == "true":
            jobs = [j for j in jobs if j.status in ("Queued", "Running")]
        if "session_id" in request.query:
            jobs = [j for j in jobs if j.session_id == request.query["session_id"]]
        return web.json_response({"jobs": [self._job_json(j) for j in jobs], "count": len(jobs), "offset": 0,
                                  "limit": 200})

    async def _job_create(self, request):
        body = await request.json()
        if body.get("backend") != self.backend:
            return web.json_response({"errors": [{"message": f"backend {body.get('backend')} not found"}]},
                                     status=400)
        j = Job(id="job-" + secrets.token_hex(8), program=body["program_id"], params=body.get("params") or {},
                session_id=body.get("session_id"), created=time.time(), run_s=self.run_s)
        if self.fail_next_jobs:
            j.fail = self.fail_next_jobs.pop(0)
        if self.lose_next_jobs:
            self.lose_next_jobs -= 1
            j.lost = True
        self.jobs[j.id] = j
        asyncio.get_running_loop().create_task(self._run(j))
        return web.json_response({"id": j.id, "backend": self.backend, "session_id": j.session_id})

    def _job(self, request) -> Job | None:
        j = self.jobs.get(request.match_info["id"])
        return None if j is None or j.lost else j

    @staticmethod
    def _not_found():
        return web.json_response({"errors": [{"code": 1291, "message": "Job not found.", "solution": ""}]},
                                 status=404)

    async def _job_get(self, request):
        j = self._job(request)
        return web.json_response(self._job_json(j)) if j else self._not_found()

    async def _job_delete(self, request):
        return web.Response(status=204)

    async def _job_cancel(self, request):
        j = self._job(request)
        if j is None:
            return self._not_found()
        j.cancel_requests += 1
        if j.status in ("Queued", "Running"):
            j.status, j.reason, j.finished = "Cancelled", "cancelled by the user", time.time()
        return web.Response(status=204)

    async def _job_results(self, request):
        j = self._job(request)
        if j is None:
            return self._not_found()
        if j.status != "Completed" or j.result is None:
            return web.json_response({"errors": [{"message": "job not completed"}]}, status=400)
        if self.corrupt_next_results:
            self.corrupt_next_results -= 1
            return web.Response(text='{"__type__": "PrimitiveResult", "__value__": {"pub_results": 7}}',
                                content_type="text/plain")
        # the service answers results as text (QRMI reads a JSON body here as one string)
        return web.Response(text=j.result, content_type="text/plain")

    async def _job_logs(self, request):
        j = self._job(request)
        if j is None:
            return self._not_found()
        return web.Response(text=j.reason or "", content_type="text/plain")

    async def _run(self, j: Job) -> None:
        await asyncio.sleep(self.queue_s)
        if j.status != "Queued":
            return
        j.status, j.started = "Running", time.time()
        try:
            width = int(self._fake_files()[0]["n_qubits"])
            result = None if j.fail else await asyncio.get_running_loop().run_in_executor(
                None, _execute, j.program, j.params, self.seed, width)
        except Exception as e:       # a bad program fails remotely, as on the service
            j.fail = f"Error running the program: {type(e).__name__}: {e}"
        left = j.run_s - (time.time() - j.started)
        if left > 0:
            await asyncio.sleep(left)
        if j.status != "Running":     # cancelled while running
            return
        j.finished = time.time()
        if j.fail:
            j.status, j.reason = "Failed", j.fail
        else:
            j.status, j.result = "Completed", _encode(result, j.started, j.finished)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _on_device(qasm: str, width: int):
    """An ISA circuit on physical qubits $i, widened to the whole device (the loader stops at the
    highest qubit used), as the service runs it."""
    from qiskit import QuantumCircuit, qasm3
    qc = qasm3.loads(qasm)
    if qc.num_qubits >= width:
        return qc
    full = QuantumCircuit(width)
    for creg in qc.cregs:
        full.add_register(creg)
    return full.compose(qc, qubits=range(qc.num_qubits), clbits=range(qc.num_clbits))


def _execute(program: str, params: dict, seed: int, width: int):
    """Run the pubs on aer."""
    import numpy as np
    from qiskit_aer.primitives import EstimatorV2, SamplerV2

    pubs = []
    if program == "sampler":
        for pub in params["pubs"]:
            qasm, values, shots = (list(pub) + [None, None])[:3]
            qc = _on_device(qasm, width)
            pubs.append((qc, None if values is None else np.asarray(values, dtype=float),
                         shots or params.get("shots")))
        res = SamplerV2(seed=seed).run(pubs, shots=params.get("shots") or 1024).result()
    elif program == "estimator":
        for pub in params["pubs"]:
            qasm, obs, values, precision = (list(pub) + [None, None, None])[:4]
            qc = _on_device(qasm, width)
            pubs.append((qc, obs, None if values is None else np.asarray(values, dtype=float), precision))
        prec = (params.get("options") or {}).get("default_precision", 0.015625)
        res = EstimatorV2(options={"default_precision": prec, "run_options": {"seed": seed}}).run(pubs).result()
    else:
        raise ValueError(f"unknown program {program}")
    return res


def _encode(res, started: float, finished: float) -> str:
    """The result as the service sends it: RuntimeEncoder JSON, with the QPU's execution span (the
    service's measure of the job's quantum time) in its metadata."""
    from datetime import datetime, timezone

    from qiskit_ibm_runtime.execution_span import ExecutionSpans, SliceSpan
    from qiskit_ibm_runtime.json import RuntimeEncoder
    span = SliceSpan(datetime.fromtimestamp(started, timezone.utc), datetime.fromtimestamp(finished, timezone.utc),
                     {i: ((1,), slice(0, 1)) for i in range(len(res))})
    res.metadata["execution"] = {"execution_spans": ExecutionSpans([span])}
    return json.dumps(res, cls=RuntimeEncoder)
