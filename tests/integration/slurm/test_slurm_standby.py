"""The SPANK plugin with several daemons in plugstack's admin_socket= (a leader and its standbys): the
first that accepts opens the job's session, and QSCHED_URL lists every daemon's user socket in order."""
from __future__ import annotations


def test_plugin_skips_an_admin_socket_nobody_listens_on(slurm, slurm_daemon, users):
    alice = users["qsalice"]
    out = alice.home / "standby-list.out"
    dead = slurm.dir / "standby" / "admin.sock"                 # a standby does not listen
    real = slurm_daemon.state_dir / "admin.sock"
    slurm.set_plugstack(f"admin_socket={dead},{real}")
    try:
        jid = slurm.sbatch("--gres=qpu:1", "-o", str(out), "--wrap=echo session=[$QSCHED_SESSION] url=$QSCHED_URL",
                           user=alice.name, cwd=alice.home)
        info = slurm.wait_state(jid, {"COMPLETED", "FAILED"}, timeout=30)
    finally:
        slurm.set_plugstack()
    text = out.read_text()
    assert info["JobState"] == "COMPLETED", text
    assert "session=[]" not in text and "session=[" in text, text
    assert f"url=unix://{dead.parent}/qsched.sock,unix://{slurm_daemon.state_dir}/qsched.sock" in text, text
