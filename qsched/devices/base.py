"""What every device implements. A device runs in a worker process, never in the daemon."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import QschedError
from ..models import DeviceSpec



class TaskError(QschedError):
    """The task cannot run on this device (unsupported gate, bad observable, ...): fails the task only."""
    code = "task_failed"


@dataclass
class TaskPayload:
    id: str
    kind: str                       # sample | estimate | gradient
    template: str                   # digest
    circuit: Any                    # qiskit QuantumCircuit (decoded once per template per worker)
    params: np.ndarray              # [bindings, num_parameters] float64
    shots: int | None = None
    observables: list = field(default_factory=list)   # wire form [[["ZZ", 1.0], ...], ...]
    method: str | None = None
    seed: int | None = None         # the simulator's seed for this task alone

    @property
    def bindings(self) -> int:
        return self.params.shape[0]


def group_mergeable(tasks: list[TaskPayload]) -> list[list[TaskPayload]]:
    """Tasks that can share one simulator call (same template, kind, shots, observables, method).
    A seeded task runs alone: its samples must not depend on what it was batched with."""
    groups: dict[tuple, list[TaskPayload]] = {}
    for t in tasks:
        key = (t.template, t.kind, t.shots, t.method, repr(t.observables), None if t.seed is None else t.id)
        groups.setdefault(key, []).append(t)
    return list(groups.values())


def _rows(v, start: int, stop: int):
    if isinstance(v, dict):   # sample registers: {name: {"num_bits", "array"}}
        return {k: _rows(x, start, stop) if isinstance(x, (dict, np.ndarray)) else x for k, x in v.items()}
    return v[start:stop]


def split_rows(arrays: dict, tasks: list[TaskPayload]) -> list[dict]:
    """Cut arrays whose first axis runs over the group's concatenated bindings back into per-task results."""
    out, start = [], 0
    for t in tasks:
        stop = start + t.bindings
        out.append({k: _rows(v, start, stop) for k, v in arrays.items()})
        start = stop
    return out


class LRU(OrderedDict):
    """Per-template preparations (decoded, transpiled, compiled), least recently used dropped first."""

    def __init__(self, size: int = 256):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class Device:
    """Subclasses implement `run_group` for tasks that share one call; `run` handles grouping."""
    type = "base"
    kinds: tuple[str, ...] = ("sample", "estimate", "gradient")
    # Qiskit instruction names this device refuses (after flattening composites into what it runs):
    # published in describe(), so the daemon refuses such a template at upload, naming the pool
    # the input-state slot (a state sent as data) is for devices that advertise it (lightning)
    unsupported_instructions: tuple[str, ...] = ("qsched_state",)

    def __init__(self, spec: DeviceSpec):
        self.spec = spec
        self.options = dict(spec.options)

    def describe(self) -> dict:
        return {"type": self.type, "kinds": list(self.kinds), "num_qubits": self.spec.limits.max_qubits,
                "unsupported_instructions": sorted(self.unsupported_instructions)}

    def run(self, tasks: list[TaskPayload]) -> list[dict | Exception]:
        results: dict[str, dict | Exception] = {}
        for group in group_mergeable(tasks):
            try:
                if group[0].kind not in self.kinds:
                    raise TaskError(f"kind: device type {self.type} does not run {group[0].kind!r} tasks",
                                    field="kind")
                for t, r in zip(group, self.run_group(group)):
                    results[t.id] = r
            except Exception as e:  # one bad group must not fail the others
                for t in group:
                    results[t.id] = e
        return [results[t.id] for t in tasks]

    def run_group(self, tasks: list[TaskPayload]) -> list[dict]:
        raise NotImplementedError

    def close(self) -> None:
        pass
