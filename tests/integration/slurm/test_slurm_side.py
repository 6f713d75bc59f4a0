"""The Slurm side against a real Slurm, without the qsched daemon: the SPANK plugin's build and options,
job_submit.lua, the adapter, session verification, MUNGE, the reconciler's decision, AdminComment,
and `qsched submit`."""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SPANK_DIR = REPO / "slurm" / "spank"

pytestmark = pytest.mark.slurm


def _slurm_version_number() -> int:
    text = Path("/usr/include/slurm/slurm_version.h").read_text()
    return int(re.search(r"#define SLURM_VERSION_NUMBER\s+(0x[0-9a-fA-F]+)", text).group(1), 16)


# --- the plugin as a binary ---------------------------------------------------------------------------

def test_plugin_compiles_warning_free_and_exports_spank_symbols(slurm, tmp_path):
    # the slurm fixture ran slurm-up.sh, which installs spank.h and a C compiler where they are missing
    assert Path("/usr/include/slurm/spank.h").exists() and shutil.which("cc")
    build = tmp_path / "spank"
    shutil.copytree(SPANK_DIR, build, ignore=shutil.ignore_patterns("*.so", "*.o"))
    cp = subprocess.run(["make", "-C", str(build)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr  # -Wall -Wextra -Werror: any warning fails the build
    assert "-Werror" in cp.stdout and "-Wextra" in cp.stdout
    so = build / "qsched_spank.so"
    # Slurm's own symbols (spank_option_register, slurm_error) resolve only inside Slurm: bind lazily
    lib = ctypes.CDLL(str(so), mode=os.RTLD_LAZY | os.RTLD_LOCAL)
    name = ctypes.string_at(ctypes.addressof(ctypes.c_char.in_dll(lib, "plugin_name")))
    ptype = ctypes.string_at(ctypes.addressof(ctypes.c_char.in_dll(lib, "plugin_type")))
    assert name == b"qsched" and ptype == b"spank"
    assert ctypes.c_uint.in_dll(lib, "plugin_version").value == _slurm_version_number()
    assert ctypes.c_uint.in_dll(lib, "spank_plugin_version").value == 1
    for sym in ("slurm_spank_init", "slurm_spank_init_post_opt", "slurm_spank_task_init",
                "slurm_spank_task_exit", "slurm_spank_exit"):
        assert getattr(lib, sym) is not None
    # no static option table: sbatch would ignore it; options are registered in slurm_spank_init
    with pytest.raises(ValueError):
        ctypes.c_void_p.in_dll(lib, "spank_options")


@pytest.mark.parametrize("cmd", ["sbatch", "srun", "salloc"])
def test_help_lists_plugin_options(slurm, cmd):
    out = slurm.run(cmd, "--help").stdout
    assert re.search(r"--qpu(=\[POOL\])?\s", out), out[-2000:]
    assert "--qpu-class=CLASS" in out


# --- job_submit.lua -----------------------------------------------------------------------------------

def test_gres_job_gets_license_defaults_and_plugin_options(slurm):
    jid = slurm.sbatch("--hold", "--gres=qpu:2", "--wrap=true", "-o", "/dev/null")
    j = slurm.job(jid)
    assert j["Licenses"] == "qpu:2"
    assert j["AdminComment"] == "qsched:qpu=2,pool=aer,class=batch"
    slurm.run("scancel", str(jid))


def test_qpu_option_alone_gets_a_license(slurm):
    jid = slurm.sbatch("--hold", "--qpu=lightning", "--qpu-class=interactive", "--wrap=true", "-o", "/dev/null")
    j = slurm.job(jid)
    assert j["Licenses"] == "qpu:1"
    assert j["AdminComment"] == "qsched:qpu=1,pool=lightning,class=interactive"
    slurm.run("scancel", str(jid))


def test_non_quantum_job_untouched(slurm):
    jid = slurm.sbatch("--hold", "--wrap=true", "-o", "/dev/null")
    j = slurm.job(jid)
    assert j["Licenses"] == "(null)" and "AdminComment" not in j
    slurm.run("scancel", str(jid))


@pytest.mark.parametrize("args, message", [
    (["--qpu-class=bogus"], "unknown qpu class 'bogus'"),
    (["--gres=qpu:5"], "qpu:5 is over the maximum of 4"),
    (["-L", "qpu:9"], "qpu:9 is over the maximum of 4"),
])
def test_lua_rejects_bad_requests_with_a_message(slurm, users, args, message):
    alice = users["qsalice"]
    cp = slurm.sbatch(*args, "--wrap=true", "-o", "/dev/null", user=alice.name, cwd=alice.home, check=False)
    assert isinstance(cp, subprocess.CompletedProcess) and cp.returncode != 0
    assert message in cp.stderr


def test_plugin_rejects_bad_pool_name_at_submit(slurm):
    cp = slurm.sbatch("--qpu=bad/pool", "--wrap=true", check=False)
    assert isinstance(cp, subprocess.CompletedProcess) and cp.returncode != 0
    assert "invalid --qpu value" in cp.stderr


# --- the adapter --------------------------------------------------------------------------------------

@pytest.fixture
def adapter(slurm):
    from qsched.slurm import get_adapter
    return get_adapter("auto", env={"SLURM_CONF": slurm.env["SLURM_CONF"]})


def _sleep_job(slurm, user, *extra, secs=30):
    return slurm.sbatch(*extra, f"--wrap=sleep {secs}", "-o", "/dev/null", user=user.name, cwd=user.home)


def test_adapter_backend_version_and_listing(slurm, adapter):
    assert adapter.name == "cli"  # no pyslurm for 22.05 on PyPI
    assert re.match(r"\d+\.\d+\.\d+", adapter.version())
    jid = slurm.sbatch("--hold", "--gres=qpu:1", "--comment=look UserId=nobody(65534)", "--wrap=true",
                       "-o", "/dev/null")
    jobs = adapter.jobs()
    j = jobs[jid]
    assert j.state == "PENDING" and j.uid == 0 and j.user == "root"
    assert j.qpu.count == 1 and j.qpu.pool == "aer" and j.qpu.source == "admin_comment"
    assert j.comment == "look UserId=nobody(65534)"  # structured JSON: free text stays free text
    assert adapter.job(jid) == j
    assert adapter.job(999999) is None
    slurm.run("scancel", str(jid))


def test_scontrol_parser_refuses_forged_fields(slurm, users):
    """A job name imitating `UserId=` must not make another user's job look like ours."""
    from qsched.slurm.jobs import AmbiguousRecord, job_from_scontrol, parse_scontrol_record
    alice = users["qsalice"]
    jid = slurm.sbatch("--hold", "-J", "x UserId=root(0)", "--wrap=true", "-o", "/dev/null",
                       user=alice.name, cwd=alice.home)
    line = slurm.run("scontrol", "show", "job", "-o", str(jid)).stdout.strip()
    with pytest.raises(AmbiguousRecord):
        parse_scontrol_record(line)
    jid2 = slurm.sbatch("--hold", "-J", "plain name", "--wrap=true", "-o", "/dev/null", user=alice.name,
                        cwd=alice.home)
    info = job_from_scontrol(parse_scontrol_record(
        slurm.run("scontrol", "show", "job", "-o", str(jid2)).stdout.strip()))
    assert info.uid == alice.uid and info.name == "plain name" and info.state == "PENDING"
    slurm.run("scancel", str(jid), str(jid2))


def test_submit_cancel_and_admin_comment(slurm, adapter, users, tmp_path):
    from qsched.slurm import SubmitRejected, format_admin_comment, write_usage
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/bash\nsleep 30\n")
    jid = adapter.submit(script, ["--gres=qpu:1", "-o", "/dev/null", "--hold"])
    assert adapter.job(jid).state == "PENDING"
    usage = {"device_seconds": 1.23456, "tasks": 7, "circuits": 70, "shots": 0}
    text = write_usage(adapter, jid, usage, session_id="abc123")
    assert text == "qsched:qpu=1,pool=aer,class=batch,session=abc123,device_s=1.235,tasks=7,circuits=70,shots=0"
    assert adapter.job(jid).admin_comment == text
    assert format_admin_comment({"tasks": 1}, previous="keep me qsched:qpu=2") == "keep me qsched:qpu=2,tasks=1"
    adapter.cancel(jid)
    assert adapter.job(jid).state == "CANCELLED"
    # a finished job's AdminComment cannot change: write_usage reports it instead of raising
    assert write_usage(adapter, jid, usage) is None
    with pytest.raises(SubmitRejected, match="unknown qpu class"):
        adapter.submit(script, ["--qpu-class=nope"])


def test_users_cannot_write_admin_comment(slurm, users):
    """The quantum request in AdminComment is trusted because only operators can set it."""
    alice = users["qsalice"]
    jid = slurm.sbatch("--hold", "--wrap=true", "-o", "/dev/null", user=alice.name, cwd=alice.home)
    slurm.run("scontrol", "update", f"JobId={jid}", "AdminComment=qsched:qpu=4", user=alice.name, check=False)
    assert "AdminComment" not in slurm.job(jid)
    slurm.run("scancel", str(jid))


# --- session verification and the reconciler ----------------------------------------------------------

def test_verify_job_for_session(slurm, adapter, users):
    from qsched.errors import BadRequest, Conflict, Forbidden, NotFound
    from qsched.slurm import verify_job_for_session
    from qsched.slurm.reconcile import SessionRef, ended_sessions
    alice, bob = users["qsalice"], users["qsbob"]
    slurm.set_plugstack("on_down=continue")  # no daemon in this module: let the jobs run anyway
    try:
        q = _sleep_job(slurm, alice, "--gres=qpu:1")
        plain = _sleep_job(slurm, alice)
        short = slurm.sbatch("--gres=qpu:1", "--wrap=true", "-o", "/dev/null", user=alice.name, cwd=alice.home)
        held = slurm.sbatch("--hold", "--gres=qpu:1", "--wrap=true", "-o", "/dev/null", user=alice.name,
                            cwd=alice.home)
        slurm.wait_state(q, "RUNNING")
        slurm.wait_state(plain, "RUNNING")
        slurm.wait_state(short, "COMPLETED")
        job = verify_job_for_session(adapter, str(q), alice.uid)
        assert job.job_id == q and job.running and job.qpu.count == 1
        with pytest.raises(Forbidden, match="does not belong"):
            verify_job_for_session(adapter, q, bob.uid)
        with pytest.raises(Forbidden, match="quantum"):
            verify_job_for_session(adapter, plain, alice.uid)
        with pytest.raises(Conflict, match="COMPLETED"):
            verify_job_for_session(adapter, short, alice.uid)
        with pytest.raises(Conflict, match="PENDING"):
            verify_job_for_session(adapter, held, alice.uid)
        with pytest.raises(NotFound):
            verify_job_for_session(adapter, 987654, alice.uid)
        for bad in ("12_3", "-1", "abc", True):
            with pytest.raises(BadRequest):
                verify_job_for_session(adapter, bad, alice.uid)

        # the reconciler's decision from the adapter's real view
        t0 = time.time()
        refs = [SessionRef("s-q", q, t0 - 10), SessionRef("s-short", short, t0 - 10),
                SessionRef("s-gone", 987654, t0 - 10), SessionRef("s-new", 987655, t0 + 5),
                SessionRef("s-local", None)]
        jobs = adapter.jobs()
        ended = {e.session_id: e.reason for e in ended_sessions(refs, jobs, snapshot_time=t0)}
        assert ended == {"s-short": "COMPLETED", "s-gone": "GONE"}
        slurm.run("scancel", str(q))
        slurm.wait_state(q, "CANCELLED")
        ended = {e.session_id: e.reason for e in ended_sessions(refs, adapter.jobs(), snapshot_time=t0)}
        assert ended["s-q"] == "CANCELLED"
        slurm.run("scancel", str(plain), str(held))
    finally:
        slurm.set_plugstack()


def test_verify_hook_reports_the_jobs_account_from_slurm(slurm, adapter, users):
    """The daemon's verify_job hook answers with the facts of record: `sbatch -A chem` gives account chem,
    a job without -A gives the user's default association (slurmdbd), and an account the user has no
    association with is refused by Slurm itself (AccountingStorageEnforce=associations)."""
    import asyncio

    from qsched.slurm.hooks import verify_hook
    alice = users["qsalice"]
    slurm.set_plugstack("on_down=continue")  # no daemon in this module: let the jobs run anyway
    try:
        chem = _sleep_job(slurm, alice, "-A", "chem", "--gres=qpu:1")
        plain = _sleep_job(slurm, alice, "--gres=qpu:1")
        slurm.wait_state(chem, "RUNNING")
        slurm.wait_state(plain, "RUNNING")
        assert slurm.job(chem)["Account"] == "chem"
        verify = verify_hook(adapter)
        facts = asyncio.run(verify(str(chem), alice.uid))
        assert facts == {"account": "chem", "user": alice.name, "uid": alice.uid, "job_id": str(chem)}
        assert slurm.job(plain)["Account"] == "chem"      # qsalice's default association
        assert asyncio.run(verify(str(plain), alice.uid))["account"] == "chem"
        cp = slurm.sbatch("-A", "phys", "--gres=qpu:1", "--wrap=true", "-o", "/dev/null", user=alice.name,
                          cwd=alice.home, check=False)
        assert isinstance(cp, subprocess.CompletedProcess) and cp.returncode != 0
        assert "Invalid account" in cp.stderr, cp.stderr
        from qsched.errors import Forbidden
        with pytest.raises(Forbidden):
            asyncio.run(verify(str(chem), users["qsbob"].uid))
        slurm.run("scancel", str(chem), str(plain))
    finally:
        slurm.set_plugstack()


# --- MUNGE --------------------------------------------------------------------------------------------

def test_munge_identity_of_another_user(slurm, users, user_python):
    """A credential made by alice's process decodes to alice's uid; a replay and a foreign purpose fail."""
    from qsched.slurm import munge
    alice = users["qsalice"]
    code = ("from qsched.slurm import munge; print(munge.credential_for('attach', job_id=42))")
    cp = slurm.run("env", *[f"{k}={v}" for k, v in user_python.env.items()], user_python.exe, "-c", code,
                   user=alice.name, cwd=str(alice.home))
    cred = cp.stdout.strip()
    ident = munge.verify_credential(cred, "attach", job_id=42)
    assert (ident.uid, ident.gid) == (alice.uid, alice.gid)
    with pytest.raises(munge.MungeError, match="replayed"):
        munge.decode(cred)
    with pytest.raises(munge.MungeError, match="job_id"):
        munge.verify_credential(munge.credential_for("attach", job_id=1), "attach", job_id=2)
    with pytest.raises(munge.MungeError, match="not a MUNGE credential"):
        munge.decode("Bearer abc")
    with pytest.raises(munge.MungeError):
        munge.decode(cred[:-8] + "AAAAAAA:")  # tampered


def test_munge_cli_fallback(slurm):
    from qsched.slurm import munge
    lib = munge._lib_cache[:]
    munge._lib_cache[:] = [None]  # as if libmunge did not load
    try:
        cred = munge.credential_for("open")
        ident = munge.verify_credential(cred, "open")
        assert ident.uid == os.getuid()
        with pytest.raises(munge.MungeError, match="replayed"):
            munge.decode(cred)
    finally:
        munge._lib_cache[:] = lib


# --- qsched submit ------------------------------------------------------------------------------------

def test_qsched_submit_builds_sbatch_and_waits(slurm, users, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from qsched.cli.submit import build_sbatch_argv, split_passthrough, submit
    assert split_passthrough(["-p", "debug", "--mem", "1G", "--exclusive", "job.sh", "-x", "1"]) == (
        ["-p", "debug", "--mem", "1G", "--exclusive"], "job.sh", ["-x", "1"])
    assert split_passthrough(["--", "job.sh"]) == ([], "job.sh", [])
    assert build_sbatch_argv("j.sh", ["a"], nodes=2, time_limit="5:00", pool="aer", klass="debug",
                             extra=["-p", "debug"]) == [
        "--nodes=2", "--time=5:00", "--qpu=aer", "--qpu-class=debug", "-p", "debug", "j.sh", "a"]

    for k, v in slurm.env.items():
        if k.startswith("SLURM"):
            monkeypatch.setenv(k, v)
    slurm.set_plugstack("on_down=continue")
    try:
        out = tmp_path / "out.txt"
        script = tmp_path / "job.sh"
        script.write_text(f"#!/bin/bash\necho \"pool=$QSCHED_POOL class=$QSCHED_CLASS args=$*\" > {out}\nexit 3\n")
        script.chmod(0o755)
        res = CliRunner().invoke(submit, ["--wait", "--qpu", "aer", "--class", "debug", "--time", "2",
                                          "-o", "/dev/null", "--job-name", "subtest", str(script), "x", "y"])
        assert res.exit_code == 3, res.output
        jid = int(res.output.strip().splitlines()[0])
        j = slurm.job(jid)
        assert j["JobName"] == "subtest" and j["TimeLimit"] == "00:02:00"
        # the request; with a daemon up (e2e module) the usage follows it
        assert j["AdminComment"].startswith("qsched:qpu=1,pool=aer,class=debug")
        assert out.read_text().strip() == "pool=aer class=debug args=x y"
        res = CliRunner().invoke(submit, ["--class", "nope", str(script)])
        assert res.exit_code != 0 and "unknown qpu class" in res.output
        # without --qpu the script's own #SBATCH --qpu=POOL holds (sbatch's command line would override it)
        script.write_text(f"#!/bin/bash\n#SBATCH --qpu=lightning\n#SBATCH --time=2\n"
                          f"echo \"pool=$QSCHED_POOL\" > {out}\n")
        res = CliRunner().invoke(submit, ["--wait", "-o", "/dev/null", str(script)])
        assert res.exit_code == 0, res.output
        j = slurm.job(int(res.output.strip().splitlines()[0]))
        assert j["AdminComment"].startswith("qsched:qpu=1,pool=lightning"), j["AdminComment"]
        assert out.read_text().strip() == "pool=lightning"
    finally:
        slurm.set_plugstack()


# --- job users' Python and working directories (docs/admin/slurm.md) -------------------------------

def test_job_users_python_and_working_directory(slurm, users, user_python, tmp_path):
    """The examples' scripts run `$QSCHED_PYTHON`; a job runs in its submit dir, or in /tmp (with
    slurmstepd's message in its output) when its user cannot enter that dir."""
    alice = users["qsalice"]
    # the interpreter choice of examples/*.sbatch
    lines = [ln for ln in (REPO / "examples" / "vqe.sbatch").read_text().splitlines() if ln.startswith(("PY=", "if "))]
    assert lines[0] == 'PY="${QSCHED_PYTHON:-python3}"', lines
    script = alice.home / "which-python.sh"
    script.write_text("#!/bin/bash\nROOT=/nonexistent\n" + "\n".join(lines) +
                      '\nexec "$PY" -c "import os, sys, qsched; print(os.getcwd(), sys.executable)"\n')
    script.chmod(0o755)
    env = ",".join(f"{k}={v}" for k, v in user_python.env.items())
    out = alice.home / "which-python.out"
    jid = slurm.sbatch(f"--export=ALL,QSCHED_PYTHON={user_python.exe},{env}", "-o", str(out), str(script),
                       user=alice.name, cwd=alice.home)
    assert slurm.wait_state(jid, {"COMPLETED", "FAILED"})["JobState"] == "COMPLETED", out.read_text()
    cwd, exe = out.read_text().split()
    # the portable interpreter is a wrapper that execs the real binary beside it
    assert cwd == str(alice.home) and Path(exe).parent == Path(user_python.exe).parent, (cwd, exe)
    # submitted (as root, for alice) from a directory alice cannot enter
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    out2 = alice.home / "chdir.out"
    jid = slurm.sbatch(f"--uid={alice.name}", f"--export=ALL,QSCHED_PYTHON={user_python.exe},{env}", "-o", str(out2),
                       str(script), cwd=private)
    slurm.wait_state(jid, {"COMPLETED", "FAILED"})
    text = out2.read_text()
    assert "going to /tmp instead" in text and str(private) in text, text
    assert text.strip().splitlines()[-1].split()[0] == "/tmp", text
