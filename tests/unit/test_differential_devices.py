"""Differential test, in process: every Qiskit standard gate on every simulator device (aer,
lightning) against Qiskit's Statevector reference. Values exactly, gradients against finite
differences of the reference, samples and shot estimates within 5 sigma. What a device cannot run
must come back as a TaskError naming the instruction, never as a number.

All gates go into one device.run() per kind (one template per gate), so the whole file costs a few
seconds. The same checks through a live daemon and both SDKs are in tests/integration/
test_differential.py."""
from __future__ import annotations

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter, ParameterVector
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.quantum_info import SparsePauliOp, Statevector

from qsched.devices import TaskError, TaskPayload, load_device
from qsched.devices.lightning_native import NativeProgram
from qsched.models import DeviceLimits, DeviceSpec

DEVICES = ["aer", "lightning"]
# not unitary gates: measure has its own tests below; delay's argument is a duration
NOT_GATES = {"measure", "delay", "reset"}
GATES = sorted(n for n in get_standard_gate_name_mapping() if n not in NOT_GATES)
SHOTS = 4000


def device(typ):
    return load_device(DeviceSpec(name=typ, type=typ, pool=typ, limits=DeviceLimits(max_qubits=8),
                                  options={"seed": 11}))


def gate_circuit(name: str, mode: str = "plain"):
    """A state that makes every gate matter (entangled, no symmetric amplitudes), the gate with one
    Parameter per argument (or a linear expression of them), then a layer that mixes the result.
    mode "constant": the gate's arguments are numbers, between two trainable rotations (a constant
    U3 there once shifted lightning's adjoint parameter indices: wrong gradients for both)."""
    proto = get_standard_gate_name_mapping()[name]
    n = max(proto.num_qubits, 1) + 1
    rng = np.random.default_rng(sum(map(ord, name)))
    if mode == "constant":
        ps = [Parameter(f"{name}_before"), Parameter(f"{name}_after")]
        gate = type(proto)(*rng.uniform(0.3, 2.8, len(proto.params)))
    else:
        ps = [Parameter(f"{name}_{j}") for j in range(len(proto.params))]
        gate = type(proto)(*[2 * p - 0.3 if mode == "linear" and j == 0 else p for j, p in enumerate(ps)])
    qc = QuantumCircuit(n)
    for q in range(n):
        qc.ry(rng.uniform(0.3, 2.8), q)
        qc.rz(rng.uniform(0.3, 2.8), q)
    for q in range(n - 1):
        qc.cx(q, q + 1)
    if mode == "constant":
        qc.ry(ps[0], 0)
    qc.append(gate, list(range(proto.num_qubits)))
    if mode == "constant":
        qc.rz(ps[1], n - 1)
        qc.cx(n - 1, 0)
    for q in range(n):
        qc.rx(rng.uniform(0.3, 2.8), q)
    values = rng.uniform(-np.pi, np.pi, (2, len(ps)))
    return qc, values


def observables(n: int) -> list:
    obs = []
    for q in range(n):
        for p in "XYZ":
            s = ["I"] * n
            s[n - 1 - q] = p
            obs.append([["".join(s), 1.0]])
    obs.append([["Z" * n, 0.5], ["X" * n, -0.25]])
    return obs


def reference(qc, params, obs):
    ops = [SparsePauliOp.from_list([tuple(t) for t in o]) for o in obs]
    out = np.empty((len(params), len(ops)))
    for b, row in enumerate(params):
        sv = Statevector(qc.assign_parameters(row) if qc.num_parameters else qc)
        out[b] = [np.real(sv.expectation_value(o)) for o in ops]
    return out


def finite_difference(qc, params, obs, eps=1e-6):
    out = np.zeros((params.shape[0], len(obs), params.shape[1]))
    for j in range(params.shape[1]):
        e = np.zeros(params.shape[1])
        e[j] = eps
        out[:, :, j] = (reference(qc, params + e, obs) - reference(qc, params - e, obs)) / (2 * eps)
    return out


def _cases(mode="plain"):
    return {name: gate_circuit(name, mode) for name in GATES}


@pytest.fixture(scope="module")
def cases():
    return _cases()


@pytest.fixture(scope="module", params=DEVICES)
def dev(request):
    return device(request.param)


