"""The hybrid-mix study in its quick form, against a real daemon, a real RQ worker and real Redis: every
scenario completes and reports every key, and the properties that hold robustly on any machine hold
(qsched's interactive jobs wait less than under a FIFO of bursts; the 2:1 accounts get about 2:1 of
the device where the FIFO ignores them). Not the study's targets: those need the full run (timing
varies between machines); docs/benchmarks.md gives them."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import hybrid_mix_qsched  # noqa: E402
KEYS = {"makespan_s", "lower_bound_s", "ratio_to_bound", "busy_fraction", "mean_slowdown", "p95_slowdown",
        "jain", "wait_p50_s", "wait_p99_s"}
GROUP_KEYS = {"jobs", "makespan_s", "mean_slowdown", "p95_slowdown", "jain", "wait_p50_s", "wait_p99_s",
              "contended_device_s", "device_share"}
SCENARIOS = {"uniform": {"all"}, "flood": {"flood", "hybrid"}, "mixed": {"interactive", "batch"},
             "weighted": {"chem", "phys"}}


def _has_client() -> bool:
    try:
        import qsched
    except ImportError:
        return False
    return hasattr(qsched, "Client")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and x == x  # a number, not NaN


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    """One `--scenario all --quick` run for the tests below (about 2 min on 2 busy cores)."""
    if not _has_client():
        pytest.skip("qsched.Client not available yet")
    tmp = tmp_path_factory.mktemp("hybrid-mix")
    t = time.time()
    # --slurm off: the exclusive lock, whatever Slurm the CI machine has up (the last test covers Slurm)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hybrid_mix.py"), "--quick", "--scenario", "all",
                           "--slurm", "off", "--plot", str(tmp / "timeline.png"), "--workdir", str(tmp / "w")],
                          cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"hybrid_mix --quick --scenario all: {time.time() - t:.1f} s")
    return tmp, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(450)
def test_every_scenario_and_strategy_reports_every_key(quick_study):
    tmp, out, stdout = quick_study
    assert set(out) == {"scenarios", "targets"}
    assert set(out["scenarios"]) == set(SCENARIOS)
    for sc, groups in SCENARIOS.items():
        res = out["scenarios"][sc]
        want = {"exclusive", "per-circuit", "fifo-bursts", "qsched"}
        if sc == "mixed":  # the baselines of its targets: plain fair share, and tiers without preemption
            want |= {"qsched-flat"} | ({"qsched-nopreempt"} if hybrid_mix_qsched.preemption_available() else set())
        assert set(res["strategies"]) == want, sc
        for name, s in res["strategies"].items():
            assert KEYS <= set(s), (sc, name, KEYS - set(s))
            assert all(_number(s[k]) for k in KEYS), (sc, name, s)
            assert s["makespan_s"] > 0 and s["lower_bound_s"] > 0 and 0 < s["busy_fraction"] <= 1.0 + 1e-6
            assert 0 < s["jain"] <= 1.0 + 1e-9
            # no schedule beats the bound (a little slack: the device's own clock reads)
            assert s["makespan_s"] >= 0.98 * s["lower_bound_s"], (sc, name)
            assert set(s["groups"]) == groups, (sc, name)
            for g, gs in s["groups"].items():
                assert GROUP_KEYS <= set(gs) and gs["jobs"] >= 1, (sc, name, g)
            if len(groups) > 1:  # the groups' shares of the contended window add up to the device's work
                assert sum(gs["device_share"] for gs in s["groups"].values()) == pytest.approx(1.0, abs=1e-6)
        assert (tmp / f"timeline_{sc}.png").stat().st_size > 1000
    # every target of the issue is computed from this one run, and printed as a table
    assert len(out["targets"]) == 5 + hybrid_mix_qsched.preemption_available() and "| target | qsched |" in stdout


@pytest.mark.slow
@pytest.mark.timeout(450)
def test_mixed_interactive_jobs_wait_less_under_qsched_than_under_a_fifo_of_bursts(quick_study):
    mixed = quick_study[1]["scenarios"]["mixed"]["strategies"]
    q, fb = mixed["qsched"]["groups"]["interactive"], mixed["fifo-bursts"]["groups"]["interactive"]
    # 4 batch jobs keep about 4 long bursts queued in the FIFO; qsched's tier puts an interactive
    # burst behind at most the running batch and the one in the inbox
    assert q["wait_p99_s"] < fb["wait_p99_s"], (q, fb)
    assert q["mean_slowdown"] < fb["mean_slowdown"], (q, fb)


@pytest.mark.slow
@pytest.mark.timeout(450)
def test_weighted_accounts_get_about_their_2_to_1_share_under_qsched_only(quick_study):
    w = quick_study[1]["scenarios"]["weighted"]["strategies"]
    # generous: a quick run's contended window holds about 20 bursts per account, on a loaded machine
    assert 1.4 <= w["qsched"]["share_ratio"] <= 3.0, w["qsched"]["share_ratio"]
    # alike bursts in arrival order: the FIFO gives about 1:1, whatever the weights
    assert w["fifo-bursts"]["share_ratio"] < w["qsched"]["share_ratio"], w["fifo-bursts"]["share_ratio"]


@pytest.mark.slow
@pytest.mark.timeout(450)
def test_a_flooding_job_does_not_take_the_device_from_the_hybrid_jobs_under_qsched(quick_study):
    fl = quick_study[1]["scenarios"]["flood"]["strategies"]
    q, fb = fl["qsched"]["groups"]["hybrid"], fl["fifo-bursts"]["groups"]["hybrid"]
    # the FIFO runs the flood's bursts, all queued at t0, before the hybrid jobs' first
    assert q["mean_slowdown"] < fb["mean_slowdown"], (q, fb)
    assert q["device_share"] > fb["device_share"], (q, fb)


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
