"""`qsched store check [--fix]`: is the embedded Redis's AOF loadable, and repair its tail if not."""
from __future__ import annotations

import click


@click.group("store")
def store_group():
    """The embedded store (Redis under state_dir): checks and repairs."""


@store_group.command("check")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="QSCHED_CONFIG",
              help="qsched.yaml (default: built-in); its state_dir names the store")
@click.option("--fix", is_flag=True, help="truncate a damaged AOF to its last whole command, keeping a copy "
                                          "(stop the daemon first)")
def store_check(config_path, fix):
    """Exit 0 when the AOF loads, 1 when it is damaged (and not fixed)."""
    from ..config import load_config
    from ..daemon import aof
    from ..errors import QschedError
    cfg = load_config(config_path)
    try:
        report = aof.check(cfg.state_dir, fix=fix)
    except QschedError as e:
        raise click.ClickException(str(e)) from None
    click.echo(report.output)
    if report.fixed:
        click.echo(f"repaired {report.path}; the file as it was is {report.backup}")
    elif report.ok:
        click.echo(f"{report.path}: ok")
    else:
        click.echo(f"{report.path}: damaged{'' if fix else ' (qsched store check --fix repairs it, keeping a copy)'}",
                   err=True)
        raise SystemExit(1)
