"""systemd/qsched-remote-worker@.service: a worker on a host with no daemon (it must not pull one in)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "qsched-remote-worker@.service"


def _keys(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_remote_worker_unit_needs_no_local_daemon():
    k = _keys(UNIT.read_text())
    assert k["ExecStart"] == ["/opt/qsched/bin/qsched worker --device %i --config /etc/qsched/worker.yaml"]
    assert not any("qsched.service" in v for key in ("Wants", "Requires", "PartOf", "After", "BindsTo")
                   for v in k.get(key, []))
    assert k["Restart"] == ["on-failure"] and k["NoNewPrivileges"] == ["yes"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_remote_worker_unit_verifies(tmp_path):
    exe = shutil.which("qsched") or str(Path(sys.executable).parent / "qsched")
    if not Path(exe).exists():
        pytest.skip("no qsched executable to point the unit at")
    (tmp_path / UNIT.name).write_text(UNIT.read_text().replace("/opt/qsched/bin/qsched", exe))
    cp = subprocess.run(["systemd-analyze", "verify", "qsched-remote-worker@gpu0.service"], capture_output=True,
                        text=True, cwd=tmp_path, timeout=60)
    out = cp.stdout + cp.stderr
    assert cp.returncode == 0 and not [x for x in out.splitlines() if str(tmp_path) in x or "qsched" in x], out
