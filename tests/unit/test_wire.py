from __future__ import annotations

import numpy as np
import pytest
from qiskit.circuit.library import efficient_su2
from qiskit.quantum_info import SparsePauliOp

from qsched import wire
from qsched.errors import BadRequest


def test_array_round_trip_is_exact():
    a = np.random.default_rng(1).normal(size=(120, 60))
    b = wire.decode_array(wire.encode_array(a), "params", dtype="float64", ndim=2)
    assert b.dtype == np.float64 and np.array_equal(a, b)


@pytest.mark.parametrize("obj, field", [
    ("nope", "params"),
    ({"dtype": "float64", "shape": [2, 2], "data": "!!!"}, "params.data"),
    ({"dtype": "float64", "shape": [2, 2], "data": "AAAA"}, "params.data"),
    ({"dtype": "object", "shape": [1], "data": ""}, "params"),
    ({"dtype": "float64", "shape": [-1], "data": ""}, "params.shape"),
])
def test_bad_arrays_name_the_field(obj, field):
    with pytest.raises(BadRequest) as e:
        wire.decode_array(obj, "params", dtype="float64")
    assert e.value.field == field


def test_qpy_round_trip_and_digest():
    qc = efficient_su2(4, reps=1)
    data = wire.dump_qpy(qc)
    back = wire.load_qpy(data)
    assert back == qc
    assert wire.digest(data) == wire.digest(wire.dump_qpy(qc))


def test_undecodable_qpy():
    with pytest.raises(BadRequest) as e:
        wire.load_qpy(b"QISKIT-but-not-really" * 10)
    assert e.value.field == "template" and "QPY" in e.value.message


def test_observables():
    assert wire.observables_to_wire(SparsePauliOp.from_list([("ZZ", 2.0), ("XI", -1)])) == [[["ZZ", 2.0], ["XI", -1.0]]]
    assert wire.observables_to_wire(["ZZ", "XX"]) == [[["ZZ", 1.0]], [["XX", 1.0]]]
    assert wire.check_observables([[["zz", 1]]], 2) == [[["ZZ", 1.0]]]
    with pytest.raises(BadRequest) as e:
        wire.check_observables([[["ZZZ", 1.0]]], 2)
    assert e.value.field == "observables[0][0]" and e.value.limit == 2
    with pytest.raises(BadRequest):
        wire.check_observables([[["ZQ", 1.0]]], 2)
    with pytest.raises(BadRequest):
        wire.check_observables([], 2)


def test_observables_in_wire_form_pass_through_unconverted():
    from qsched import wire
    obs = [[["ZZ", 1.0], ["XI", -0.5]], [["IY", 2.0]]]
    assert wire.observables_to_wire(obs) is obs               # the SDKs convert once; the client does not again
    assert wire.observables_to_wire("ZZ") == [[["ZZ", 1.0]]]
    assert wire.observables_to_wire([["ZZ", 1]]) == [[["ZZ", 1.0]]]       # an int coefficient is normalised
    assert not wire.is_wire([[("ZZ", 1.0)]]) and not wire.is_wire([["ZZ", 1.0]])
