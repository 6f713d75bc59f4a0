"""Pure metric functions of the hybrid-mix study (no I/O, no clocks: unit-tested on their own)."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

Interval = tuple[float, float]


def lower_bound(device_work_per_job: Sequence[float], critical_path_per_job: Sequence[float]) -> float:
    """max(total device work, longest job's own critical path): no schedule on one device beats either."""
    if not device_work_per_job and not critical_path_per_job:
        return 0.0
    return max(sum(device_work_per_job), max(critical_path_per_job, default=0.0))


def tight_lower_bound(device_work_per_job: Sequence[float], critical_path_per_job: Sequence[float],
                      first_classical_per_job: Sequence[float]) -> float:
    """Also valid, and tighter when jobs start with a classical phase: no job has quantum work before its
    first classical phase ends, so the device's work cannot start before the shortest one does."""
    lb = lower_bound(device_work_per_job, critical_path_per_job)
    if not first_classical_per_job:
        return lb
    return max(lb, min(first_classical_per_job) + sum(device_work_per_job))


def jain(xs: Sequence[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all equal, 1/n when one takes all."""
    xs = list(xs)
    if not xs:
        return float("nan")
    sq = sum(x * x for x in xs)
    if sq == 0:
        return 1.0
    return sum(xs) ** 2 / (len(xs) * sq)


def slowdowns(turnaround_s: Sequence[float], alone_s: Sequence[float]) -> list[float]:
    """Per job: time from submission to end, divided by the time the job takes running alone."""
    if len(turnaround_s) != len(alone_s):
        raise ValueError("turnaround_s and alone_s differ in length")
    return [t / a for t, a in zip(turnaround_s, alone_s)]


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[list[float]] = []
    for s, e in sorted((float(s), float(e)) for s, e in intervals if e > s):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def busy_time(intervals: Iterable[Interval], start: float | None = None, end: float | None = None) -> float:
    """Length of the union of intervals, clipped to [start, end] (overlaps count once)."""
    total = 0.0
    for s, e in merge_intervals(intervals):
        if start is not None:
            s = max(s, start)
        if end is not None:
            e = min(e, end)
        if e > s:
            total += e - s
    return total


def summarize(*, t0: float, job_ends: Sequence[float], alone_s: Sequence[float],
              device_work_per_job: Sequence[float], device_intervals: Iterable[Interval],
              waits_s: Sequence[float], first_classical_per_job: Sequence[float] = ()) -> dict:
    """The per-strategy keys of the study's JSON line.

    t0: when all jobs were submitted; job_ends: absolute end time of each job; alone_s: each job's
    critical path running alone (classical + its own device time); device_work_per_job: each job's
    device time as the workload defines it (for the bound); device_intervals: (start, end) of what the
    device actually ran, from the device owner's own records; waits_s: per-iteration quantum waits.
    """
    makespan = max(job_ends) - t0
    lb = lower_bound(device_work_per_job, alone_s)
    sd = slowdowns([e - t0 for e in job_ends], alone_s)
    busy = busy_time(device_intervals, t0, t0 + makespan)
    return {
        "makespan_s": makespan,
        "lower_bound_s": lb,
        "ratio_to_bound": makespan / lb if lb > 0 else float("nan"),
        "busy_fraction": busy / makespan if makespan > 0 else float("nan"),
        "mean_slowdown": sum(sd) / len(sd),
        "p95_slowdown": percentile(sd, 95),
        "jain": jain(sd),
        "wait_p50_s": percentile(waits_s, 50),
        "wait_p99_s": percentile(waits_s, 99),
        # not in the brief's key set: the bound with the unavoidable idle start, to explain misses
        "tight_lower_bound_s": (tlb := tight_lower_bound(device_work_per_job, alone_s, first_classical_per_job)),
        "ratio_to_tight_bound": makespan / tlb if tlb > 0 else float("nan"),
    }


def offered_load(classical_s: Sequence[float], quantum_s: Sequence[float]) -> float:
    """Sum over jobs of the device share each would use running alone: >= 1 saturates one device."""
    return sum(q / (c + q) for c, q in zip(classical_s, quantum_s) if c + q > 0)


def group_summaries(groups: dict[str, Sequence[int]], *, t0: float, job_ends: Sequence[float],
                    alone_s: Sequence[float], waits_per_job: Sequence[Sequence[float]],
                    intervals_per_job: Sequence[Iterable[Interval]], window_end: float | None = None) -> dict:
    """Per group of jobs (a class, an account, the flooder): its slowdowns, waits, Jain among its jobs,
    and its share of the device-seconds run in the contended window [t0, window_end] (default: until
    the first job ends; after that the others have less competition, so shares there say nothing)."""
    end = min(job_ends) if window_end is None else window_end
    per_job = [list(iv) for iv in intervals_per_job]
    total = busy_time([iv for ivs in per_job for iv in ivs], t0, end)
    out = {}
    for g, idx in groups.items():
        sd = slowdowns([job_ends[i] - t0 for i in idx], [alone_s[i] for i in idx])
        waits = [w for i in idx for w in waits_per_job[i]]
        dev = busy_time([iv for i in idx for iv in per_job[i]], t0, end)
        out[g] = {
            "jobs": len(idx),
            "makespan_s": max(job_ends[i] for i in idx) - t0,
            "mean_slowdown": sum(sd) / len(sd),
            "p95_slowdown": percentile(sd, 95),
            "jain": jain(sd),
            "wait_p50_s": percentile(waits, 50),
            "wait_p99_s": percentile(waits, 99),
            "contended_device_s": dev,
            "device_share": dev / total if total > 0 else float("nan"),
        }
    return out


def share_ratio(groups: dict, a: str, b: str) -> float:
    """Device-seconds of group a over group b's in the contended window (2.0 when a has twice b's weight
    and the scheduler honours it)."""
    da, db = groups[a]["contended_device_s"], groups[b]["contended_device_s"]
    return da / db if db > 0 else float("inf")
