"""qml.device("qsched.qubit") against a live daemon: values and gradients equal default.qubit."""
from __future__ import annotations

import numpy as np
import pennylane as qml
import pytest
from pennylane.exceptions import DeviceError

from qsched.pennylane import QschedDevice

X0 = np.array([0.3, -1.1, 0.7, 0.2, 1.4, -0.6])


def qfunc(x):
    qml.RX(x[0], 0)
    qml.RY(x[1], 1)
    qml.CNOT([0, 1])
    qml.CRZ(x[2], [1, 2])
    qml.Rot(x[3], x[4], x[5], wires=2)
    qml.IsingXX(x[0] * 0.5, [0, 2])
    return (qml.expval(qml.Z(0) @ qml.X(2) + 0.3 * qml.Y(1)), qml.var(qml.X(1)),
            qml.probs(wires=[2, 0]))


def _flat(res):
    return qml.math.hstack([qml.math.reshape(r, (-1,)) for r in res])


@pytest.fixture
def device(client):
    dev = qml.device("qsched.qubit", wires=3, client=client)
    yield dev
    dev.close()


def test_values_and_adjoint_jacobian(device):
    x = qml.numpy.array(X0, requires_grad=True)
    ours = qml.QNode(qfunc, device, diff_method="adjoint")
    ref = qml.QNode(qfunc, qml.device("default.qubit"), diff_method="backprop")
    assert np.allclose(_flat(ours(x)), _flat(ref(x)), atol=1e-9)
    with qml.Tracker(device) as tracker:
        got = qml.jacobian(lambda x: _flat(ours(x)))(x)
    want = qml.jacobian(lambda x: _flat(ref(x)))(x)
    assert np.allclose(got, want, atol=1e-8)
    assert tracker.totals["batches"] == 1 and tracker.totals["tasks"] == 1  # values + jacobian: one task
    assert device.pool == "lightning"


def test_parameter_shift_is_one_task_on_aer(client):
    dev = QschedDevice(wires=3, pool="aer", client=client)
    x = qml.numpy.array(X0, requires_grad=True)

    def f(x):
        qml.RX(x[0], 0)
        qml.RY(x[1], 1)
        qml.CNOT([0, 1])
        qml.RZ(x[2], 1)
        qml.CNOT([1, 2])
        qml.RY(x[3], 2)
        return qml.expval(qml.Z(2) @ qml.Z(0)), qml.expval(qml.X(1))

    ours = qml.QNode(f, dev, diff_method="parameter-shift")
    ref = qml.QNode(f, qml.device("default.qubit"), diff_method="backprop")
    with qml.Tracker(dev) as tracker:
        got = qml.jacobian(lambda x: _flat(ours(x)))(x)
    assert np.allclose(got, qml.jacobian(lambda x: _flat(ref(x)))(x), atol=1e-8)
    # the shifted tapes of one gradient go out as one request and stack into one task
    assert tracker.history["tasks"][-1] == 1 and tracker.history["executions"][-1] == 8
    dev.close()


def test_shots_statistics(device):
    @qml.set_shots(4000)
    @qml.qnode(device)
    def f(x):
        qml.RX(x, 0)
        qml.CNOT([0, 1])
        return qml.expval(qml.X(0)), qml.probs(wires=[1]), qml.counts(wires=[0, 1])

    ev, probs, counts = f(1.1)
    p1 = np.sin(0.55) ** 2
    assert abs(ev) < 0.1                              # <X> = 0 after RX on |0>
    assert abs(probs[1] - p1) < 5 * np.sqrt(p1 * (1 - p1) / 4000)
    assert set(counts) <= {"00", "11"} and sum(counts.values()) == 4000


def test_batch_of_tapes_is_one_request(device):
    tapes = [qml.tape.QuantumScript([qml.RY(a, 0), qml.CNOT([0, 1])], [qml.expval(qml.Z(1))])
             for a in np.linspace(0, np.pi, 7)]
    with qml.Tracker(device) as tracker:
        res = qml.execute(tapes, device, diff_method=None)
    assert np.allclose(res, np.cos(np.linspace(0, np.pi, 7)), atol=1e-9)
    assert tracker.totals["batches"] == 1 and tracker.totals["tasks"] == 1


def test_torch_layer_amplitude_embedding_adjoint(client):
    torch = pytest.importorskip("torch")
    n = 3

    def circuit(inputs, weights):
        qml.AmplitudeEmbedding(inputs, wires=range(n), normalize=True, pad_with=0.0)
        qml.StronglyEntanglingLayers(weights, wires=range(n))
        return [qml.expval(qml.Z(i)) for i in range(2)]

    shapes = {"weights": (1, n, 3)}
    torch.manual_seed(0)
    w0 = torch.rand(1, n, 3)
    x = torch.rand(4, 6, dtype=torch.float64)       # padded to 8 amplitudes

    def run(dev, diff):
        layer = qml.qnn.TorchLayer(qml.QNode(circuit, dev, interface="torch", diff_method=diff), shapes)
        with torch.no_grad():
            layer.weights.copy_(w0)
        out = layer(x)
        out.sum().backward()
        return out.detach().numpy(), layer.weights.grad.numpy()

    dev = QschedDevice(wires=n, client=client)
    with qml.Tracker(dev) as tracker:
        out, grad = run(dev, "adjoint")
    want_out, want_grad = run(qml.device("default.qubit"), "backprop")
    assert np.allclose(out, want_out, atol=1e-8)
    assert np.allclose(grad, want_grad, atol=1e-7)
    assert tracker.totals["tasks"] == 1               # 4 inputs -> 4 rows of one gradient task
    dev.close()


