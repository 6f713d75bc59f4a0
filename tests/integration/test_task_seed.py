"""The sampling seed is a field of the task (not metadata baked into a copy of its template): the same seed
gives the same samples, a different seed other ones, the template is one and the same, and a bad seed is
refused naming the field."""
from __future__ import annotations

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter

import qsched


def _circuit():
    qc = QuantumCircuit(3)
    qc.ry(Parameter("a"), 0)
    qc.h(1)
    qc.cx(1, 2)
    qc.measure_all()
    return qc


def _samples(r) -> list:
    return [np.asarray(v["array"]).tolist() for v in r.data["registers"].values()]


def test_a_seeded_task_samples_the_same_every_time_from_one_template(client):
    qc = _circuit()
    with client.session(pool="aer") as s:
        params = np.array([[0.7], [1.9]])
        a = s.run("sample", qc, params, shots=300, seed=11, timeout=60)
        b = s.run("sample", qc, params, shots=300, seed=11, timeout=60)
        c = s.run("sample", qc, params, shots=300, seed=12, timeout=60)
        assert _samples(a) == _samples(b)
        assert _samples(a) != _samples(c)
        assert s.upload(qc) == s.upload(qc)          # one content hash, whatever the seed


def test_a_bad_seed_is_refused_naming_the_field(client):
    with client.session(pool="aer") as s:
        for bad in (-1, 2**63, "7", 1.5, True):
            with pytest.raises(qsched.errors.BadRequest) as e:
                s.run("sample", _circuit(), np.array([[0.1]]), shots=10, seed=bad, timeout=30)
            assert e.value.field == "tasks[0].seed", (bad, e.value)
