"""The daemon's Slurm hooks: `slurm_integration(config)` -> the qsched.integration.SlurmIntegration the
daemon calls (MUNGE identity, job verification, AdminComment at close, and the background loops: the
reconciler, the sshare importer for `fairshare_source: slurm`, the maintenance mirror). The `slurm:`
section is qsched.config.SlurmConfig (parsed and bounded there; docs/admin/slurm.md).
MUNGE works without Slurm too (any cluster with munged); it is on when munged answers.
"""
from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import time
from pathlib import Path

from ..errors import ConfigError, NotFound, QschedError
from ..integration import Background, SlurmIntegration
from . import munge
from .accounting import write_usage
from .adapter import CliSlurmAdapter, SlurmAdapter, SlurmError, get_adapter, pyslurm_problem
from .reconcile import SessionRef, ended_sessions
from .shares import SshareParseError, parse_shares
from .admission import Admission
from .site import license_name, site_from_config
from .verify import job_facts, verify_job_for_session

log = logging.getLogger("qsched.slurm")

def _slurm_present(env: dict) -> bool:
    if not shutil.which("squeue"):
        return False
    conf = env.get("SLURM_CONF") or os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    return Path(conf).exists()


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _job_id_of(session) -> int | None:
    jid = str(getattr(session, "job_id", "") or "")
    return int(jid) if jid.isdigit() else None


def _check_pyslurm(env: dict) -> None:
    """`backend: pyslurm` is refused where pyslurm cannot load or does not match the Slurm here (daemon
    check, start and reload say so, naming the field), rather than found out at the first job."""
    try:
        version: str | None = CliSlurmAdapter(env=env).version() if shutil.which("sinfo") else None
    except SlurmError:
        version = None
    why = pyslurm_problem(version)
    if why:
        raise ConfigError(f"slurm.backend: pyslurm cannot be used here: {why}; use backend: cli (or auto)",
                          field="slurm.backend")


def munge_hook(socket: str | None = None):
    async def munge_identity(credential: str, purpose: str) -> tuple[int, str]:
        ident = await asyncio.to_thread(munge.decode, credential, socket=socket)
        # a qsched payload names its purpose, which must be this request's (a credential minted for
        # attach does not open a session); an empty one is `munge -n` (still single-use: munged
        # refuses a replay)
        if ident.payload:
            claims = munge.parse_payload(ident.payload)
            if claims["purpose"] != purpose:
                raise munge.MungeError(f"MUNGE credential is for {claims['purpose']!r}, not {purpose!r}",
                                       field=munge.HEADER)
        return ident.uid, _user_name(ident.uid)
    return munge_identity


def verify_hook(adapter: SlurmAdapter, *, require_qpu: bool = True):
    async def verify_job(job_id: str, uid: int) -> dict:
        job = await asyncio.to_thread(verify_job_for_session, adapter, job_id, uid, require_qpu=require_qpu)
        return job_facts(job)
    return verify_job


def user_accounts_hook(adapter: SlurmAdapter):
    async def user_accounts(user: str) -> list[str]:
        return await asyncio.to_thread(adapter.user_accounts, user)
    return user_accounts


def admin_comment_hook(adapter: SlurmAdapter):
    async def on_close(record: dict) -> None:
        jid = str(record.get("job_id") or "")
        if not jid.isdigit():
            return
        await asyncio.to_thread(write_usage, adapter, int(jid), record, session_id=record.get("session"))
    return on_close


def reconciler(adapter: SlurmAdapter, *, interval_s: float = 1.0, on_close=None):
    """Background loop: close the sessions of jobs that no longer run (pending tasks are cancelled by
    close_session), then run on_close (AdminComment)."""
    async def slurm_reconciler(sch) -> None:
        warned = False
        while True:
            await asyncio.sleep(interval_s)
            refs = [SessionRef(sid, jid, float(getattr(e.session, "created", 0) or 0))
                    for sid, e in list(sch.sessions.items())
                    if (jid := _job_id_of(e.session)) is not None]
            if not refs:
                continue
            t0 = time.time()
            try:
                jobs = await asyncio.to_thread(adapter.jobs)
                warned = False
            except SlurmError as e:
                # Slurm unreachable: close nothing (an empty listing would look like every job ended)
                if not warned:
                    log.warning("reconciler: cannot list Slurm jobs: %s", e.message)
                    warned = True
                continue
            for ended in ended_sessions(refs, jobs, snapshot_time=t0):
                try:
                    record = await sch.close_session(ended.session_id)
                except NotFound:
                    continue  # closed meanwhile (the plugin at step end, or the user)
                except QschedError as e:
                    log.warning("reconciler: closing %s: %s", ended.session_id, e)
                    continue
                log.info("reconciler: job %s is %s: closed session %s (%s pending tasks cancelled)",
                         ended.job_id, ended.reason, ended.session_id, record.get("cancelled"))
                if on_close:
                    try:
                        await on_close(record)
                    except Exception:  # accounting comment is best effort
                        log.exception("reconciler: on_close for %s", ended.session_id)
    return slurm_reconciler


