"""One validation path: start (`daemon run`), `daemon check`, `policy validate` (systemd's ExecReload) and
the SIGHUP reload refuse the same configs, naming the same field, and accept the same ones."""
from __future__ import annotations

import asyncio

import pytest
import yaml
from click.testing import CliRunner

from qsched.cli import cli
from qsched.config import parse_config
from qsched.daemon import Daemon
from qsched.devices import device_types

BAD = [
    # refused by the daemon's check only, once: policy validate passed it
    ({"policy": {"fairshare_source": "slurm"}, "slurm": {"enabled": False}}, "policy.fairshare_source"),
    ({"daemon": {"bogus_key": 1}}, "daemon.bogus_key"),
    ({"daemon": {"max_attempts": 0}, "policy": {"name": "fifo"}}, "daemon.max_attempts"),
    ({"slurm": {"backend": "slurmrestd"}}, "slurm.backend"),
    ({"slurm": {"reconcile_interval_s": 0}}, "slurm.reconcile_interval_s"),
    ({"slurm": {"enabled": False, "site": {"max_qpu": 0}}}, "slurm.site.max_qpu"),
    ({"policy": {"name": "lottery"}}, "policy.name"),
    ({"policy": {"max_batch_s": -1}}, "policy.max_batch_s"),
    ({"policy": {"classes": {"dev": {"spill_to": "nowhere"}}}}, "policy.classes.dev.spill_to"),
    ({"devices": [{"name": "q0", "type": "quantinuum"}]}, "devices[0].type"),     # the installed types
    ({"redis": {"socket_group": "qsched-no-such-group"}}, "redis.socket_group"),
    ({"daemon": {"tls": {"cert_file": "/nonexistent/c.pem", "key_file": "/nonexistent/k.pem"}}},
     "daemon.tls.cert_file"),
    ({"deamon": {}}, "config.deamon"),
    (b"", None),                     # an empty file (None: the field is the file's path)
    (b"# only a comment\n", None),
    (b"policy: {name: fifo}\n# caf\xe9\n", None),          # Latin-1, not UTF-8
    (b"policy: [unclosed\n", None),
]

GOOD = [
    {"daemon": {"tcp": None}},                   # no policy: section (policy validate refused it)
    {"policy": {"name": "fifo"}},
    {"slurm": {"enabled": False}, "policy": {"name": "round-robin", "max_batch_s": 0.1}},
    {"devices": [{"name": "n0", "type": "null", "pool": "cpu"}], "policy": {"classes": {"dev": {"spill_to": "cpu"}}}},
]


def _write(tmp_path, body) -> str:
    path = tmp_path / "qsched.yaml"
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), **body}))
    return str(path)


def _cli(*args):
    return CliRunner().invoke(cli, list(args))


def _reload(tmp_path, path):
    """The SIGHUP reload of a daemon that started on a valid config and now reads `path`."""
    d = Daemon(parse_config({"state_dir": str(tmp_path / "state")}), config_path=path,
               known_types=set(device_types()))
    before = d.config.policy
    err = asyncio.run(d.reload())
    return err, d.config.policy is before


@pytest.mark.parametrize("body, field", BAD, ids=[f or repr(b)[:20] for b, f in BAD])
def test_what_one_gate_refuses_every_gate_refuses(tmp_path, body, field):
    path = _write(tmp_path, body)
    field = field or path
    gates = {"start": _cli("daemon", "run", "--config", path),
             "daemon check": _cli("daemon", "check", "--config", path),
             "policy validate": _cli("policy", "validate", path)}
    for gate, res in gates.items():
        assert res.exit_code == 1, (gate, res.output)
        assert field in res.output, (gate, res.output)
        assert "Traceback" not in res.output, (gate, res.output)
    err, kept = _reload(tmp_path, path)
    assert err is not None and err.field == field, err
    assert kept                               # the old policy stays
    assert not (tmp_path / "state").exists()  # start refused it before creating anything


@pytest.mark.parametrize("body", GOOD)
def test_what_one_gate_accepts_every_gate_accepts(tmp_path, body):
    path = _write(tmp_path, body)
    for args in (("daemon", "check", "--config", path), ("policy", "validate", path)):
        res = _cli(*args)
        assert res.exit_code == 0, (args, res.output)
    err, kept = _reload(tmp_path, path)
    assert err is None and not kept


def test_a_bare_policy_mapping_is_still_a_policy_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: fair-share\nmax_batch_s: 0.1\n")
    assert _cli("policy", "validate", str(path)).exit_code == 0
    path.write_text("name: fair-share\nmax_batch_s: -1\n")
    res = _cli("policy", "validate", str(path))
    assert res.exit_code == 1 and "policy.max_batch_s" in res.output


def _daemon(tmp_path, path, raw=None) -> Daemon:
    raw = {"state_dir": str(tmp_path / "state"), **(raw or {})}
    return Daemon(parse_config(raw), config_path=str(path), known_types=set(device_types()))


def test_reload_reads_and_checks_the_file_off_the_event_loop(tmp_path):
    """A config whose read blocks (a FIFO nobody writes yet) must not stall the loop: the SIGHUP handler
    ran parse and check (sinfo, munge) synchronously in the event loop."""
    import os
    import threading
    fifo = tmp_path / "qsched.yaml"
    os.mkfifo(fifo)
    d = _daemon(tmp_path, fifo)

    def writer():
        with open(fifo, "w") as f:
            f.write(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "policy": {"name": "fifo"}}))

    async def main():
        ticks = 0
        reload = asyncio.create_task(d.reload())
        t = threading.Timer(0.5, writer)
        t.start()
        while not reload.done():
            ticks += 1
            await asyncio.sleep(0.02)
        t.join()
        return ticks, await reload
    ticks, err = asyncio.run(asyncio.wait_for(main(), 10))
    assert err is None and d.config.policy.name == "fifo"
    assert ticks >= 10                  # the loop ran while the file was being read


def test_reload_refuses_an_empty_file_and_keeps_the_policy(tmp_path, caplog):
    path = tmp_path / "qsched.yaml"
    d = _daemon(tmp_path, path, {"policy": {"name": "round-robin"}})
    for body in (b"", b"\n# policy: cleared while editing\n"):
        path.write_bytes(body)
        err = asyncio.run(d.reload())
        assert err is not None and err.field == str(path) and "empty" in err.message
        assert d.config.policy.name == "round-robin"           # not reset to the default fair-share
    assert "the old policy stays" in caplog.text and "empty" in caplog.text


def test_reload_names_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "qsched.yaml"
    path.write_bytes(b"policy:\n  name: fifo  # r\xe9glage\n")
    err = asyncio.run(_daemon(tmp_path, path).reload())
    assert err is not None and "not UTF-8 text (byte 0xe9" in err.message


def test_reload_says_which_sections_it_did_not_apply(tmp_path, caplog):
    import logging
    path = tmp_path / "qsched.yaml"
    start = {"daemon": {"drain_timeout_s": 30}, "devices": [{"name": "n0", "type": "null"}]}
    d = _daemon(tmp_path, path, start)
    edited = {**start, "daemon": {"drain_timeout_s": 5}, "users": {"alice": "chem"}, "policy": {"name": "fifo"}}
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), **edited}))
    with caplog.at_level(logging.INFO, logger="qsched.daemon"):
        assert asyncio.run(d.reload()) is None
    assert d.config.policy.name == "fifo"
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "changes to daemon, users not applied" in warned[0].getMessage()
    assert d.config.drain_timeout_s == 30                    # still what runs
