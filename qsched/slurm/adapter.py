"""Slurm adapters: how qsched asks Slurm about jobs, submits, cancels and writes AdminComment.

The CLI backend (squeue/scontrol/sbatch/scancel) works with any Slurm >= 21.08; the pyslurm backend is
used only where pyslurm imports and its major.minor matches the installed Slurm (pyslurm is built
against one Slurm release and fails in C otherwise).

The adapters are synchronous (subprocesses, 5-50 ms a call); from asyncio code call them with
`await asyncio.to_thread(adapter.jobs)`.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import BadRequest, Unavailable
from .jobs import (AmbiguousRecord, JobInfo, job_from_scontrol, jobs_from_squeue_json,
                   parse_scontrol_record)

log = logging.getLogger("qsched.slurm")


class SlurmError(Unavailable):
    """Slurm could not be asked (command missing, slurmctld down, timeout, unparsable answer)."""
    code = "slurm_unavailable"


class SubmitRejected(BadRequest):
    """sbatch refused the job (bad option, job_submit.lua rejection); message is Slurm's own."""
    code = "slurm_rejected"


class SlurmAdapter:
    """Interface every backend implements. All job ids are ints."""

    name = "abstract"

    def jobs(self) -> dict[int, JobInfo]:
        """Every job slurmctld still knows (pending, running, and ended within MinJobAge)."""
        raise NotImplementedError

    def job(self, job_id: int) -> JobInfo | None:
        """One job, or None when Slurm does not know it (never existed or purged)."""
        raise NotImplementedError

    def submit(self, script: str | os.PathLike, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
               cwd: str | os.PathLike | None = None) -> int:
        """sbatch ARGS SCRIPT -> job id."""
        raise NotImplementedError

    def cancel(self, job_id: int, *, signal: str | None = None) -> None:
        raise NotImplementedError

    def set_admin_comment(self, job_id: int, text: str) -> None:
        """Needs Slurm operator rights (root or SlurmUser)."""
        raise NotImplementedError

    def version(self) -> str:
        """'22.05.8'."""
        raise NotImplementedError

    def sshare(self) -> str:
        """`sshare -P -a` text (every association's shares, usage and factor; needs slurmdbd)."""
        raise NotImplementedError

    def reservations(self) -> dict[str, dict[str, int]]:
        """Every reservation: name -> its licences."""
        raise NotImplementedError

    def user_accounts(self, user: str) -> list[str]:
        """The user's Slurm accounts (slurmdbd associations), the default account first; [] for a user
        Slurm does not know."""
        raise NotImplementedError

    def scontrol(self, *args: str) -> str:
        """`scontrol ARGS` (operator rights); Slurm's refusal raises SlurmError with its message."""
        raise NotImplementedError