def _run(dev, kind, cases, shots=None, tag=""):
    # the template digest keys the device's per-template caches: one per distinct circuit
    tasks = [TaskPayload(name, kind, f"{name}{tag}", qc, v, shots, observables(qc.num_qubits))
             for name, (qc, v) in cases.items()]
    return dict(zip(cases, dev.run(tasks)))


@pytest.mark.parametrize("mode", ["plain", "constant"])
def test_every_standard_gate_estimates_exactly(dev, mode):
    cases = _cases(mode)
    for name, out in _run(dev, "estimate", cases, tag=f"-{mode}").items():
        qc, v = cases[name]
        assert not isinstance(out, Exception), f"{dev.type} {name}: {out!r}"
        np.testing.assert_allclose(out["evs"], reference(qc, v, observables(qc.num_qubits)), atol=1e-9,
                                   err_msg=f"{dev.type} {name}")


@pytest.mark.parametrize("mode", ["plain", "linear", "constant"])
def test_every_standard_gate_differentiates(dev, mode):
    cases = _cases(mode)
    for name, out in _run(dev, "gradient", cases, tag=f"-{mode}").items():
        qc, v = cases[name]
        obs = observables(qc.num_qubits)
        assert not isinstance(out, Exception), f"{dev.type} {name}: {out!r}"
        np.testing.assert_allclose(out["evs"], reference(qc, v, obs), atol=1e-9, err_msg=f"{dev.type} {name}")
        np.testing.assert_allclose(out["jacobian"], finite_difference(qc, v, obs), atol=1e-6,
                                   err_msg=f"{dev.type} {name} gradient")


def test_every_standard_gate_estimates_with_shots(dev, cases):
    for name, out in _run(dev, "estimate", cases, SHOTS).items():
        qc, v = cases[name]
        assert not isinstance(out, Exception), f"{dev.type} {name}: {out!r}"
        exact = reference(qc, v, observables(qc.num_qubits))
        sigma = np.sqrt(np.clip(1 - exact ** 2, 1e-4, None) / SHOTS)      # unit-norm Pauli terms
        assert np.all(np.abs(out["evs"] - exact) <= 5 * sigma + 1e-9), f"{dev.type} {name}"


def _probs(qc, row):
    return Statevector(qc.assign_parameters(row) if qc.num_parameters else qc).probabilities()


def test_every_standard_gate_samples(dev, cases):
    measured = {}
    for name, (qc, v) in cases.items():
        m = qc.measure_all(inplace=False)
        measured[name] = (m, v)
    tasks = [TaskPayload(name, "sample", f"{name}-measured", qc, v, SHOTS) for name, (qc, v) in measured.items()]
    for (name, (qc, v)), out in zip(measured.items(), dev.run(tasks)):
        assert not isinstance(out, Exception), f"{dev.type} {name}: {out!r}"
        arr = out["registers"]["meas"]["array"]                     # [B, shots, bytes], big-endian
        n = qc.num_qubits
        ints = np.zeros(arr.shape[:2], dtype=np.int64)
        for byte in range(arr.shape[2]):
            ints = ints * 256 + arr[:, :, byte]
        for b in range(len(v)):
            p = _probs(cases[name][0], v[b])
            freq = np.bincount(ints[b], minlength=1 << n) / SHOTS
            sigma = np.sqrt(p * (1 - p) / SHOTS)
            assert np.all(np.abs(freq - p) <= 5 * sigma + 2e-3), f"{dev.type} {name} binding {b}"


# ---------------------------------------------------------------- measurement and non-gates
def test_final_measurements_collapse_the_state(dev):
    """aer's estimator semantics (the reference for estimates of measured circuits), exactly: after
    H and a measurement, <X> = 0 and <Z> = 0; the unmeasured qubit keeps <X> = 1."""
    t = Parameter("t")
    qc = QuantumCircuit(2, 1)
    qc.h([0, 1])
    qc.ry(t, 0)
    qc.measure(0, 0)
    obs = [[["IX", 1.0]], [["IZ", 1.0]], [["XI", 1.0]], [["XZ", 1.0]]]
    v = np.array([[0.0], [0.7]])
    est, grad = dev.run([TaskPayload("e", "estimate", "final-m", qc, v, None, obs),
                         TaskPayload("g", "gradient", "final-m", qc, v, None, obs)])
    want = np.array([[0, 0, 1, 0], [0, -np.sin(0.7), 1, -np.sin(0.7)]])
    np.testing.assert_allclose(est["evs"], want, atol=1e-9)
    np.testing.assert_allclose(grad["evs"], want, atol=1e-9)
    np.testing.assert_allclose(grad["jacobian"][:, :, 0], [[0, -1, 0, -1], [0, -np.cos(0.7), 0, -np.cos(0.7)]],
                               atol=1e-7)


