"""Smoke test of the hybrid-mix study: `--quick` completes and reports every key (not the targets:
timing varies between machines)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"makespan_s", "lower_bound_s", "ratio_to_bound", "busy_fraction", "mean_slowdown", "p95_slowdown",
        "jain", "wait_p50_s", "wait_p99_s"}


def _has_client() -> bool:
    try:
        import qsched
    except ImportError:
        return False
    return hasattr(qsched, "Client")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_hybrid_mix_quick(tmp_path):
    if not _has_client():
        pytest.skip("qsched.Client not available yet")
    png = tmp_path / "timeline.png"
    t = time.time()
    # --slurm off: the exclusive lock, whatever Slurm the CI machine has up (the next test covers Slurm)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hybrid_mix.py"), "--quick", "--slurm", "off",
                           "--plot", str(png), "--workdir", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=170)
    wall = time.time() - t
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    out = json.loads(last)
    assert set(out) == {"strategies", "params"}
    assert set(out["strategies"]) == {"exclusive", "per-circuit", "qsched"}
    for name, s in out["strategies"].items():
        assert KEYS <= set(s), (name, KEYS - set(s))
        for k in KEYS:
            assert isinstance(s[k], (int, float)) and s[k] == s[k], (name, k, s[k])  # a number, not NaN
        assert s["makespan_s"] > 0 and s["lower_bound_s"] > 0 and 0 < s["busy_fraction"] <= 1.0 + 1e-6
        assert 0 < s["jain"] <= 1.0 + 1e-9
    assert out["params"]["k"] >= 2 and out["params"]["m"] >= 1
    assert png.exists() and png.stat().st_size > 1000
    print(f"hybrid_mix --quick: {wall:.1f} s")


@pytest.mark.slow
@pytest.mark.slurm      # root, and Slurm installed or apt to install it (the study's slurm-up.sh does)
@pytest.mark.timeout(240)
def test_hybrid_mix_exclusive_through_real_slurm(tmp_path):
    """The exclusive strategy as sbatch jobs on a Slurm the study brings up."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hybrid_mix.py"), "--quick", "--slurm", "up",
                           "--strategies", "exclusive", "--k", "2", "--m", "2",
                           "--plot", str(tmp_path / "t.png"), "--workdir", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads(proc.stdout.strip().splitlines()[-1])["strategies"]["exclusive"]
    assert s["mode"] == "slurm" and KEYS <= set(s)
    # one qpu license: the two jobs ran one after the other, so the makespan covers both jobs' work
    assert s["makespan_s"] >= s["lower_bound_s"]