# --------------------------------------------------------------------------- errors, PennyLane's side
def _expval_z(wire):
    return lambda: qml.expval(qml.Z(wire))


def _not_qiskit(e):
    from qiskit.providers import JobError
    import qsched.errors
    assert isinstance(e, DeviceError) and isinstance(e, qsched.errors.QschedError)
    assert not isinstance(e, JobError)


def test_refusal_is_a_device_error(client):
    import qsched.errors
    from qsched.pennylane.errors import DeviceRequestRefused
    dev = QschedDevice(wires=17, client=client)            # pool lightning: at most 16 qubits
    with pytest.raises(DeviceError, match="17 qubits") as info:
        qml.QNode(_expval_z(16), dev)()
    _not_qiskit(info.value)
    assert isinstance(info.value, (DeviceRequestRefused, qsched.errors.BadRequest))
    assert info.value.status == 400 and info.value.field == "template"


def test_timeout_is_a_device_error(client):
    import qsched.errors
    dev = QschedDevice(wires=14, client=client, timeout=1e-3)

    def f(x):
        for i in range(14):
            qml.RY(x, i)
        for i in range(13):
            qml.CNOT([i, i + 1])
        return qml.expval(qml.Z(0))
    with pytest.raises(DeviceError, match="not finished within") as info:
        qml.QNode(f, dev)(np.linspace(0, 1, 500))
    _not_qiskit(info.value)
    assert isinstance(info.value, qsched.errors.Timeout)


class _FailingSession:
    """A session whose tasks fail as a worker's would (TaskFailed / TaskCancelled from the client)."""
    pool = "lightning"

    def __init__(self, err):
        self.err = err

    def upload(self, circuit):
        return "0" * 64

    def submit_many(self, tasks):
        err = self.err

        class Future:
            def result(self, timeout=None):
                raise err
        return [Future() for _ in tasks]


@pytest.mark.parametrize("name", ["TaskFailed", "TaskCancelled", "Timeout", "Unavailable", "QschedJobError"])
def test_task_errors_are_device_errors(name):
    import qsched.errors
    from qsched.pennylane import errors as plerr
    if name == "QschedJobError":      # what the Qiskit layer raises: mapped back by its code
        from qsched.qiskit.session import QschedJobError
        err, want = QschedJobError("task x: worker said no", field="template"), qsched.errors.TaskFailed
    else:
        want = getattr(qsched.errors, name)
        err = want("task x: worker said no", field="template")
    dev = QschedDevice(wires=1, session=_FailingSession(err))
    with pytest.raises(DeviceError, match="worker said no") as info:
        qml.QNode(_expval_z(0), dev)()
    e = info.value
    _not_qiskit(e)
    assert isinstance(e, want) and isinstance(e, plerr.QschedDeviceError)
    assert e.field == "template" and e.__cause__ is err


def test_amplitude_embedding_travels_as_data_on_lightning(client):
    """On a pool whose workers prepare states (lightning), a non-trainable AmplitudeEmbedding is sent
    as data: one template of the circuit's own gates, the amplitudes as the rows' last columns;
    elsewhere (aer) the RY tree. Values and weight gradients equal lightning.qubit's either way."""
    import torch
    from qsched.pennylane import convert

    def qf(inputs, w):
        qml.AmplitudeEmbedding(inputs, wires=[1, 2, 0], normalize=True)
        qml.RY(w[0], 0)
        qml.CNOT([0, 3])
        qml.U3(w[1], w[2], w[0], wires=3)
        qml.CRZ(w[2], [1, 3])
        return qml.expval(qml.Z(3)), qml.expval(qml.X(0) @ qml.Z(2))

    x = torch.tensor(np.random.default_rng(4).random((6, 8)) - 0.3)
    results = {}
    for name, dev in [("lightning", QschedDevice(wires=4, client=client)),
                      ("aer", QschedDevice(wires=4, pool="aer", client=client)),
                      ("ref", qml.device("lightning.qubit", wires=4))]:
        w = torch.tensor([0.3, -0.4, 0.9], requires_grad=True)
        diff = "adjoint" if name != "aer" else "parameter-shift"
        r = qml.QNode(qf, dev, interface="torch", diff_method=diff)(x, w)
        (r[0].sum() + (r[1] ** 2).sum()).backward()
        results[name] = (r[0].detach().numpy(), r[1].detach().numpy(), w.grad.numpy())
        if name != "ref":
            (tpl,) = dev._templates._items.values()
            first = tpl.circuit.data[0].operation.name
            assert (first == convert.STATE_SLOT) == (name == "lightning"), (name, first)
            dev.close()
    for name in ("lightning", "aer"):
        for got, want in zip(results[name], results["ref"]):
            assert np.allclose(got, want, atol=1e-8), name


