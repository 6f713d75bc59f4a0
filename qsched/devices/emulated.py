"""An emulated QPU: aer with a real device's noise model and coupling map, holding the device for the
time a QPU would take (setup + shots x repetition time), so scheduling studies look like a QPU."""
from __future__ import annotations

import time

from .aer import AerDevice, _columns
from .base import TaskError
from .circuits import CONTROL_FLOW


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


class EmulatedQPUDevice(AerDevice):
    type = "emulated-qpu"

    def __init__(self, spec):
        super().__init__(spec)
        from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager
        from qiskit_aer import AerSimulator
        from qiskit_aer.primitives import EstimatorV2, SamplerV2
        o = self.options
        self.setup_s = float(o.get("setup_s", 0.05))
        self.rep_s = float(o.get("rep_s", 100e-6))
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
        d.update(setup_s=self.setup_s, rep_s=self.rep_s, default_shots=self.default_shots,
                 unsupported_instructions=sorted({*self.unsupported_instructions,
                                                  *(n for n in ("reset", *CONTROL_FLOW) if n not in names)}))
        return d

    # transpiled once per template for the device (40-65 ms each time otherwise)
    def _sample_circuit(self, t):
        def make():
            qc, _ = super(EmulatedQPUDevice, self)._sample_circuit(t)
            isa = self.passes.run(qc)
            return isa, _columns(isa, t.circuit)
        return self._prepared.get_or(("isa-sample", t.template), make)

    def _estimate_circuit(self, t):
        def make():
            qc, _, measured = super(EmulatedQPUDevice, self)._estimate_circuit(t)
            isa = self.passes.run(qc)
            return isa, _columns(isa, t.circuit), measured
        return self._prepared.get_or(("isa-estimate", t.template), make)

    def _pubs(self, groups):
        for g in groups:
            for t in g:
                if not t.shots:      # a QPU has no exact mode
                    t.shots = self.default_shots
                if t.kind == "gradient":
                    raise TaskError("kind: gradients are not offered by an emulated QPU; use estimate tasks "
                                    "with shifted parameters or a simulator pool", field="kind")
        pubs = super()._pubs(groups)
        out = []
        for prim, pub, post in pubs:       # observables follow the transpiled layout
            if prim == "estimate":
                qc, obs, params, prec = pub
                pub = (qc, _with_layout(obs, qc.layout), params, prec)
            out.append((prim, pub, post))
        return out

    def run(self, tasks):
        start = time.perf_counter()
        out = super().run(tasks)
        shots = sum((t.shots or self.default_shots) * t.bindings for t in tasks)
        modelled = self.setup_s + shots * self.rep_s
        left = modelled - (time.perf_counter() - start)
        if left > 0:
            time.sleep(left)
        return out


def _with_layout(obs, layout):
    if isinstance(obs, list):
        return [_with_layout(o, layout) for o in obs]
    return obs.apply_layout(layout)