def test_mid_circuit_measurement_is_refused_by_the_estimator(dev):
    qc = QuantumCircuit(1, 1)
    qc.h(0)
    qc.measure(0, 0)
    qc.h(0)
    out = dev.run([TaskPayload("e", "estimate", "mid-m", qc, np.zeros((1, 0)), None, [[["Z", 1.0]]])])[0]
    assert isinstance(out, TaskError) and "after it was measured" in out.message


def test_composite_instructions_run_everywhere(dev):
    """to_gate() and appended circuits are decomposed once per template (aer alone fails on them)."""
    t = Parameter("t")
    inner = QuantumCircuit(2, name="block")
    inner.ry(t, 0)
    inner.cx(0, 1)
    inner.append(get_standard_gate_name_mapping()["iswap"], [0, 1])
    qc = QuantumCircuit(3)
    qc.h(2)
    qc.append(inner.to_gate(), [0, 1])
    qc.append(inner.to_instruction(), [1, 2])
    v = np.array([[0.4], [-1.3]])
    obs = observables(3)
    est, grad = dev.run([TaskPayload("e", "estimate", "composite", qc, v, None, obs),
                         TaskPayload("g", "gradient", "composite", qc, v, None, obs)])
    np.testing.assert_allclose(est["evs"], reference(qc, v, obs), atol=1e-9)
    np.testing.assert_allclose(grad["jacobian"], finite_difference(qc, v, obs), atol=1e-6)


def test_reset_runs_on_aer_and_is_refused_by_name_on_lightning(dev):
    qc = QuantumCircuit(1)
    qc.h(0)
    qc.reset(0)
    out = dev.run([TaskPayload("e", "estimate", "reset", qc, np.zeros((1, 0)), None, [[["Z", 1.0]]])])[0]
    if dev.type == "aer":
        np.testing.assert_allclose(out["evs"], [[1.0]], atol=1e-9)
    else:
        assert isinstance(out, TaskError) and "'reset'" in out.message


def test_describe_declares_what_the_daemon_must_refuse(dev):
    """What describe() declares unsupported is what the device refuses by name (the daemon refuses
    those templates at upload); everything else runs."""
    declared = set(dev.describe()["unsupported_instructions"])
    if dev.type == "aer":
        assert declared == {"qsched_state"}          # only lightning takes an input state as data
    else:
        assert {"reset", "if_else", "for_loop", "while_loop", "switch_case"} <= declared
    qc = QuantumCircuit(1, 1)
    qc.h(0)
    qc.measure(0, 0)
    with qc.if_test((qc.clbits[0], 1)):
        qc.x(0)
    qc.measure(0, 0)
    out = dev.run([TaskPayload("s", "sample", "cf", qc, np.zeros((1, 0)), 200)])[0]
    if "if_else" in declared:
        assert isinstance(out, TaskError) and "'if_else'" in out.message
    else:                          # measured 1 then flipped: always 0
        assert not np.asarray(out["registers"]["c"]["array"]).any()
    assert isinstance(load_device(DeviceSpec(name="n", type="null", pool="n")).describe()["unsupported_instructions"],
                      list)


def test_box_and_control_flow_bodies_are_flattened_on_aer():
    dev = device("aer")
    inner = QuantumCircuit(1, name="inner")
    inner.x(0)
    qc = QuantumCircuit(1, 1)
    with qc.box():
        qc.append(inner.to_gate(), [0])          # a composite inside a box
    with qc.for_loop(range(2)):
        qc.append(inner.to_gate(), [0])          # ... and inside a loop body: x x x = x
    qc.measure(0, 0)
    out = dev.run([TaskPayload("s", "sample", "box", qc, np.zeros((1, 0)), 100)])[0]
    assert not isinstance(out, Exception), out
    bits = np.unpackbits(np.asarray(out["registers"]["c"]["array"]), axis=-1)[..., -1]
    assert bits.all()


