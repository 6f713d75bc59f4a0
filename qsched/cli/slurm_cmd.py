"""`qsched slurm sync`: the Slurm side's settings from the daemon's config (one source for both).

Writes qsched_site.lua (pools -> licences, classes, defaults) where job_submit.lua loads it, and says
which `Licenses=` line slurm.conf needs; `--check` only compares (exit 1 when out of step).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click


def _default_lua_path() -> Path:
    conf = os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    return Path(conf).parent / "qsched_site.lua"


def _slurm_conf_licenses(conf: Path) -> str | None:
    """The Licenses= line of slurm.conf, or None (no file, no line)."""
    try:
        text = conf.read_text()
    except OSError:
        return None
    m = re.search(r"^\s*(Licenses=\S+)", text, re.MULTILINE | re.IGNORECASE)
    return m.group(1) if m else None


@click.group("slurm")
def slurm_group():
    """The Slurm side: settings job_submit.lua and slurm.conf take from the daemon's config."""


@slurm_group.command("sync")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="QSCHED_CONFIG",
              help="qsched.yaml (default: built-in)")
@click.option("--lua", "lua_path", type=click.Path(dir_okay=False),
              help="where job_submit.lua loads it (default: qsched_site.lua beside $SLURM_CONF)")
@click.option("--check", is_flag=True, help="write nothing; exit 1 when the file or slurm.conf is out of step")
def sync(config_path, lua_path, check):
    """Write qsched_site.lua (pools and their licences, classes, defaults) from the daemon's config and print
    the Licenses= line slurm.conf needs. After a change: `scontrol reconfigure`."""
    from ..slurm.site import render_site_lua, site_from_config
    from . import _config
    cfg = _config(config_path)
    site = site_from_config(cfg)
    text = render_site_lua(site, source=str(cfg.source))
    path = Path(lua_path) if lua_path else _default_lua_path()
    conf = Path(os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf")
    current = path.read_text() if path.exists() else None
    have = _slurm_conf_licenses(conf)
    stale = []
    if current != text:
        stale.append(f"{path} differs from the config")
    if have is not None and have != site.licenses_line():
        stale.append(f"{conf} has {have}, the config needs {site.licenses_line()}")
    if check:
        for s in stale:
            click.echo(f"qsched slurm sync: {s}", err=True)
        if stale:
            sys.exit(1)
        click.echo(f"{path}: in step with {cfg.source}")
        return
    if current != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)          # slurmctld reads it (as SlurmUser)
        tmp.replace(path)
        click.echo(f"wrote {path}")
    else:
        click.echo(f"{path}: unchanged")
    click.echo(f"slurm.conf: {site.licenses_line()}")
    if have is not None and have != site.licenses_line():
        click.echo(f"  {conf} has {have}: change it, then `scontrol reconfigure`", err=True)
