"""`qsched estimate`: when quantum work would start, as `sbatch --test-only` says when a job would.

    qsched estimate [--pool P] [--class C] [-A ACCOUNT] [--bindings N] [--json]

The daemon plans forward from now under its current policy (tiers, fair share, quotas, maintenance
windows, preemption) with a new session of that class and account holding one task of N bindings."""
from __future__ import annotations

import click

from . import URL, _client, fmt


@click.command()
@URL
@click.option("-p", "--pool", default=None, help="the QPU pool (default: the daemon's first)")
@click.option("--class", "cls", default=None, help="the session class (default: batch)")
@click.option("-A", "--account", default=None, help="the account charged (default: yours)")
@click.option("--bindings", type=click.IntRange(min=1), default=1, show_default=True,
              help="parameter bindings of the task whose start and device time are predicted")
@click.option("--json", "as_json", is_flag=True, help="machine-readable JSON")
def estimate(url, pool, cls, account, bindings, as_json):
    """When a new session's first task would start on a pool, and the pool's backlog."""
    e = _client(url).estimate(pool=pool, cls=cls, account=account, bindings=bindings)
    if as_json:
        click.echo(fmt.dump_json(e))
        return
    if e["start"] is None:
        click.echo(f"qsched: a {e['class']} task on pool {e['pool']} is not predicted to start "
                   f"(no live device, or beyond the forecast's horizon)")
    else:
        click.echo(f"qsched: a task of {e['bindings']} binding(s) (class {e['class']}, account {e['account']}) would "
                   f"start at {fmt.local_time(e['start'])} (in {e['wait_s']:.1f} s) on {e['device']}, "
                   f"using about {e['device_s']:.3f} device-seconds")
    click.echo(f"pool {e['pool']}: backlog {e['backlog_s']:.1f} device-seconds, drained in {e['drain_s']:.1f} s")