def _slurm_env(env: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(os.environ)
    if env:
        out.update(env)
    return out


class CliSlurmAdapter(SlurmAdapter):
    """Talks to Slurm through its commands. `bin_dir` prefixes the command names; `env` is added to the
    environment of every call (e.g. {"SLURM_CONF": ...})."""

    name = "cli"

    def __init__(self, *, bin_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
                 timeout: float = 15.0):
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self.env = dict(env or {})
        self.timeout = timeout
        self._json = True  # squeue --json exists (>= 21.08); switched off when it does not

    # -- plumbing --------------------------------------------------------------------------------------
    def _cmd(self, name: str) -> str:
        if self.bin_dir:
            return str(self.bin_dir / name)
        found = shutil.which(name, path=_slurm_env(self.env).get("PATH"))
        if not found:
            raise SlurmError(f"{name} not found on PATH: is the Slurm client installed?")
        return found

    def _run(self, name: str, *args: str, check: bool = True, env: Mapping[str, str] | None = None,
             cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
        argv = [self._cmd(name), *args]
        full_env = _slurm_env(self.env)
        if env:
            full_env.update(env)
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, env=full_env,
                                cwd=cwd)
        except subprocess.TimeoutExpired as e:
            raise SlurmError(f"{name} timed out after {self.timeout:g} s") from e
        except OSError as e:
            raise SlurmError(f"cannot run {name}: {e}") from e
        if check and cp.returncode != 0:
            raise SlurmError(f"{' '.join([name, *args])}: {_first_error(cp)}")
        return cp

    # -- queries ---------------------------------------------------------------------------------------
    def jobs(self) -> dict[int, JobInfo]:
        if self._json:
            cp = self._run("squeue", "--json", check=False)
            if cp.returncode == 0:
                try:
                    return jobs_from_squeue_json(json.loads(cp.stdout))
                except (ValueError, KeyError, TypeError) as e:
                    raise SlurmError(f"unparsable squeue --json output: {e}") from e
            if "json" not in (cp.stderr or "").lower() and "unrecognized" not in (cp.stderr or ""):
                raise SlurmError(f"squeue --json: {_first_error(cp)}")
            log.warning("squeue has no --json; falling back to scontrol show job -o")
            self._json = False
        cp = self._run("scontrol", "show", "job", "-o")
        out = {}
        for line in cp.stdout.splitlines():
            if not line.startswith("JobId="):
                continue
            try:
                info = job_from_scontrol(parse_scontrol_record(line))
            except (AmbiguousRecord, ValueError, KeyError) as e:
                log.warning("skipping unparsable scontrol record: %s", e)
                continue
            out[info.job_id] = info
        return out

    def job(self, job_id: int) -> JobInfo | None:
        job_id = int(job_id)
        if self._json:
            # squeue --json ignores -j (22.05): one listing, filtered here; still the structured,
            # forgery-proof view
            jobs = self.jobs()
            if self._json:
                return jobs.get(job_id)
        cp = self._run("scontrol", "show", "job", "-o", str(job_id), check=False)
        if cp.returncode != 0:
            if "invalid job id" in (cp.stderr or "").lower():
                return None
            raise SlurmError(f"scontrol show job {job_id}: {_first_error(cp)}")
        for line in cp.stdout.splitlines():
            if line.startswith(f"JobId={job_id} "):
                try:
                    return job_from_scontrol(parse_scontrol_record(line))
                except AmbiguousRecord as e:
                    raise SlurmError(f"job {job_id}: {e}") from e
        return None

    def version(self) -> str:
        cp = self._run("sinfo", "--version")
        m = re.search(r"(\d+\.\d+(?:\.\d+)?)", cp.stdout)
        if not m:
            raise SlurmError(f"cannot read the Slurm version from {cp.stdout!r}")
        return m.group(1)

    def sshare(self) -> str:
        from .shares import SSHARE_FORMAT
        return self._run("sshare", "-P", "-a", "-o", SSHARE_FORMAT).stdout

    def reservations(self) -> dict[str, dict[str, int]]:
        from .maintenance import parse_reservations
        return parse_reservations(self._run("scontrol", "show", "reservation", "-o").stdout)

    def user_accounts(self, user: str) -> list[str]:
        out = self._run("sacctmgr", "-n", "-P", "show", "user", "withassoc", user,
                        "format=defaultaccount,account").stdout
        return parse_user_accounts(out)

    def scontrol(self, *args: str) -> str:
        return self._run("scontrol", *args).stdout

    def ping(self) -> bool:
        """slurmctld answers."""
        try:
            cp = self._run("scontrol", "ping", check=False)
        except SlurmError:
            return False
        return cp.returncode == 0 and "UP" in cp.stdout

    # -- actions ---------------------------------------------------------------------------------------
    def submit(self, script, args=(), *, env=None, cwd=None) -> int:
        cp = self._run("sbatch", "--parsable", *args, str(script), check=False, env=env, cwd=cwd)
        if cp.returncode != 0:
            raise SubmitRejected(_sbatch_message(cp), field="sbatch")
        return parse_sbatch_parsable(cp.stdout)

    def submit_argv(self, argv: Sequence[str], *, env=None, cwd=None) -> int:
        """sbatch --parsable ARGV (ARGV already holds the script, or --wrap)."""
        cp = self._run("sbatch", "--parsable", *argv, check=False, env=env, cwd=cwd)
        if cp.returncode != 0:
            raise SubmitRejected(_sbatch_message(cp), field="sbatch")
        return parse_sbatch_parsable(cp.stdout)

    def cancel(self, job_id: int, *, signal: str | None = None) -> None:
        args = [f"--signal={signal}"] if signal else []
        self._run("scancel", *args, str(int(job_id)))

    def set_admin_comment(self, job_id: int, text: str) -> None:
        if "\n" in text:
            raise ValueError("AdminComment must be one line")
        self._run("scontrol", "update", f"JobId={int(job_id)}", f"AdminComment={text}")


def parse_user_accounts(text: str) -> list[str]:
    """`sacctmgr -nP show user withassoc NAME format=defaultaccount,account` -> accounts, default first."""
    default, accounts = "", []
    for line in (text or "").splitlines():
        d, _, a = line.strip().partition("|")
        default = default or d
        if a and a not in accounts:
            accounts.append(a)
    return sorted(accounts, key=lambda a: a != default)


def parse_sbatch_parsable(out: str) -> int:
    """'123' or '123;cluster' -> 123."""
    first = (out or "").strip().splitlines()[-1:] or [""]
    m = re.match(r"(\d+)", first[0].strip())
    if not m:
        raise SlurmError(f"unexpected sbatch --parsable output {out!r}")
    return int(m.group(1))


def _first_error(cp: subprocess.CompletedProcess) -> str:
    text = (cp.stderr or cp.stdout or "").strip()
    return text.splitlines()[-1] if text else f"exit status {cp.returncode}"


def _sbatch_message(cp: subprocess.CompletedProcess) -> str:
    """sbatch's stderr minus its generic last line, so a job_submit.lua message reads first."""
    lines = [ln.removeprefix("sbatch: error: ").strip() for ln in (cp.stderr or "").splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Batch job submission failed")] or lines
    return "; ".join(useful) or f"sbatch failed with exit status {cp.returncode}"


# --- backend choice -----------------------------------------------------------------------------------

def _major_minor(version: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def pyslurm_problem(slurm_version: str | None) -> str | None:
    """Why pyslurm cannot serve this Slurm, or None when it imports and was built for its major.minor
    (pyslurm X.Y.z <-> Slurm X.Y: PyPI has pyslurm 25.11 only, which refuses every other Slurm)."""
    try:
        import pyslurm
    except Exception as e:  # ImportError, or its C extension failing against another libslurm
        return f"pyslurm does not import ({type(e).__name__}: {str(e)[:200]}); pip install 'qsched[slurm]' " \
               "needs a pyslurm built for the installed Slurm"
    ver = getattr(pyslurm, "__version__", "") or ""
    ours = _major_minor(ver)
    if slurm_version is None:
        return f"pyslurm {ver or '(no version)'} is installed, but there is no Slurm here to match it against"
    theirs = _major_minor(slurm_version)
    if ours is None or theirs is None or ours != theirs:
        return f"pyslurm {ver or '(no version)'} is built for Slurm {'.'.join(map(str, ours)) if ours else '?'}, " \
               f"this host has Slurm {slurm_version}"
    return None


def pyslurm_matches(slurm_version: str) -> bool:
    """pyslurm imports and was built for this Slurm's major.minor (pyslurm 22.5.x <-> Slurm 22.05)."""
    return pyslurm_problem(slurm_version) is None


def get_adapter(backend: str = "auto", **kwargs) -> SlurmAdapter:
    """backend: "cli", "pyslurm" (error when it does not match), or "auto" (pyslurm when it matches,
    else the CLI). kwargs go to CliSlurmAdapter (the pyslurm backend uses the CLI for sbatch/scancel)."""
    if backend not in ("auto", "cli", "pyslurm"):
        raise ValueError(f"unknown Slurm backend {backend!r} (auto, cli, pyslurm)")
    cli = CliSlurmAdapter(**kwargs)
    if backend == "cli":
        return cli
    try:
        version = cli.version()
    except SlurmError:
        if backend == "pyslurm":
            raise
        return cli
    if pyslurm_matches(version):
        from .pyslurm_backend import PyslurmAdapter
        return PyslurmAdapter(cli)
    if backend == "pyslurm":
        raise SlurmError(f"pyslurm is missing or not built for Slurm {version}")
    return cli
