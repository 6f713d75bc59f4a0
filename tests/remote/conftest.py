"""The qrmi device against the IBM Qiskit Runtime stand-in (ibm_standin.py), through a real daemon,
real Redis and real worker processes. The stand-in runs in this test process (a thread); the worker
reaches it over loopback HTTP like the vendor's service."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

for _mod in ("qrmi", "qiskit_ibm_runtime"):       # the test extra installs both (pip install -e '.[test]')
    try:
        __import__(_mod)
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise
        pytest.skip(f"{_mod} is not installed (pip install 'qsched[qrmi]')", allow_module_level=True)

from ibm_standin import StandIn  # noqa: E402


@pytest.fixture
def standin():
    s = StandIn().start()
    yield s
    s.stop()
