"""The example config's commented emulated and QPU devices are valid once uncommented."""
import re
from pathlib import Path

import yaml

from qsched.config import parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "qsched.yaml"


def test_the_commented_qpu_examples_parse():
    text = EXAMPLE.read_text()
    block = text[text.index("  # an emulated QPU"):text.index("\n\n", text.index("  # an emulated QPU"))]
    lines = [re.sub(r"^  # ", "  ", ln) for ln in block.splitlines() if re.match(r"^  #  ", ln) or "- name" in ln]
    raw = yaml.safe_load(text)
    raw["devices"] += yaml.safe_load("\n".join(lines))
    raw["state_dir"] = "/tmp/qsched-example"
    cfg = parse_config(raw, known_types=None)
    emu, qpu = cfg.devices[-2:]
    assert emu.options["profile"] == "ibm-heron"
    assert qpu.type == "qrmi" and qpu.credentials_file == "/etc/qsched/qpu0.credentials"
    assert qpu.cost_prior == {"setup_s": 2.0, "per_shot_s": 0.00025} and qpu.merge_batches == 8
