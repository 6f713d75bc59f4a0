"""A BackendV2 over a qsched pool: `transpile(qc, backend)` targets the pool's devices, and
`backend.run(circuits)` returns counts (and memory), so Qiskit's BackendSamplerV2 and
BackendEstimatorV2 work on top of it unchanged. For parameter sweeps prefer SamplerV2/EstimatorV2
from this package: they send one template plus a parameter array instead of one circuit per binding."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
from qiskit.circuit import (
    ForLoopOp,
    IfElseOp,
    QuantumCircuit,
    SwitchCaseOp,
    WhileLoopOp,
)
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.providers import BackendV2, Options
from qiskit.result import Result
from qiskit.result.models import ExperimentResult, ExperimentResultData
from qiskit.transpiler import CouplingMap, Target

from .convert import memory_to_hex, registers_to_memory, result_field
from .jobs import QschedJob
from .primitives import pub_seeds
from .session import SessionHandle, as_sdk_error
from ..errors import BadRequest, QschedError

# The statevector simulator's native gates that QPY carries as standard gates (aer's extra
# instructions such as save_* or kraus are not for user circuits).
AER_BASIS = ("ccx", "ccz", "cp", "crx", "cry", "crz", "cswap", "csx", "cu", "cu1", "cu3", "cx", "cy",
             "cz", "ecr", "h", "id", "p", "r", "rx", "rxx", "ry", "ryy", "rz", "rzx", "rzz", "s",
             "sdg", "swap", "sx", "sxdg", "t", "tdg", "u", "u1", "u2", "u3", "x", "y", "z")
# What the lightning worker converts to PennyLane ops (qsched/devices/circuits.py).
LIGHTNING_BASIS = ("ccx", "cp", "crx", "cry", "crz", "cswap", "cx", "cy", "cz", "ecr", "h", "id", "iswap",
                   "p", "rx", "rxx", "ry", "ryy", "rz", "rzz", "s", "sdg", "swap", "sx", "sxdg", "t", "tdg",
                   "u", "u1", "u3", "x", "y", "z")
_CONTROL_FLOW = {"if_else": IfElseOp, "while_loop": WhileLoopOp, "for_loop": ForLoopOp,
                 "switch_case": SwitchCaseOp}


def build_target(num_qubits: int, basis_gates=AER_BASIS, control_flow: bool = True,
                 description: str | None = None) -> Target:
    """An all-to-all, noiseless Target: every listed gate on every qubit (tuple), as a simulator is."""
    mapping = get_standard_gate_name_mapping()
    target = Target(description=description, num_qubits=num_qubits)
    for name in list(basis_gates) + ["measure", "reset", "delay"]:
        if name in mapping and name not in target:
            target.add_instruction(mapping[name], properties=None, name=name)
    if control_flow:
        for name, cls in _CONTROL_FLOW.items():
            target.add_instruction(cls, name=name)
    return target


def pool_devices(devices: list, pool: str) -> list[dict]:
    """Devices of `pool` in a GET /v1/devices answer (a device lists its pool or pools)."""
    out = []
    for d in devices:
        pools = d.get("pools") or ([d["pool"]] if d.get("pool") else [])
        if pool in pools or d.get("name") == pool or d.get("type") == pool:
            out.append(d)
    return out


def _described(d: dict) -> dict:
    """What the device's worker published (describe(), carried by its heartbeat), over the listing."""
    return {**(d.get("worker") or {}), **{k: v for k, v in d.items() if v is not None}}


def target_for_pool(devices: list, pool: str) -> Target:
    """The pool's Target: qubits of its smallest device (a circuit must fit any device the
    scheduler picks), gates that all of its devices run. A QPU's worker publishes its basis gates and
    coupling map (describe()); where the pool's devices share one coupling map the Target has it, so
    `transpile(qc, backend)` maps circuits to the device's connectivity."""
    devs = [_described(d) for d in (pool_devices(devices, pool) or list(devices))]
    if not devs:
        raise BadRequest(f"pool: no devices found for pool {pool!r}", field="pool")
    nq = min(int(d.get("num_qubits") or d.get("max_qubits") or 0) for d in devs)
    basis: set[str] | None = None
    for d in devs:
        b = d.get("basis_gates") or (LIGHTNING_BASIS if d.get("type") == "lightning" else AER_BASIS)
        basis = set(b) if basis is None else basis & set(b)
    maps = {json.dumps(sorted(map(list, d["coupling_map"]))) for d in devs if d.get("coupling_map")}
    if len(maps) == 1 and all(d.get("coupling_map") for d in devs):
        edges = [tuple(e) for e in json.loads(maps.pop()) if max(e) < nq]
        unsupported = set().union(*(d.get("unsupported_instructions") or () for d in devs))
        extra = [n for n in ("measure", "delay", "reset") if n not in unsupported]
        return Target.from_configuration(basis_gates=sorted(basis or ()) + extra, num_qubits=nq,
                                         coupling_map=CouplingMap(edges))
    return build_target(nq, sorted(basis or ()), control_flow=all(d.get("type") != "lightning" for d in devs),
                        description=f"qsched pool {pool}")


