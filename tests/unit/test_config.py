from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from qsched.config import load_config, load_policy_file, parse_config
from qsched.errors import ConfigError


def test_defaults_are_the_embedded_local_setup(monkeypatch, tmp_path):
    monkeypatch.delenv("QSCHED_CONFIG", raising=False)
    monkeypatch.delenv("QSCHED_REDIS_URL", raising=False)
    monkeypatch.setenv("QSCHED_STATE_DIR", str(tmp_path))
    cfg = load_config(None)
    assert cfg.redis_url is None and cfg.state_dir == tmp_path
    assert {d.type for d in cfg.devices} == {"aer", "lightning", "null"}
    assert cfg.policy.name == "fair-share"


def test_shipped_config_is_valid():
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "qsched.yaml")
    assert cfg.devices
    for f in (root / "configs" / "policies").glob("*.yaml"):
        load_policy_file(f)


def test_shipped_example_config_is_the_builtin_default(monkeypatch, tmp_path):
    """configs/qsched.yaml says it is the default without the comments: every parsed field equal (it
    said 28 qubits while the default was 30)."""
    import dataclasses
    from pathlib import Path
    for var in ("QSCHED_CONFIG", "QSCHED_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("QSCHED_STATE_DIR", str(tmp_path))
    shipped = load_config(Path(__file__).resolve().parents[2] / "configs" / "qsched.yaml")
    default = load_config(None)
    assert dataclasses.replace(shipped, source="x") == dataclasses.replace(default, source="x")
    assert [d.limits.max_qubits for d in default.devices] == [28, 28, 30]


@pytest.mark.parametrize("raw, field", [
    ({"policy": {"name": "lottery"}}, "policy.name"),
    ({"policy": {"weights": {"classes": {"interactive": -1}}}}, "policy.weights.classes.interactive"),
    ({"policy": {"weights": {"teams": {}}}}, "policy.weights.teams"),
    ({"devices": [{"name": "a", "type": "aer", "max_qubits": 100}]}, "devices[0].max_qubits"),
    ({"devices": [{"name": "a", "type": "aer", "max_shots": "many"}]}, "devices[0].max_shots"),
    ({"devices": [{"type": "aer"}]}, "devices[0].name"),
    ({"devices": [{"name": "a b", "type": "aer"}]}, "devices[0].name"),
    ({"daemon": {"tcp": "nope"}}, "daemon.tcp"),
    ({"daemon": {"max_attempts": 0}}, "daemon.max_attempts"),
    ({"deamon": {}}, "config.deamon"),
])
def test_errors_name_the_field(raw, field):
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert e.value.field == field
    assert field.split(".")[-1].split("[")[0] in e.value.message


def test_unknown_device_type_is_named():
    with pytest.raises(ConfigError) as e:
        parse_config({"devices": [{"name": "q", "type": "quantinuum"}]}, known_types={"aer", "null"})
    assert e.value.field == "devices[0].type" and "quantinuum" in e.value.message


def test_unquoted_yaml_null_device_type(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("devices:\n  - {name: n0, type: null}\n")
    assert load_config(p).devices[0].type == "null"


def test_policy_validate_cli(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("name: fair-share\nweights:\n  classes: {interactive: 4, batch: 1}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy:\n  name: fair-share\n  weights:\n    users: {alice: zero}\n")
    ok = subprocess.run([sys.executable, "-m", "qsched", "policy", "validate", str(good)], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    res = subprocess.run([sys.executable, "-m", "qsched", "policy", "validate", str(bad)], capture_output=True,
                         text=True)
    assert res.returncode == 1
    assert "policy.weights.users.alice" in res.stderr


def _cli(*args):
    from click.testing import CliRunner

    from qsched.cli import cli
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("slurm, field", [({"bogus": 1}, "slurm.bogus"), ({"backend": "slurmrestd"}, "slurm.backend"),
                                          ({"reconcile_interval_s": 0}, "slurm.reconcile_interval_s")])
def test_daemon_check_refuses_what_the_daemon_refuses(tmp_path, slurm, field):
    path = tmp_path / "qsched.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "slurm": slurm}))
    res = _cli("daemon", "check", "--config", str(path))
    assert res.exit_code == 1 and field in res.output


def test_daemon_check_refuses_pyslurm_when_it_is_not_there(tmp_path):
    pytest.importorskip("qsched.slurm")
    try:
        import pyslurm  # noqa: F401
        pytest.skip("pyslurm is installed here")
    except ImportError:
        pass
    path = tmp_path / "qsched.yaml"
    # enabled: auto on a host without Slurm is refused too (it was accepted, then failed where Slurm is)
    for enabled in (True, "auto"):
        path.write_text(yaml.safe_dump({"state_dir": str(tmp_path),
                                        "slurm": {"enabled": enabled, "backend": "pyslurm"}}))
        res = _cli("daemon", "check", "--config", str(path))
        # refused as start-up refuses it, naming the field
        assert res.exit_code == 1, res.output
        assert "slurm.backend: pyslurm cannot be used here: pyslurm does not import" in res.output


def test_policy_validate_checks_a_full_config_as_the_reload_reads_it(tmp_path):
    path = tmp_path / "qsched.yaml"
    path.write_text(yaml.safe_dump({"daemon": {"bogus_key": 1}, "policy": {"name": "fifo"}}))
    res = _cli("policy", "validate", str(path))
    assert res.exit_code == 1 and "daemon.bogus_key" in res.output
    path.write_text(yaml.safe_dump({"policy": {"name": "fifo", "max_batch_s": 0.1}}))
    assert _cli("policy", "validate", str(path)).exit_code == 0


def test_json_logs_are_one_object_per_line():
    import json as json_lib
    env_res = subprocess.run([sys.executable, "-c", "import logging, qsched.logs as l; l.configure(fmt='json'); "
                              "logging.getLogger('qsched.test').warning('hello %s', 'there')"],
                             capture_output=True, text=True)
    line = json_lib.loads(env_res.stderr.strip().splitlines()[-1])
    assert line["msg"] == "hello there" and line["level"] == "warning" and line["logger"] == "qsched.test"
