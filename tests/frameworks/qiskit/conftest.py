"""Qiskit's own primitive tests, vendored from the installed Qiskit's release (see qiskit_test_shim.py for
what was adapted): they run against the session's live daemon (tests/conftest.py `client`)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import qiskit_test_shim  # noqa: E402


@pytest.fixture(autouse=True)
def _qsched_client(client):
    """The vendored tests build their primitives without a client: the shim hands them this one."""
    qiskit_test_shim.CLIENT = client
    yield
    while qiskit_test_shim.OPENED:          # their sessions, now rather than at exit (daemon gone)
        qiskit_test_shim.OPENED.pop().close()
    qiskit_test_shim.CLIENT = None
