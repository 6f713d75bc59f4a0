import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import hybrid_mix_metrics as m  # noqa: E402


def test_lower_bound_device_bound_and_path_bound():
    # device-bound: 3 jobs x 2 s of device work beat the longest job's 4 s path
    assert m.lower_bound([2, 2, 2], [4, 3, 3]) == 6
    # path-bound: one long job dominates
    assert m.lower_bound([1, 1], [10, 2]) == 10
    assert m.lower_bound([], []) == 0.0


def test_jain():
    assert m.jain([1, 1, 1, 1]) == pytest.approx(1.0)
    assert m.jain([1, 0, 0, 0]) == pytest.approx(0.25)
    assert m.jain([1, 2]) == pytest.approx(9 / 10)
    assert math.isnan(m.jain([]))


def test_slowdowns():
    assert m.slowdowns([4, 9], [2, 3]) == [2, 3]
    with pytest.raises(ValueError):
        m.slowdowns([1], [1, 2])


def test_percentile_matches_numpy_linear():
    np = pytest.importorskip("numpy")
    xs = [0.3, 1.0, 5.0, 2.0, 0.1, 7.5]
    for q in (0, 50, 95, 99, 100):
        assert m.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert m.percentile([3.0], 99) == 3.0


def test_busy_time_merges_overlaps_and_clips():
    iv = [(0, 1), (0.5, 2), (3, 4), (5, 5)]
    assert m.busy_time(iv) == pytest.approx(3.0)
    assert m.busy_time(iv, 1.5, 3.5) == pytest.approx(1.0)


def test_offered_load():
    # T_c/T_q = 1 for two jobs: each wants the device half the time
    assert m.offered_load([1, 1], [1, 1]) == pytest.approx(1.0)
    assert m.offered_load([4] * 8, [1] * 8) == pytest.approx(1.6)


def test_summarize_perfect_interleave():
    # two jobs, one device, perfectly interleaved: makespan = bound, device always busy
    s = m.summarize(t0=0.0, job_ends=[4.0, 4.0], alone_s=[4.0, 4.0], device_work_per_job=[2.0, 2.0],
                    device_intervals=[(0, 2), (2, 4)], waits_s=[0, 0, 0, 0])
    assert s["makespan_s"] == 4.0 and s["lower_bound_s"] == 4.0 and s["ratio_to_bound"] == 1.0
    assert s["busy_fraction"] == 1.0 and s["jain"] == pytest.approx(1.0)
    assert set(s) - {"tight_lower_bound_s", "ratio_to_tight_bound"} == {
        "makespan_s", "lower_bound_s", "ratio_to_bound", "busy_fraction", "mean_slowdown", "p95_slowdown", "jain",
        "wait_p50_s", "wait_p99_s"}


def test_tight_lower_bound_adds_the_shortest_first_classical_phase():
    # 8 jobs each 1 s of device work, first classical phases 0.5..1.2 s: device idle for >= 0.5 s
    assert m.tight_lower_bound([1] * 8, [5] * 8, [0.5, 0.8, 1.2] + [1] * 5) == pytest.approx(8.5)
    # path-bound workloads keep the plain bound
    assert m.tight_lower_bound([1, 1], [10, 3], [0.2, 0.2]) == 10
    assert m.tight_lower_bound([1, 1], [3, 3], []) == 3


def test_group_summaries_shares_in_the_contended_window():
    # jobs 0, 1 (chem) and 2 (phys); job 0 ends first at 3.0 s: shares count only [0, 3]
    g = m.group_summaries({"chem": [0, 1], "phys": [2]}, t0=0.0, job_ends=[3.0, 6.0, 6.0], alone_s=[1.5, 2.0, 3.0],
                          waits_per_job=[[0.1, 0.3], [0.2], [1.0, 2.0]],
                          intervals_per_job=[[(0, 1)], [(1, 2), (4, 6)], [(2, 3), (3, 4)]])
    assert g["chem"]["contended_device_s"] == pytest.approx(2.0)      # (4, 6) is after the window
    assert g["phys"]["contended_device_s"] == pytest.approx(1.0)      # (3, 4) starts at its end
    assert g["chem"]["device_share"] == pytest.approx(2 / 3)
    assert m.share_ratio(g, "chem", "phys") == pytest.approx(2.0)
    assert g["chem"]["jobs"] == 2 and g["chem"]["makespan_s"] == 6.0
    assert g["chem"]["mean_slowdown"] == pytest.approx((2.0 + 3.0) / 2)
    assert g["phys"]["wait_p50_s"] == pytest.approx(1.5)
    assert g["chem"]["wait_p99_s"] == pytest.approx(m.percentile([0.1, 0.3, 0.2], 99))
    assert g["chem"]["jain"] == pytest.approx(m.jain([2.0, 3.0]))


def test_share_ratio_without_the_other_group_is_infinite():
    g = m.group_summaries({"a": [0], "b": [1]}, t0=0.0, job_ends=[2.0, 2.0], alone_s=[1.0, 1.0],
                          waits_per_job=[[0.0], [0.0]], intervals_per_job=[[(0, 2)], []])
    assert m.share_ratio(g, "a", "b") == float("inf")
    assert math.isnan(m.group_summaries({"a": [0]}, t0=0.0, job_ends=[1.0], alone_s=[1.0], waits_per_job=[[]],
                                        intervals_per_job=[[]])["a"]["device_share"])