def test_a_parameter_inside_control_flow_bodies_runs_on_aer_as_aers_sampler_runs_it():
    """rx(x) in an if_test body, ry(x) in a for_loop body, two rows: the samples aer's own SamplerV2
    gives with the same seed (the bodies' angles once made the whole if_else "not supported")."""
    from qiskit_aer.primitives import SamplerV2
    x = Parameter("x")
    qc = QuantumCircuit(2, 2)
    qc.h(0)
    qc.measure(0, 0)
    with qc.if_test((qc.clbits[0], 1)):
        qc.rx(x, 1)
    with qc.for_loop(range(2)):
        qc.ry(x, 0)
    qc.measure(1, 1)
    rows = np.array([[0.3], [1.9]])
    out = device("aer").run([TaskPayload("s", "sample", "cf", qc, rows, 500)])[0]
    assert not isinstance(out, Exception), out
    want = SamplerV2(seed=11).run([(qc, rows, 500)]).result()[0].data.c.array
    np.testing.assert_array_equal(out["registers"]["c"]["array"], want)


@pytest.mark.parametrize("dev", DEVICES)
def test_a_seeded_task_is_reproducible_whatever_it_is_batched_with(dev):
    dev = device(dev)
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    seeded = qc.copy()
    alone = dev.run([TaskPayload("a", "sample", "t5", seeded, np.zeros((1, 0)), 300, seed=5)])[0]
    batch = dev.run([TaskPayload("x", "sample", "t5", seeded, np.zeros((1, 0)), 300, seed=5),
                     TaskPayload("y", "sample", "t5", seeded, np.zeros((1, 0)), 300, seed=5),
                     TaskPayload("z", "sample", "t5", qc, np.zeros((1, 0)), 300)])
    for r in batch[:2]:
        np.testing.assert_array_equal(r["registers"]["meas"]["array"], alone["registers"]["meas"]["array"])
    # shot noise of an estimate too
    seeded.remove_final_measurements()
    obs = [[["ZX", 1.0]]]
    est = [dev.run([TaskPayload(i, "estimate", "t5e", seeded, np.zeros((1, 0)), 300, obs, seed=5)])[0]["evs"]
           for i in "ab"]
    np.testing.assert_array_equal(est[0], est[1])


def test_zero_width_register_on_aer():
    from qiskit.circuit import ClassicalRegister, QuantumRegister
    qc = QuantumCircuit(QuantumRegister(1, "q"), ClassicalRegister(0, "c1"), ClassicalRegister(1, "c2"))
    qc.h(0)
    qc.measure(0, 0)
    out = device("aer").run([TaskPayload("s", "sample", "z", qc, np.zeros((2, 0)), 50)])[0]
    assert not isinstance(out, Exception), out
    assert out["registers"]["c1"]["array"].shape == (2, 50, 0)
    assert out["registers"]["c2"]["array"].shape == (2, 50, 1)


# lightning's direct C++ path (qsched.devices.lightning_native) -------------------------------------

def ansatz(extra=None, n=4):
    """RY/RZ layers, a CNOT ladder, fixed Sdg and SXdg (inverse flags), an ECR (a fixed matrix),
    RZZ, CRX, CZ, RX; linear angles (the chain rule to template parameters)."""
    th = ParameterVector("t", 3 * n)
    qc = QuantumCircuit(n)
    for q in range(n):
        qc.ry(th[q], q)
        qc.rz(2 * th[n + q] - 0.1, q)
    for q in range(n - 1):
        qc.cx(q, q + 1)
    qc.sdg(0)
    qc.sxdg(1)
    qc.ecr(2, 3)
    qc.rzz(th[2 * n], 1, 2)
    qc.crx(th[2 * n + 1], 0, 3)
    qc.cz(3, 0)
    for q in range(2, n):
        qc.rx(th[2 * n + q], q)
    if extra:
        extra(qc)
    return qc


def _run_one(dev, kind, qc, params, key):
    return dev.run([TaskPayload("t0", kind, key, qc, params, None, observables(qc.num_qubits))])[0]


