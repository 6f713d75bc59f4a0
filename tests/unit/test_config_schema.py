"""The config's knobs are declared once (qsched/config.py SCHEMA, qsched/options.Option): the parser, the
bounds, the unknown-key checks, the dataclasses' defaults and docs/policy-reference.md's table follow."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from qsched.config import REFERENCE, SCHEMA, Config, SlurmConfig, parse_config
from qsched.errors import ConfigError
from qsched.options import reference_table
from qsched.policy.config import ClassSpec, PolicyConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy-reference.md"
KNOBS = [(section, o) for section, options in SCHEMA for o in options]
# with the fair-share policy's own options (the default policy: parse_config reads them as it)
DOCUMENTED = [(section, o) for section, options in REFERENCE for o in options]


def _raw(section: str, name: str, value) -> dict:
    """{a: {b: {name: value}}} for section "a.b" (a class section gets a class named NAME)."""
    out: dict = {name: value}
    for part in reversed(section.split(".")):
        out = {part: out}
    return out


def test_the_reference_table_is_generated_from_the_schema():
    text = DOC.read_text()
    m = re.search(r"<!-- schema:begin -->\n(.*?)<!-- schema:end -->", text, re.S)
    assert m, "docs/policy-reference.md lost its <!-- schema:begin/end --> markers"
    assert m.group(1) == reference_table(REFERENCE), (
        "docs/policy-reference.md's knob table is out of date; paste this between its markers:\n"
        + reference_table(REFERENCE))


@pytest.mark.parametrize("section, option", DOCUMENTED, ids=[f"{s}.{o.name}" for s, o in DOCUMENTED])
def test_every_knob_is_read_bounded_and_named_by_the_parser(section, option):
    where = f"{section}.{option.name}"
    bad = {"bool": "yes", "choice": "bogus", "text": 12}.get(option.kind, "many")
    with pytest.raises(ConfigError) as e:
        parse_config(_raw(section, option.name, bad))
    assert e.value.field == where
    for bound, step in ((option.lo, -1), (option.hi, 1)):
        if bound is not None:
            with pytest.raises(ConfigError) as e:
                parse_config(_raw(section, option.name, bound + step))
            assert e.value.field == where and e.value.limit == bound


def test_the_dataclasses_defaults_are_the_schemas():
    """What a Config built in code holds is what an empty config file gives."""
    parsed = parse_config({"policy": {"classes": {"NAME": {}}}})
    objects = {"redis": (parsed, "redis_"), "daemon": (parsed, ""), "auth": (parsed, ""),
               "slurm": (parsed.slurm, ""), "policy": (parsed.policy, ""),
               "policy.classes.NAME": (parsed.policy.classes["NAME"], "")}
    built = {Config: Config(state_dir=Path("x")), SlurmConfig: SlurmConfig(), PolicyConfig: PolicyConfig(),
             ClassSpec: ClassSpec("NAME")}
    for section, option in KNOBS:
        obj, prefix = objects[section]
        attr = prefix + option.name
        assert getattr(obj, attr) == option.default, f"{section}.{option.name}"
        default = next(f.default for f in dataclasses.fields(type(obj)) if f.name == attr)
        assert default == getattr(built[type(obj)], attr) == option.default, f"{section}.{option.name}"


def test_policy_does_not_import_the_config():
    """config imports policy (the registry validates policy.name); policy's own config is qsched.policy.config."""
    import subprocess
    import sys
    code = "import sys, qsched.policy; assert 'qsched.config' not in sys.modules, 'qsched.policy imports qsched.config'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
