"""The daemon's body checks and the stored result format, without a daemon."""
from __future__ import annotations

import pytest

from qsched.daemon.validate import echo, finite, result_bytes, session_request, wait_request
from qsched.errors import BadRequest
from qsched.store import result_entry, split_result


@pytest.mark.parametrize("v", [float("nan"), float("inf"), -float("inf"), 10**400, True, "1", None])
def test_only_finite_numbers_pass(v):
    assert finite(v) is None


def test_a_refused_value_is_quoted_short():
    assert len(echo("x" * (8 << 20))) < 120


def test_a_results_size_follows_the_tasks_shape():
    info = {"num_qubits": 3, "parameters": ["a", "b"], "cregs": [["c", 9], ["d", 1]]}
    assert result_bytes("sample", info, 10, 100, 0)[0] == 10 * 100 * (2 + 1)
    assert result_bytes("sample", {**info, "cregs": []}, 10, 100, 0)[0] == 10 * 100 * 1
    assert result_bytes("estimate", info, 10, 1, 4)[0] == 10 * 4 * 2 * 8
    assert result_bytes("gradient", info, 10, 1, 4)[0] == 10 * 4 * 3 * 8


def test_wait_ids_are_distinct_and_the_timeout_finite():
    assert wait_request({"ids": ["a.b", "a.c"], "timeout": 1e9}) == (["a.b", "a.c"], 300.0)
    for bad in ({"ids": ["a.b", "a.b"]}, {"ids": ["a.b"], "timeout": float("nan")}, {"ids": "a.b"}):
        with pytest.raises(BadRequest):
            wait_request(bad)


def test_session_names_are_bounded():
    with pytest.raises(BadRequest) as e:
        session_request({"class": "x" * 257})
    assert e.value.field == "class" and e.value.limit == 256
    assert session_request({"job_id": 12})["job_id"] == "12"


def test_a_stored_result_carries_its_state():
    state, body = split_result(result_entry("FAILED", '{"error": {"message": "a\\nb"}}').encode())
    assert state == "FAILED" and bytes(body) == b'{"error": {"message": "a\\nb"}}'