def test_lightning_takes_its_native_path_for_a_typical_ansatz_and_answers_exactly():
    qc = ansatz()
    params = np.random.default_rng(3).uniform(-np.pi, np.pi, (3, qc.num_parameters))
    dev = device("lightning")
    obs = observables(qc.num_qubits)
    out = _run_one(dev, "gradient", qc, params, "a")
    assert isinstance(dev._natives.get(("a", True)), NativeProgram)       # the fast path was taken
    np.testing.assert_allclose(out["evs"], reference(qc, params, obs), atol=1e-10)
    np.testing.assert_allclose(out["jacobian"], finite_difference(qc, params, obs), atol=1e-6)
    est = _run_one(dev, "estimate", qc, params, "a")
    assert isinstance(dev._natives.get(("a", False)), NativeProgram)
    np.testing.assert_allclose(est["evs"], out["evs"], atol=1e-12)
    assert not est["stds"].any()


@pytest.mark.parametrize("kind", ["estimate", "gradient"])
def test_lightning_native_and_pennylane_paths_agree_to_rounding(kind):
    qc = ansatz()
    params = np.random.default_rng(5).uniform(-np.pi, np.pi, (4, qc.num_parameters))
    fast, slow = device("lightning"), device("lightning")
    slow._native = lambda *a, **k: None
    a, b = _run_one(fast, kind, qc, params, "a"), _run_one(slow, kind, qc, params, "a")
    for k in ("evs", "jacobian") if kind == "gradient" else ("evs",):
        np.testing.assert_allclose(a[k], b[k], atol=1e-12)


def test_an_angle_in_a_matrix_op_takes_lightnings_pennylane_path():
    """U3 with angles has no C++ kernel (lightning applies its matrix, built per binding): it still
    answers, through lightning's Python device."""
    dev = device("lightning")
    qc = ansatz(lambda qc: qc.u(qc.parameters[0], 0.2, qc.parameters[1], 1))
    params = np.random.default_rng(7).uniform(-np.pi, np.pi, (2, qc.num_parameters))
    out = _run_one(dev, "estimate", qc, params, "u3")
    assert dev._natives.get(("u3", False)) is None
    np.testing.assert_allclose(out["evs"], reference(qc, params, observables(qc.num_qubits)), atol=1e-10)


def _with_state_slot(wires: list[int], n: int = 4):
    """The ansatz after an input-state slot on `wires` (the PennyLane device's AmplitudeEmbedding sent
    as data), and a params builder: random angles, the given amplitudes per binding."""
    from qiskit.circuit import Gate

    from qsched.pennylane.convert import STATE_SLOT
    psi = ParameterVector("ψ", 1 << len(wires))
    body = ansatz(n=n)
    qc = QuantumCircuit(n)
    qc.append(Gate(STATE_SLOT, len(wires), list(psi)), wires)
    qc.compose(body, inplace=True)

    def params(amplitudes: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(11)
        rows = []
        for amp in amplitudes:
            values = dict(zip(psi, amp))
            rows.append([values.get(p, rng.uniform(-np.pi, np.pi)) for p in qc.parameters])
        return np.array(rows)
    return qc, params


@pytest.mark.parametrize("wires", [[0, 1, 2, 3], [2, 1]], ids=["whole-register", "two-wires"])
@pytest.mark.parametrize("kind", ["estimate", "gradient"])
def test_lightning_native_path_prepares_input_states_and_toffolis_as_lightning_does(kind, wires):
    qc, params = _with_state_slot(wires)
    qc.ccx(0, 1, 2)
    rng = np.random.default_rng(13)
    amps = rng.normal(size=(3, 1 << len(wires)))
    amps /= np.linalg.norm(amps, axis=1, keepdims=True)
    p = params(amps)
    fast, slow = device("lightning"), device("lightning")
    slow._native = lambda *a, **k: None
    a, b = _run_one(fast, kind, qc, p, "s"), _run_one(slow, kind, qc, p, "s")
    assert isinstance(fast._natives.get(("s", kind == "gradient")), NativeProgram)
    for k in ("evs", "jacobian") if kind == "gradient" else ("evs",):
        np.testing.assert_allclose(a[k], b[k], atol=1e-12)
    # a vector of norm 2: lightning.qubit's StatePrep takes it as given (no check by default), and so
    # does each path (the values come out 4x)
    bad = p.copy()
    bad[:, [i for i, q in enumerate(qc.parameters) if q.name.startswith("ψ")]] *= 2
    a2, b2 = _run_one(fast, kind, qc, bad, "s"), _run_one(slow, kind, qc, bad, "s")
    np.testing.assert_allclose(a2["evs"], 4 * a["evs"], atol=1e-10)
    np.testing.assert_allclose(a2["evs"], b2["evs"], atol=1e-12)
