"""An emulated QPU: aer with a real device's noise model and coupling map, holding the device for the
time a QPU would take (setup + shots x repetition time), so scheduling studies look like a QPU."""
from __future__ import annotations

import time
from typing import Any

from .aer import AerDevice, _columns
from .base import TaskError
from .circuits import CONTROL_FLOW
from .profiles import timing


def _fake_backend(name: str, num_qubits: int, seed: int):
    if name == "generic":
        from qiskit.providers.fake_provider import GenericBackendV2
        return GenericBackendV2(num_qubits=num_qubits, seed=seed)
    try:  # optional: a real device's calibration snapshot
        import qiskit_ibm_runtime.fake_provider as fp
    except ImportError:
        raise TaskError(f"options.backend: {name!r} needs qiskit-ibm-runtime; use 'generic'",
                        field="options.backend") from None
    return getattr(fp, name)()


class IsaDevice(AerDevice):
    """AerDevice's PUBs made for a QPU: transpiled once per template for its Target (`self.passes`),
    observables laid out like the transpiled circuit, shots defaulted (a QPU has no exact mode).
    Shared by the emulated QPU and remote QPUs (qrmi)."""
    passes: Any
    default_shots: int
    row_observables = False

    # transpiled once per template for the device (40-65 ms each time otherwise)
    def _sample_circuit(self, t):
        def make():
            qc, _ = super(IsaDevice, self)._sample_circuit(t)
            isa = self.passes.run(qc)
            return isa, _columns(isa, t.circuit)
        return self._prepared.get_or(("isa-sample", t.template), make)

    def _estimate_circuit(self, t):
        def make():
            qc, _, measured = super(IsaDevice, self)._estimate_circuit(t)
            isa = self.passes.run(qc)
            return isa, _columns(isa, t.circuit), measured
        return self._prepared.get_or(("isa-estimate", t.template), make)

    def _pubs(self, groups):
        for g in groups:
            for t in g:
                if not t.shots:      # a QPU has no exact mode
                    t.shots = self.default_shots
                if t.kind == "gradient":
                    raise TaskError("kind: gradients are not offered by a QPU; use estimate tasks "
                                    "with shifted parameters or a simulator pool", field="kind")
        pubs = super()._pubs(groups)
        out = []
        for prim, pub, post in pubs:       # observables follow the transpiled layout
            if prim == "estimate":
                qc, obs, params, prec = pub
                pub = (qc, _with_layout(obs, qc.layout), params, prec)
            out.append((prim, pub, post))
        return out


class EmulatedQPUDevice(IsaDevice):
    type = "emulated-qpu"

    def __init__(self, spec):
        super().__init__(spec)
        from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager
        from qiskit_aer import AerSimulator
        from qiskit_aer.primitives import EstimatorV2, SamplerV2
        o = self.options
        self.timing = timing(o)
        self.setup_s, self.rep_s = self.timing["setup_s"], self.timing["rep_s"]
        self.default_shots = int(o.get("default_shots", 1000))
        seed = int(o.get("seed", 1234))
        self.backend = _fake_backend(o.get("backend", "generic"), spec.limits.max_qubits, seed)
        if o.get("noise", True):
            sim = AerSimulator.from_backend(self.backend, seed_simulator=seed)
        else:
            sim = AerSimulator(seed_simulator=seed)
        self.estimator = EstimatorV2.from_backend(sim)
        self.sampler = SamplerV2.from_backend(sim)
        self.passes = generate_preset_pass_manager(optimization_level=1, backend=self.backend, seed_transpiler=seed)
        self.hold_until = 0.0

    def describe(self):
        d = super().describe()
        # the device's transpiler cannot map what its target lacks (the generic backend has no
        # control flow)
        names = set(self.backend.target.operation_names)
        d.update(**self.timing, profile=self.options.get("profile"), default_shots=self.default_shots,
                 unsupported_instructions=sorted({*self.unsupported_instructions,
                                                  *(n for n in ("reset", *CONTROL_FLOW) if n not in names)}))
        return d

    def run(self, tasks):
        start = time.perf_counter()
        out = super().run(tasks)
        modelled = self.modelled_s(tasks)
        left = modelled - (time.perf_counter() - start)
        if left > 0:
            time.sleep(left)
        return out


    def shot_s(self, t) -> float:
        """One shot of the task's circuit as the device runs it (its transpiled gates)."""
        tm = self.timing
        if not (tm["gate_1q_s"] or tm["gate_2q_s"]):
            return tm["rep_s"] + tm["readout_s"]
        isa = (self._sample_circuit(t) if t.kind == "sample" else self._estimate_circuit(t))[0]
        n2 = sum(1 for i in isa.data if i.operation.num_qubits == 2)
        n1 = sum(1 for i in isa.data if i.operation.num_qubits == 1 and i.operation.name not in NOT_GATES)
        return tm["rep_s"] + tm["readout_s"] + n1 * tm["gate_1q_s"] + n2 * tm["gate_2q_s"]

    def modelled_s(self, tasks) -> float:
        """setup + every binding's shots x one shot's time."""
        return self.setup_s + sum((t.shots or self.default_shots) * t.bindings * self.shot_s(t) for t in tasks)


NOT_GATES = frozenset({"measure", "barrier", "delay", "reset"})


def _with_layout(obs, layout):
    if isinstance(obs, list):
        return [_with_layout(o, layout) for o in obs]
    return obs.apply_layout(layout)
