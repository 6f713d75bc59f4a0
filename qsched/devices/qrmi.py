"""A QPU behind QRMI (`pip install 'qsched[qrmi]'`), the vendor-neutral resource interface that IBM's and
Pasqal's Slurm plugins use. Today: IBM Qiskit Runtime (`resource_type: ibm-qiskit-runtime`).

QRMI is configured by environment variables (`<resource>_QRMI_IBM_QRS_*`); the API key comes from the
device's `credentials_file`, is put in this process's environment only while the resource is built
(QRMI reads it then), and is removed before anything else runs, so no child process inherits it.

Circuits are transpiled here for the backend's Target (from QRMI `target()`: the service's
configuration and properties) once per template, sent as OpenQASM 3 with parameters renamed to
zero-padded names (a QASM 3 round trip sorts parameters by name: with these names the columns of the
parameter array keep their order), one PUB per task group; results come back in qiskit-ibm-runtime's
JSON encoding, decoded with its RuntimeDecoder as QRMI's own primitives do."""
from __future__ import annotations

import json
import os
import re

import numpy as np

from ..errors import DeviceError, RetriableDeviceError
from .base import TaskError, TaskPayload, group_mergeable, split_rows
from .emulated import IsaDevice
from .remote import RemoteDevice, RemoteStatus

RESOURCE_TYPES = {"ibm-qiskit-runtime": "IBMQiskitRuntimeService"}
_ENV = {"endpoint": "ENDPOINT", "iam_endpoint": "IAM_ENDPOINT", "service_crn": "SERVICE_CRN",
        "session_mode": "SESSION_MODE", "session_max_ttl": "SESSION_MAX_TTL", "timeout_s": "TIMEOUT_SECONDS"}
_STATUS = re.compile(r"\b([1-5]\d\d) [A-Z]")    # QRMI's message: "response body: 429 Too Many Requests {...}"


def _translate(fn, throttle_s: float = 5.0):
    """Run a QRMI call, its errors as qsched's: retriable (429, 5xx, transport) or fatal (the rest).
    QRMI drops the response headers, so a 429's Retry-After is not visible here: a 429 waits at least
    `throttle_s` (options.throttle_s) instead of the short backoff of other retriable errors."""
    import qrmi

    def wrapped(*args):
        try:
            return fn(*args)
        except qrmi.TaskNotFoundError:
            raise
        except (qrmi.InvalidInputError, qrmi.AuthenticationFailedError, qrmi.ConfigError,
                qrmi.UnsupportedPayloadError) as e:
            raise DeviceError(f"the vendor refused the call: {e}") from None
        except qrmi.QrmiError as e:
            m = _STATUS.search(str(e))
            code = int(m.group(1)) if m else None
            if code is None or code == 429 or code >= 500:
                raise RetriableDeviceError(f"the vendor answered {code or 'with a transport error'}: "
                                           f"{str(e)[:300]}", retry_after=throttle_s if code == 429 else None) from None
            raise DeviceError(f"the vendor answered {code}: {str(e)[:300]}") from None
    wrapped.__name__ = getattr(fn, "__name__", "call")
    return wrapped


def _param_names(n: int) -> list[str]:
    return [f"p{i:06d}" for i in range(n)]