def _experiment_result(circuit: QuantumCircuit, result, shots: int, memory: bool) -> ExperimentResult:
    registers = result_field(result, "registers") or {}
    bits = registers_to_memory(circuit, registers, shots)
    hexes = memory_to_hex(bits)
    counts = dict(Counter(hexes))
    header = {"name": circuit.name, "creg_sizes": [[c.name, c.size] for c in circuit.cregs],
              "memory_slots": circuit.num_clbits, "n_qubits": circuit.num_qubits,
              "metadata": circuit.metadata}
    data = ExperimentResultData(counts=counts, memory=hexes if memory else None)
    meta = result_field(result, "meta") or {}
    return ExperimentResult(shots=shots, success=True, data=data, meas_level=2, status="DONE",
                            header=header, metadata={"qsched": dict(meta)})


class QschedBackend(BackendV2):
    """A qsched pool as a Qiskit backend.

    Args:
        pool: the pool to schedule on (default: the Slurm job's session pool, else "aer").
        client / session: reuse an existing qsched.Client or session.
        target: skip the GET /v1/devices lookup (e.g. tests, or a pool not yet up).
    """

    def __init__(self, pool: str | None = None, *, client=None, session=None, target: Target | None = None,
                 name: str | None = None, timeout: float | None = None):
        self._handle = SessionHandle(pool=pool, client=client, session=session, default_pool="aer",
                                     name="qiskit-backend")
        super().__init__(provider=None, name=name or f"qsched_{self._handle.pool}", backend_version="1")
        self._target = target
        self._timeout = timeout

    @classmethod
    def _default_options(cls):
        return Options(shots=1024, memory=False, seed_simulator=None)

    @property
    def target(self) -> Target:
        if self._target is None:
            client = self._handle.client
            try:
                devices = client.devices()
            except QschedError as e:
                raise as_sdk_error(e) from e
            if isinstance(devices, dict):
                devices = devices.get("devices", [])
            self._target = target_for_pool(devices, self._handle.pool or "aer")
        return self._target

    @property
    def max_circuits(self):
        return None           # all circuits of a run() go in one request

    @property
    def session(self):
        return self._handle.get()

    def close(self):
        self._handle.close()

    def run(self, run_input, **options) -> QschedJob:
        """Sample bound circuits. Options: shots, memory, seed_simulator (the same seed gives the
        same counts; each circuit of a call gets its own stream)."""
        circuits = [run_input] if isinstance(run_input, QuantumCircuit) else list(run_input)
        shots = int(options.get("shots") or self.options.shots)
        memory = bool(options.get("memory", self.options.memory))
        seed = options.get("seed_simulator", self.options.seed_simulator)
        for qc in circuits:
            if qc.parameters:
                raise BadRequest(f"circuit {qc.name!r} has unbound parameters "
                                 f"({', '.join(p.name for p in qc.parameters)}); bind them, or use "
                                 "qsched.qiskit.SamplerV2 with parameter values", field="parameters")
        try:
            seeds = pub_seeds(seed, len(circuits))
            tasks = [{"kind": "sample", "template": self._handle.upload(qc), "params": np.zeros((1, 0)),
                      "shots": shots, "seed": s} for qc, s in zip(circuits, seeds)]
            futures = self._handle.get().submit_many(tasks) if tasks else []
        except QschedError as e:
            raise as_sdk_error(e) from e
        name = self.name

        def finalize(results):
            exps = [_experiment_result(qc, r, shots, memory) for qc, r in zip(circuits, results)]
            return Result(backend_name=name, backend_version=self.backend_version, job_id=job.job_id(),
                          success=True, results=exps, status="COMPLETED")

        job = QschedJob(self, futures, finalize, job_id=getattr(futures[0], "id", None) if futures else None,
                        timeout=self._timeout)
        return job