def test_state_with_its_global_phase_on_lightning_refused_on_aer(client):
    """qml.state() is the lightning worker's own state vector: equal to default.qubit's, global
    phase included (RZ, U3, GlobalPhase, complex Mottonen, an embedded input); aer: refused by name."""
    rng = np.random.default_rng(1)
    st = rng.normal(size=8) + 1j * rng.normal(size=8)
    st /= np.linalg.norm(st)

    def f(x):
        qml.AmplitudeEmbedding(np.arange(1.0, 9.0), wires=[2, 0, 1], normalize=True)
        qml.Hadamard(0)
        qml.RZ(x, 0)
        qml.CRX(0.4, [0, 1])
        qml.U3(0.3, 0.5, -0.2, wires=2)
        qml.GlobalPhase(0.37)
        qml.adjoint(qml.MottonenStatePreparation(st, wires=[0, 1, 2]))
        qml.S(1)
        return qml.state(), qml.density_matrix([0, 2]), qml.expval(qml.Z(1))

    dev = QschedDevice(wires=3, client=client)
    got = qml.QNode(f, dev)(0.7)
    want = qml.QNode(f, qml.device("default.qubit", wires=3))(0.7)
    for g, w in zip(got, want):
        assert np.allclose(g, w, atol=1e-9)
    dev.close()
    aer = QschedDevice(wires=3, pool="aer", client=client)
    with pytest.raises(DeviceError, match=r"qml.state\(\) is not supported on pool 'aer'"):
        qml.QNode(f, aer)(0.7)
    aer.close()


def test_seed_makes_samples_reproducible(client):
    """seed= as lightning.qubit takes it: two devices with the same seed give the same samples call
    for call; another seed gives others."""
    def run(seed):
        dev = qml.device("qsched.qubit", wires=3, client=client, seed=seed)

        @qml.set_shots(200)
        @qml.qnode(dev)
        def f(x):
            qml.RX(x, 0)
            qml.Hadamard(1)
            qml.CNOT([0, 2])
            return qml.sample(wires=[0, 1, 2])
        out = [f(1.1), f(0.4)]
        dev.close()
        return out
    a, b, c = run(17), run(17), run(18)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[0], c[0])


def test_analytic_probs_on_many_wires_read_from_the_state(client):
    """Past 12 wires (2^k - 1 expectation values each) lightning pools square the state's amplitudes;
    pools that return no state refuse it by name, saying why."""
    n = 14

    def f(x):
        for w in range(n):
            qml.RY(x * (w + 1) / n, w)
        for w in range(n - 1):
            qml.CNOT([w, w + 1])
        return qml.probs(wires=range(n)), qml.expval(qml.Z(3))

    dev = QschedDevice(wires=n, client=client)
    got = qml.QNode(f, dev)(0.9)
    want = qml.QNode(f, qml.device("lightning.qubit", wires=n))(0.9)
    assert np.allclose(got[0], want[0], atol=1e-12) and np.allclose(got[1], want[1], atol=1e-12)
    dev.close()
    aer = QschedDevice(wires=n, pool="aer", client=client)
    with pytest.raises(DeviceError, match=r"analytic qml.probs on more than 12 wires is not supported on pool 'aer'"):
        qml.QNode(f, aer)(0.9)
    aer.close()


@pytest.mark.parametrize("pool,diff", [("lightning", "adjoint"), ("aer", "parameter-shift")])
def test_basis_state_prefix_values_and_jacobians(client, pool, diff):
    """BasisState / BasisEmbedding (U3(pi*b, 0, pi*b) per wire) before trainable gates."""
    def f(x):
        qml.BasisState(np.array([1, 0, 1]), wires=[0, 1, 2])
        qml.RY(x[0], 0)
        qml.CNOT([0, 1])
        qml.BasisEmbedding(2, wires=[1, 2])
        qml.CRZ(x[1], [1, 2])
        qml.RX(x[2], 2)
        return qml.expval(qml.Z(0) @ qml.Y(2)), qml.probs(wires=[1, 2])

    x = qml.numpy.array([0.4, -0.9, 1.3], requires_grad=True)
    dev = QschedDevice(wires=3, pool=pool, client=client)
    ours = qml.QNode(f, dev, diff_method=diff)
    ref = qml.QNode(f, qml.device("default.qubit"), diff_method="backprop")
    assert np.allclose(_flat(ours(x)), _flat(ref(x)), atol=1e-9)
    assert np.allclose(qml.jacobian(lambda x: _flat(ours(x)))(x), qml.jacobian(lambda x: _flat(ref(x)))(x),
                       atol=1e-8)
    dev.close()
