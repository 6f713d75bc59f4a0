"""Replay's pure parts: the content address of a request, the record's name, and the cursor that
answers a session's leading requests from the record and ends at the first that differs."""
from __future__ import annotations

import pytest

from qsched.daemon.replay import Cursor, address, matching_prefix, record_name
from qsched.models import Task

BASE = {"pool": "aer", "kind": "estimate", "template": "ab12", "shots": 100, "method": None,
        "observables": '[[["Z", 1.0]]]', "params": bytes(range(16)), "seed": None}


def addr(**change) -> str:
    f = {**BASE, **change}
    t = Task("s.t", "s", f["kind"], f["template"], 1, f["shots"], 0, 0.0, method=f["method"], seed=f["seed"])
    return address(f["pool"], f["template"], t, f["observables"], f["params"])


def test_the_address_is_stable_and_changes_with_every_part_of_the_request():
    assert addr() == addr()
    params = bytearray(BASE["params"])
    params[7] ^= 1                                  # one bit of one parameter
    changes = [{"pool": "aer2"}, {"kind": "gradient"}, {"template": "ab13"}, {"shots": 101}, {"shots": None},
               {"method": "adjoint"}, {"observables": '[[["X", 1.0]]]'}, {"params": bytes(params)},
               {"params": BASE["params"][:-1]}, {"seed": 7}, {"seed": 8}]
    seen = {addr()} | {addr(**c) for c in changes}
    assert len(seen) == len(changes) + 1


def test_parts_are_delimited_so_bytes_moved_between_them_give_another_address():
    assert addr(observables="[]", params=b"\x01") != addr(observables="[]\x01", params=b"")
    assert addr(template="ab", pool="c") != addr(template="a", pool="bc")


def test_a_resume_key_names_the_record_before_the_job_and_no_job_has_none():
    assert record_name("77", "") == "job:77"
    assert record_name("77", "chain") == "resume:chain"
    assert record_name("", "") is None


@pytest.mark.parametrize("wanted,recorded,n", [
    (["a", "b"], ["a", "b"], 2), (["a", "b"], ["a", "x"], 1), (["a"], [None], 0), ([], [], 0),
    (["a", "b", "c"], ["a", "b", None], 2)])
def test_matching_prefix(wanted, recorded, n):
    assert matching_prefix(wanted, recorded) == n


def test_the_cursor_replays_in_order_and_the_first_difference_ends_it():
    c = Cursor("job:1", recorded=4)
    assert c.take(["a", "b"], ["a", "b"]) == 2 and c.pos == 2 and c.replaying
    assert c.take(["c", "X"], ["c", "d"]) == 1 and c.pos == 3 and not c.replaying
    c.assign(["t1"], ["X"])                         # the differing one runs, recorded at position 3
    assert c.tasks == {"t1": (3, "X")} and c.pos == 4
    assert c.take(["e"], ["e"]) == 0                # ended: even a match runs now
    c.assign(["t2"], ["e"])
    assert c.tasks["t2"] == (4, "e") and c.replayed == 3


def test_a_record_that_lost_positions_meanwhile_stops_the_replay_where_it_lost_them():
    c = Cursor("job:1", recorded=3)
    assert c.take(["a", "b", "c"], ["a", "b", "c"]) == 3
    c.stop_at(1)                                    # only "a" could be answered
    assert (c.pos, c.replayed, c.replaying) == (1, 1, False)


def test_the_same_circuit_built_again_has_another_digest_but_the_same_canonical_one():
    """A requeued job's script builds new Parameter objects (new UUIDs in the QPY): the replay matches on
    the canonical digest, which a different circuit or parameter name still changes."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter, ParameterVector

    from qsched import wire

    def build(name="a", angle_gate="rx"):
        v = ParameterVector("v", 2)
        qc = QuantumCircuit(2)
        getattr(qc, angle_gate)(Parameter(name), 0)
        qc.ry(v[0], 1)
        qc.rz(v[1], 1)
        return qc

    def both(qc):
        qpy = wire.dump_qpy(qc)
        return wire.digest(qpy), wire.canonical_digest(qpy, qc)
    one, two = both(build()), both(build())
    assert one[0] != two[0] and one[1] == two[1]
    assert both(build(name="b"))[1] != one[1] and both(build(angle_gate="ry"))[1] != one[1]
