"""Timing profiles of the emulated QPU: a shot's time from the published figures and the circuit."""
import time

import numpy as np
import pytest
from qiskit import QuantumCircuit

from qsched.config import parse_config
from qsched.devices import TaskPayload, load_device
from qsched.devices.profiles import PROFILES
from qsched.errors import ConfigError


def _device(**options):
    cfg = parse_config({"devices": [{"name": "e0", "type": "emulated-qpu", "max_qubits": 3,
                                     "options": {"noise": False, **options}}]})
    return load_device(cfg.devices[0])


def _ghz(shots):
    qc = QuantumCircuit(3)
    qc.h(0)
    qc.cx(0, 1)
    qc.cx(1, 2)
    qc.measure_all()
    return TaskPayload("t", "sample", "ghz", qc, np.zeros((1, 0)), shots)


def test_a_trapped_ion_shot_costs_its_gates():
    d = _device(profile="ionq-aria")
    t = _ghz(100)
    isa = d._sample_circuit(t)[0]
    n2 = sum(1 for i in isa.data if i.operation.num_qubits == 2)
    n1 = sum(1 for i in isa.data if i.operation.num_qubits == 1 and i.operation.name not in ("measure", "barrier"))
    assert n2 == 2 and n1 >= 1
    p = PROFILES["ionq-aria"]
    assert d.shot_s(t) == pytest.approx(n1 * 135e-6 + n2 * 600e-6 + p["readout_s"])
    assert d.modelled_s([t]) == pytest.approx(p["setup_s"] + 100 * d.shot_s(t))
    assert d.describe()["gate_2q_s"] == 600e-6 and d.describe()["profile"] == "ionq-aria"


def test_profiles_by_name_and_explicit_options_override_them():
    ibm = _device(profile="ibm-heron")
    assert ibm.modelled_s([_ghz(4000)]) == pytest.approx(2.0 + 4000 * 250e-6)
    mine = _device(profile="ibm-heron", setup_s=0.5)
    assert mine.modelled_s([_ghz(4000)]) == pytest.approx(0.5 + 4000 * 250e-6)


def test_aqt_holds_the_device_for_its_shot_rate():
    d = _device(profile="aqt-pine", setup_s=0.0)
    t0 = time.perf_counter()
    out = d.run([_ghz(3)])[0]
    assert time.perf_counter() - t0 >= 3 / 5.5 * 0.99              # 5.5 shots per second
    assert sum(np.asarray(out["registers"]["meas"]["array"]).shape[1:2]) == 3


def test_an_unknown_profile_is_refused_naming_the_field():
    with pytest.raises(ConfigError) as e:
        parse_config({"devices": [{"name": "e0", "type": "emulated-qpu", "options": {"profile": "ibm-eagle9"}}]})
    assert e.value.field == "devices[0].options.profile" and "ionq-aria" in e.value.message