class QrmiDevice(RemoteDevice, IsaDevice):
    type = "qrmi"

    def __init__(self, spec, credentials: dict | None = None):
        super().__init__(spec)
        import qrmi
        o = self.options
        kind = o.get("resource_type", "ibm-qiskit-runtime")
        if kind not in RESOURCE_TYPES:
            raise TaskError(f"options.resource_type: one of {', '.join(RESOURCE_TYPES)}, got {kind!r}",
                            field="options.resource_type")
        self.resource = str(o.get("resource") or spec.name)
        self.default_shots = int(o.get("default_shots", 1000))
        creds = dict(credentials or {})
        if "apikey" not in creds:
            raise TaskError(f"device {spec.name}: credentials_file must hold `apikey`", field="credentials_file")
        env = {f"{self.resource}_QRMI_IBM_QRS_{v}": str(o[k] if k in o else creds.get(k, ""))
               for k, v in _ENV.items() if k in o or k in creds}
        env[f"{self.resource}_QRMI_IBM_QRS_IAM_APIKEY"] = str(creds["apikey"])
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:        # QRMI reads its configuration here, once
            self.qr = qrmi.QuantumResource(self.resource, getattr(qrmi.ResourceType, RESOURCE_TYPES[kind]))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.throttle_s = float(o.get("throttle_s", 5.0))
        self._task_start = self._wrap(self.qr.task_start)
        self._task_status = self._wrap(self.qr.task_status)
        self._task_result = self._wrap(self.qr.task_result)
        self._task_stop = self._wrap(self.qr.task_stop)
        self._status = self._wrap(self.qr.status)
        self._target_call = self._wrap(self.qr.target)
        self._session: str | None = None
        self._described: dict | None = None
        self._usage: dict[str, float] = {}
        self._load_target()

    def _wrap(self, fn):
        return _translate(fn, self.throttle_s)

    # target and describe -----------------------------------------------------------------------------
    def _load_target(self) -> None:
        from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager
        from qiskit_ibm_runtime.models import BackendConfiguration, BackendProperties
        from qiskit_ibm_runtime.utils.backend_converter import convert_to_target
        raw = json.loads(self.call(self._target_call).value)
        conf = raw.get("configuration")
        if not conf:
            raise DeviceError(f"device {self.spec.name}: the vendor sent no configuration for {self.resource}")
        config = BackendConfiguration.from_dict(conf)
        props = BackendProperties.from_dict(raw["properties"]) if raw.get("properties") else None
        self.target = convert_to_target(config, props)
        self.passes = generate_preset_pass_manager(optimization_level=int(self.options.get("optimization_level", 1)),
                                                   target=self.target,
                                                   seed_transpiler=int(self.options.get("seed_transpiler", 1234)))
        self._described = {"basis_gates": sorted(config.basis_gates), "coupling_map": config.coupling_map or [],
                           "num_qubits": int(config.n_qubits), "max_shots": int(getattr(config, "max_shots", 0) or 0),
                           "max_circuits": int(getattr(config, "max_experiments", 0) or 300),
                           "backend": self.resource, "default_shots": self.default_shots}

    def describe(self) -> dict:
        d = super().describe()
        d.update(self._described or {})
        d["num_qubits"] = min(int(d["num_qubits"]), self.spec.limits.max_qubits)
        names = set(self.target.operation_names)
        from .circuits import CONTROL_FLOW
        d["unsupported_instructions"] = sorted({*self.unsupported_instructions,
                                                *(n for n in ("reset", *CONTROL_FLOW) if n not in names)})
        return d

    def vendor_status(self) -> tuple[str, str]:
        st = self.call(self._status)
        code = str(st.status).rsplit(".", 1)[-1].lower()       # ResourceStatusCode.Online -> online
        return (code if code in ("online", "paused", "offline") else "offline"), str(st.status_reason or "")

    # the contract ------------------------------------------------------------------------------------
    def _qasm(self, t: TaskPayload, prim: str, qc) -> str:
        """The ISA circuit as OpenQASM 3, its parameters named p000000, p000001, ... in its own order
        (once per template)."""
        def make():
            from qiskit import qasm3
            from qiskit.circuit import Parameter
            names = _param_names(len(qc.parameters))
            renamed = qc.assign_parameters({p: Parameter(n) for p, n in zip(qc.parameters, names)})
            return qasm3.dumps(renamed, disable_constants=True, allow_aliasing=True)
        return self._prepared.get_or(("qasm", prim, t.template), make)

    def _payload(self, tasks: list[TaskPayload]) -> tuple[str, dict]:
        groups = group_mergeable(tasks)
        pubs = self._pubs(groups)
        prims = {p for p, _, _ in pubs}
        if len(prims) != 1:
            raise TaskError("kind: one remote job runs one kind of task", field="kind")
        prim = prims.pop()
        out = []
        for g, (_, pub, _) in zip(groups, pubs):
            qasm, values = self._qasm(g[0], prim, pub[0]), pub[-2]
            values = None if values is None else np.asarray(values).tolist()
            if prim == "sample":
                out.append([qasm, values, int(pub[2])])
            else:
                out.append([qasm, _observables_json(pub[1]), values,
                            float(pub[3]) or 1.0 / np.sqrt(self.default_shots)])
        if prim == "sample":
            return "sampler", {"pubs": out, "shots": self.default_shots, "version": 2, "support_qiskit": True,
                               "options": {}}
        return "estimator", {"pubs": out, "version": 2, "support_qiskit": True, "options": {}}

    def submit(self, tasks: list[TaskPayload], token: str) -> str:
        import qrmi
        program, body = self._payload(tasks)
        if self._session is None and self.options.get("acquire", True):
            self._session = self.call(self._wrap(self.qr.acquire))
        return self.call(self._task_start, qrmi.Payload.QiskitPrimitive(input=json.dumps(body), program_id=program))

    def poll(self, job_id: str) -> tuple[RemoteStatus, str]:
        import qrmi
        try:
            st = self.call(self._task_status, job_id)
        except qrmi.TaskNotFoundError as e:
            return RemoteStatus.LOST, str(e)[:300]
        status = {qrmi.TaskStatus.Queued: RemoteStatus.QUEUED, qrmi.TaskStatus.Running: RemoteStatus.RUNNING,
                  qrmi.TaskStatus.Completed: RemoteStatus.DONE, qrmi.TaskStatus.Failed: RemoteStatus.FAILED,
                  qrmi.TaskStatus.Cancelled: RemoteStatus.CANCELLED}[st]
        reason = ""
        if status == RemoteStatus.FAILED:     # the status carries no reason: the job's log does
            try:
                reason = str(self.call(self._wrap(self.qr.task_logs), job_id))[-500:]
            except (DeviceError, qrmi.QrmiError):
                pass
        return status, reason

    def cancel(self, job_id: str) -> None:
        import qrmi
        try:
            self.call(self._task_stop, job_id)
        except qrmi.TaskNotFoundError:
            pass

    def result(self, job_id: str, tasks: list[TaskPayload]) -> list[dict]:
        from qiskit_ibm_runtime.json import RuntimeDecoder
        res = json.loads(self.call(self._task_result, job_id).value, cls=RuntimeDecoder)
        spans = (res.metadata.get("execution") or {}).get("execution_spans")
        if spans is not None and len(spans):
            # the service's own measure of the job's quantum time: what is charged
            self._usage[job_id] = max(0.0, (spans.stop - spans.start).total_seconds())
        groups = group_mergeable(tasks)
        pubs = self._pubs(groups)
        by_id: dict[str, dict] = {}
        for g, (_, _, post), pub_result in zip(groups, pubs, res):
            for t, r in zip(g, split_rows(post(pub_result.data), g)):
                by_id[t.id] = r
        return [by_id[t.id] for t in tasks]

    def usage_s(self, job_id: str) -> float | None:
        return self._usage.pop(job_id, None)

    def close(self) -> None:
        if self._session is not None:
            try:
                self.call(self._wrap(self.qr.release), self._session)
            except DeviceError:
                pass
        super().close()


def _observables_json(obs):
    """Observables as the service's JSON: nested lists of {pauli: coefficient} (real coefficients)."""
    if isinstance(obs, list):
        return [_observables_json(o) for o in obs]
    return {label: float(np.real(c)) for label, c in obs.to_list()}