def fairshare_importer(adapter: SlurmAdapter, *, idle_s: float = 1.0):
    """Background loop: while the policy says fairshare_source: slurm, read `sshare -P -a` every
    fairshare_refresh_s and hand the factors to the scheduler. Looks at the policy each round, so a
    SIGHUP turns it on or off. A failed read keeps the last factors (logged once until one succeeds)."""
    async def slurm_fairshare_importer(sch) -> None:
        warned = False
        while True:
            opts = getattr(sch.policy, "options", {}) or {}
            if opts.get("fairshare_source") != "slurm":
                await asyncio.sleep(idle_s)
                continue
            try:
                shares = parse_shares(await asyncio.to_thread(adapter.sshare))
                if not warned and sch.slurm_shares is None:
                    log.info("fair share from Slurm: %d accounts, %d users (sshare every %g s)",
                             len(shares.accounts), len(shares.users), float(opts["fairshare_refresh_s"]))
                sch.set_slurm_shares(shares)
                warned = False
            except (SlurmError, SshareParseError) as e:
                if not warned:
                    log.warning("fair share from Slurm: sshare failed, keeping the last factors: %s",
                                getattr(e, "message", e))
                    warned = True
            await asyncio.sleep(float(opts.get("fairshare_refresh_s", 60.0)))
    return slurm_fairshare_importer


def maintenance_mirror(adapter: SlurmAdapter, site, *, interval_s: float = 2.0, recheck_s: float = 30.0,
                       users: str = "root", admission=None):
    """Background loop: the devices' admin states (and the scheduler's maintenance windows, when it has
    them: `maintenance_windows`, an iterable of qsched.slurm.maintenance.Window) as Slurm licence
    reservations (qsched.slurm.maintenance). A failed Slurm call is retried next round (logged once).
    admission (an admission.Admission): also hold back licences from each pool's predicted backlog."""
    from . import admission as adm
    from .maintenance import DeviceView, desired_reservations, plan, scontrol_args
    held: dict[str, int] = {}

    def admit(sch, desired: dict, now: float) -> dict:
        """desired, with the admission reservations (the maintenance ones win: decide sees them)."""
        decisions = {}
        for pool, total in site.pools.items():
            reserved = sum(r.licenses.get(license_name(pool), 0) for r in desired.values()
                           if r.start is None or r.start <= now)
            live = sum(1 for d in sch.devices.values() if d.spec.pool == pool and d.alive and d.state == "online")
            d = decisions[pool] = adm.decide(pool, total=total, backlog_s=sch.views.backlog.get(pool, 0.0),
                                             live_devices=live, held_now=held.get(pool, 0), reserved=reserved,
                                             cfg=admission)
            if d.held != held.get(pool, 0):
                log.warning("slurm: %s", d.reason)
            held[pool] = d.held
        return {**desired, **adm.reservations(decisions)}

    async def slurm_maintenance_mirror(sch) -> None:
        warned = False
        applied, checked = None, 0.0
        while True:
            now = time.time()
            devices = [DeviceView(n, d.spec.pool, d.state) for n, d in sch.devices.items()]
            desired = desired_reservations(site, devices, list(getattr(sch, "maintenance_windows", ()) or ()), now)
            if admission is not None and admission.enabled:
                desired = admit(sch, desired, now)
            # ask Slurm when the wish changed, else only now and then (someone may have deleted one)
            if desired == applied and now - checked < recheck_s:
                await asyncio.sleep(interval_s)
                continue
            try:
                existing = await asyncio.to_thread(adapter.reservations)
                for action in plan(desired, existing):
                    await asyncio.to_thread(adapter.scontrol, *scontrol_args(action, now, users=users))
                    r = action.reservation
                    log.warning("slurm: reservation %s %s: licences %s%s", r.name, action.verb + "d",
                                ",".join(f"{k}:{v}" for k, v in r.licenses.items()),
                                f" (was {action.old})" if action.old else "")
                applied, checked = desired, now
                warned = False
            except SlurmError as e:
                if not warned:
                    log.warning("slurm: cannot mirror device states to reservations: %s", e.message)
                    warned = True
            await asyncio.sleep(interval_s)
    return slurm_maintenance_mirror


def slurm_integration(config) -> SlurmIntegration:
    """The hooks config.slurm asks for (see the module doc); none when neither Slurm nor MUNGE is here.
    Runs subprocesses (sinfo for pyslurm, munge): the daemon calls it off its event loop."""
    cfg = config.slurm
    # `daemon check` refuses what `qsched slurm sync` would
    site = site_from_config(config) if cfg.site is not None else None
    if cfg.backend == "pyslurm" and cfg.enabled is not False:
        _check_pyslurm(cfg.env)
    identify = munge_hook(cfg.munge_socket) if munge.available(cfg.munge_socket) else None
    if cfg.enabled is False or (cfg.enabled == "auto" and not _slurm_present(cfg.env)):
        if config.policy.options.get("fairshare_source") == "slurm":
            raise ConfigError("policy.fairshare_source: slurm needs the Slurm hooks (slurm.enabled, a slurm.conf "
                              "and the Slurm client)", field="policy.fairshare_source")
        return SlurmIntegration(identify=identify)
    adapter = get_adapter(cfg.backend, env=cfg.env)
    on_close = admin_comment_hook(adapter) if cfg.admin_comment else None
    interval = cfg.reconcile_interval_s
    # the importer idles unless the policy asks for Slurm's factors (a SIGHUP may turn them on)
    background: list[Background] = [reconciler(adapter, interval_s=interval, on_close=on_close),
                                    fairshare_importer(adapter)]
    # per-pool licences exist only with slurm.site (qsched slurm sync): then device states go to Slurm
    if site is not None and cfg.mirror_maintenance:
        admission = Admission(cfg.admission, cfg.admission_target_s, cfg.admission_hysteresis, cfg.admission_min_free,
                              cfg.admission_max_held)
        background.append(maintenance_mirror(adapter, site, interval_s=interval, admission=admission))
    log.info("slurm: %s backend, reconcile every %.2g s, MUNGE %s", adapter.name, interval,
             "on" if identify else "off")
    return SlurmIntegration(identify=identify, verify_job=verify_hook(adapter, require_qpu=cfg.require_qpu),
                            user_accounts=user_accounts_hook(adapter), on_close=on_close, background=tuple(background))
