"""A vendor's status moves the device's state by itself; classes with spill_to run elsewhere meanwhile."""
import pytest
from remote_harness import credentials, qpu_device, until
from qiskit import QuantumCircuit

from qsched.config import parse_config
from qsched.errors import ConfigError


def _x():
    qc = QuantumCircuit(2)
    qc.x(1)
    qc.measure_all()
    return qc


def _state(c, name="qpu0"):
    d = next(x for x in c.devices() if x["name"] == name)
    return d["state"], d["reason"]


def test_vendor_pause_moves_the_device_and_spill_to_classes_run_on_their_spill_pool(fresh_daemon, standin, tmp_path):
    devices = [qpu_device(standin, credentials(tmp_path)),
               {"name": "sim0", "type": "aer", "pool": "sim", "max_qubits": 8}]
    policy = {"name": "fair-share", "classes": {"dev": {"spill_to": "sim"}}}
    d = fresh_daemon(devices=devices, policy=policy)
    c = d.client()
    until(lambda: _state(c) == ("online", ""), what="online")     # the daemon's watch has seen it up
    standin.backend_status = "paused"                 # QRMI reports it as offline
    until(lambda: _state(c)[0] == "paused", what="vendor pause")
    assert _state(c)[1].startswith("vendor: offline")
    dev = c.open_session("qpu", cls="dev")
    batch = c.open_session("qpu", cls="batch")
    spilled = dev.run("sample", _x(), shots=100, timeout=60)
    assert spilled.meta["device"] == "sim0" and spilled.counts() == {"10": 100}
    waiting = batch.submit("sample", _x(), shots=100)
    jobs_before = len(standin.submissions())
    standin.backend_status = "active"
    until(lambda: _state(c) == ("online", "vendor: online"), what="vendor back")
    res = waiting.result(60)
    assert res.meta["device"] == "qpu0" and res.counts() == {"10": 100}
    assert len(standin.submissions()) == jobs_before + 1
    back = dev.run("sample", _x(), shots=100, timeout=60)      # the QPU is back: dev work goes home
    assert back.meta["device"] == "qpu0"
    assert "device qpu0 is paused (set by vendor): vendor: offline" in d.log()
    dev.close()
    batch.close()


def test_a_vendor_status_never_lifts_an_admins_pause(fresh_daemon, standin, tmp_path):
    import subprocess
    import sys
    d = fresh_daemon(devices=[qpu_device(standin, credentials(tmp_path))])
    c = d.client()
    out = subprocess.run([sys.executable, "-m", "qsched", "device", "pause", "qpu0", "--reason", "recalibration",
                          "--config", str(d.config_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert _state(c) == ("paused", "recalibration")
    import time
    standin.backend_status = "paused"
    time.sleep(1.0)                                   # several status rounds (0.2 s each)
    assert _state(c) == ("paused", "recalibration")
    standin.backend_status = "active"
    time.sleep(1.0)
    assert _state(c) == ("paused", "recalibration")


def test_spill_to_must_name_a_pool():
    with pytest.raises(ConfigError) as e:
        parse_config({"devices": [{"name": "a", "type": "null", "pool": "qpu"}],
                      "policy": {"classes": {"dev": {"spill_to": "nowhere"}}}})
    assert e.value.field == "policy.classes.dev.spill_to" and "nowhere" in e.value.message
