"""qiskit-aer V2 primitives. All bindings of a group of merged tasks go into one PUB: Aer runs the
simulator once per PUB, so bindings batch 5-10x better than separate PUBs (notes/SIMULATORS.md)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..wire import ROWS_METADATA_KEY
from .base import LRU, Device, TaskError, TaskPayload, split_rows
from .circuits import (
    CONTROL_FLOW,
    NON_GATES,
    SHIFTABLE,
    analyse,
    check_shiftable,
    dephase,
    final_measurements,
    flatten,
    shift_bindings,
    unrolled,
)

# what aer's statevector method runs natively (AerSimulator's basis gates, less its own save/noise
# instructions); everything else (composite instructions, to_gate(), library gates such as iswap)
# is flattened into these once per template: aer itself would fail with "unknown instruction"
_AER_GATES = frozenset({
    "ccx", "ccz", "cp", "crx", "cry", "crz", "cswap", "csx", "cu", "cu1", "cu3", "cx", "cy", "cz",
    "ecr", "h", "p", "r", "rx", "rxx", "ry", "ryy", "rz", "rzx", "rzz", "s", "sdg", "swap", "sx",
    "sxdg", "t", "tdg", "u", "u1", "u2", "u3", "x", "y", "z", "reset", "unitary", "diagonal", "mcx",
}) | (NON_GATES - {"global_phase"}) | CONTROL_FLOW     # aer: "unknown instruction: global_phase" (flatten drops it)


# gates whose angles aer binds per parameter row; with two or more rows, a template angle in cp, crx,
# cry, crz, cu1, cu3 or global_phase fails the whole call ("Result for experiment 1 could not be
# found", aer 0.18): those are flattened into these
_AER_BINDABLE = frozenset({"cu", "p", "r", "rx", "rxx", "ry", "ryy", "rz", "rzx", "rzz", "u", "u1", "u2", "u3"})


def _symbolic(op) -> bool:
    return any(getattr(x, "parameters", None) for x in op.params)


def _aer_keep(op) -> bool:
    # control flow is kept whatever its bodies hold (flatten makes each body runnable, and aer binds
    # the angles inside them per row); its params are the bodies, "symbolic" when they hold an angle
    return op.name in CONTROL_FLOW or op.name in _AER_GATES and (op.name in _AER_BINDABLE or not _symbolic(op))


def _shift_keep(op) -> bool:
    """Gradients by the two-term shift rule: gates with template angles must have a generator with
    eigenvalues +-1/2; everything else is flattened into such gates first (crx -> ry + cx, ...)."""
    if not _symbolic(op):
        return _aer_keep(op)
    return op.name in SHIFTABLE


def _sparse(terms):
    from qiskit.quantum_info import SparsePauliOp
    return SparsePauliOp.from_list([(p, c) for p, c in terms])


def _observables(g: list[TaskPayload], measured):
    """The group's observables for aer ([1, O]; with row observables (ROWS_METADATA_KEY) [rows, 1],
    row i's own, over the group's concatenated rows), and which are zero: aer refuses an all-zero
    observable ("Empty observable"), so those are estimated as the identity and zeroed afterwards (a
    measured qubit's <X>, the zero observable a client sends for an empty sum)."""
    t = g[0]
    terms = dephase(t.observables, measured, t.circuit.num_qubits)
    zero = np.array([not any(c for _, c in o) for o in terms], dtype=bool)
    ident = [["I" * t.circuit.num_qubits, 1.0]]
    ops = [_sparse(ident if z else o) for o, z in zip(terms, zero)]
    if not _by_row(t):
        return [ops], zero[None, :]
    if len(ops) != t.bindings:
        raise TaskError(f"observables: {len(ops)} observables for {t.bindings} rows; a template with "
                        f"{ROWS_METADATA_KEY} needs one per row", field="observables")
    return [[o] for o in ops] * len(g), np.tile(zero, len(g))[:, None]


def _by_row(t: TaskPayload) -> bool:
    return (getattr(t.circuit, "metadata", None) or {}).get(ROWS_METADATA_KEY) is True


def _zeroed(post, zero):
    """`zero` [1, O] or [rows, 1] (row observables): entries that are zero observables."""
    if not zero.any():
        return post

    def wrapped(d):
        out = post(d)
        for k in ("evs", "stds", "jacobian"):
            if k in out:
                out[k] = np.array(out[k], dtype=float)
                mask = np.broadcast_to(zero, out[k].shape[:2])
                out[k][mask] = 0.0
        return out
    return wrapped


class AerDevice(Device):
    type = "aer"
    # offered in describe(): templates asking for row observables (ROWS_METADATA_KEY); the QPU
    # subclasses do not offer them yet (a vendor's estimator, untried with them)
    row_observables = True

    def __init__(self, spec):
        super().__init__(spec)
        from qiskit_aer.primitives import EstimatorV2, SamplerV2
        backend_options = {"method": self.options.get("method", "statevector"),
                           "max_parallel_threads": int(self.options.get("max_parallel_threads", 1))}
        if self.options.get("device"):
            backend_options["device"] = self.options["device"]      # "GPU" with qiskit-aer-gpu
        seed = self.options.get("seed")
        run_options = {"seed_simulator": seed} if seed is not None else {}
        self.estimator = EstimatorV2(options={"backend_options": backend_options, "run_options": run_options})
        self.sampler = SamplerV2(options={"backend_options": backend_options, "run_options": run_options})
        self._prepared = LRU()

    # per-template preparation, cached: the circuits a task kind actually runs
    def _sample_circuit(self, t: TaskPayload):
        """(circuit, columns of the task's params it binds, in its own parameter order)."""
        def make():
            qc = flatten(t.circuit, _aer_keep, "aer")
            if not qc.num_clbits:
                qc = qc.measure_all(inplace=False)
            return qc, _columns(qc, t.circuit)
        return self._prepared.get_or(("sample", t.template), make)

    def _estimate_circuit(self, t: TaskPayload):
        """(circuit without its final measurements, param columns, measured qubits)."""
        def make():
            qc = flatten(t.circuit, _aer_keep, "aer")
            measured = final_measurements(qc)
            if measured:
                qc = qc.remove_final_measurements(inplace=False)
            return qc, _columns(qc, t.circuit), measured
        return self._prepared.get_or(("estimate", t.template), make)

    def _gradient_program(self, t: TaskPayload):
        def make():
            qc = flatten(t.circuit, _shift_keep, "aer")
            measured = final_measurements(qc)
            if measured:
                qc = qc.remove_final_measurements(inplace=False)
            amap = analyse(qc, t.circuit.parameters)
            amap.require_linear()
            check_shiftable(amap)
            return unrolled(qc, amap), amap, measured
        return self._prepared.get_or(("gradient", t.template), make)

    def _pubs(self, groups: list[list[TaskPayload]]):
        """One PUB per group: (primitive, pub, post) where post(pub result data) -> result arrays.

        Aer 0.18 mishandles several bindings of a circuit without parameters (the second comes back
        zeros, or the estimator raises): such groups run once, with the shots or values spread over the
        bindings."""
        pubs: list[tuple[str, tuple, Callable[..., dict]]] = []
        for g in groups:
            t = g[0]
            params = np.concatenate([x.params for x in g]) if len(g) > 1 else t.params
            B, P = params.shape
            if t.kind == "sample":
                if not t.shots:
                    raise TaskError("shots: sample tasks need shots >= 1", field="shots")
                qc, cols = self._sample_circuit(t)
                if len(cols):
                    pubs.append(("sample", (qc, params[:, cols], t.shots), _registers))
                else:
                    pubs.append(("sample", (qc, None, t.shots * B),
                                 lambda d, B=B: _registers(d, (B, -1))))
                continue
            precision = 0.0 if not t.shots else 1.0 / np.sqrt(t.shots)
            if t.kind == "gradient" and P and self._gradient_program(t)[1].C.shape[0]:
                qc, amap, measured = self._gradient_program(t)
                obs, zero = _observables(g, measured)
                shifted = shift_bindings(amap.angles(params))          # [B, 1+2K, K]
                # observables [1, 1, O] or, row observables, [B, 1, 1]: against [B, 1+2K, 1] bindings
                pubs.append(("estimate", (qc, [obs] if len(obs) == 1 else [[o] for o in obs],
                                          shifted[:, :, None, :], precision),
                             _zeroed(lambda d, amap=amap: _gradient(d, amap), zero)))
                continue
            qc, cols, measured = self._estimate_circuit(t)
            obs, zero = _observables(g, measured)
            if len(cols):
                pubs.append(("estimate", (qc, obs, params[:, None, cols], precision),
                             _zeroed(lambda d: {"evs": np.asarray(d.evs), "stds": np.asarray(d.stds)}, zero)))
            else:
                rows = zero.shape[1] == 1 and _by_row(t)      # row observables: [B, 1] already

                def spread(d, B=B, P=P, grad=t.kind == "gradient", rows=rows):
                    def each(a):
                        a = np.asarray(a)
                        return a.reshape(B, 1) if rows else np.broadcast_to(a.reshape(1, -1), (B, a.size)).copy()
                    evs = each(d.evs)
                    if grad:      # no template angle reaches a gate: the derivatives are zero
                        return {"evs": evs, "jacobian": np.zeros(evs.shape + (P,))}
                    return {"evs": evs, "stds": each(d.stds)}
                pubs.append(("estimate", (qc, obs if rows else obs[0], None, precision), _zeroed(spread, zero)))
        return pubs

    def describe(self) -> dict:
        d = super().describe()
        if self.row_observables:
            d["row_observables"] = ROWS_METADATA_KEY
        return d

    def run_group(self, tasks):
        return self.run_groups([tasks])[0]

    def run(self, tasks):
        # one estimator call and one sampler call for the whole batch, not one per group
        from .base import group_mergeable
        groups = group_mergeable(tasks)
        results: dict[str, object] = {}
        try:
            for g, res in zip(groups, self.run_groups(groups)):
                for t, r in zip(g, res):
                    results[t.id] = r
        except Exception:
            return super().run(tasks)        # isolate the failing group, keep the others
        return [results[t.id] for t in tasks]

    def run_groups(self, groups):
        """Unseeded groups share one estimator and one sampler call; a seeded group (one task, see
        group_mergeable) gets calls of its own with the task's seed."""
        pubs = self._pubs(groups)
        out: list = [None] * len(groups)
        unseeded = [i for i, g in enumerate(groups) if g[0].seed is None]
        calls = [(unseeded, None)] + [([i], groups[i][0].seed) for i, g in enumerate(groups) if g[0].seed is not None]
        for idx, seed in calls:
            if not idx:
                continue
            est = [pubs[i][1] for i in idx if pubs[i][0] == "estimate"]
            smp = [pubs[i][1] for i in idx if pubs[i][0] == "sample"]
            results = {"estimate": iter(self._call(self.estimator, est, seed)),
                       "sample": iter(self._call(self.sampler, smp, seed))}
            for i in idx:
                prim, _, post = pubs[i]
                out[i] = split_rows(post(next(results[prim]).data), groups[i])
        return out

    @staticmethod
    def _call(primitive, pubs, seed):
        if not pubs:
            return []
        if seed is None:
            return primitive.run(pubs).result()
        run_options = primitive.options.run_options
        saved = run_options.get("seed_simulator", _UNSET)
        run_options["seed_simulator"] = seed
        try:
            return primitive.run(pubs).result()
        finally:
            if saved is _UNSET:
                run_options.pop("seed_simulator", None)
            else:
                run_options["seed_simulator"] = saved


_UNSET = object()


def _columns(qc, template) -> np.ndarray:
    index = {p: j for j, p in enumerate(template.parameters)}
    return np.array([index[p] for p in qc.parameters], dtype=np.int64)


def _registers(data, shape=None) -> dict:
    regs = {}
    for name, ba in data.items():
        arr = ba.array
        if shape is not None:      # [1, B * shots, bytes] -> [B, shots, bytes] (bytes may be 0)
            arr = arr.reshape(shape[0], arr.shape[-2] // shape[0] if arr.ndim > 1 else 1, arr.shape[-1])
        regs[name] = {"num_bits": ba.num_bits, "array": arr}
    return {"registers": regs}


def _gradient(data, amap) -> dict:
    evs = np.asarray(data.evs)                                   # [B, 1+2K, O]
    K = amap.C.shape[0]
    dphi = (evs[:, 1:1 + K, :] - evs[:, 1 + K:, :]) / 2         # [B, K, O]: two-term shift rule
    return {"evs": evs[:, 0, :], "jacobian": np.einsum("bko,kp->bop", dphi, amap.C)}
