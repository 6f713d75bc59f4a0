"""A device's cost_prior seeds the cost model; measurements then replace the per-binding part."""
import pytest

from qsched.config import parse_config
from qsched.daemon.cost import CostModel
from qsched.errors import ConfigError


def _model(prior):
    cfg = parse_config({"devices": [{"name": "qpu0", "type": "null", "cost_prior": prior},
                                    {"name": "sim0", "type": "null"}]})
    m = CostModel()
    m.seed(cfg.devices)
    return m


def test_prior_seeds_setup_and_per_binding():
    m = _model({"setup_s": 2.0, "per_shot_s": 0.001, "shots": 500})
    assert m.estimate("qpu0", "sample", 4) == pytest.approx(2.0 + 4 * 0.5)
    assert m.marginal("qpu0", "sample", 4) == pytest.approx(2.0)
    assert m.estimate("sim0", "sample", 4) == pytest.approx(4e-3)        # no prior: 1 ms per binding


def test_measurements_replace_the_per_binding_part_not_the_setup():
    m = _model({"setup_s": 2.0, "per_binding_s": 0.5})
    m.observe("qpu0", "estimate", 10, 2.0 + 10 * 0.1)
    assert m.estimate("qpu0", "estimate", 10) == pytest.approx(3.0)
    assert m.estimate("qpu0", "sample", 10) == pytest.approx(7.0)         # other kinds keep the prior


def test_bad_priors_name_the_field():
    with pytest.raises(ConfigError) as e:
        _model({"setup_s": -1})
    assert e.value.field == "devices[0].cost_prior.setup_s"
    with pytest.raises(ConfigError) as e:
        _model({"per_shot_s": 1e-3, "per_binding_s": 1.0})
    assert "not both" in e.value.message
    with pytest.raises(ConfigError) as e:
        _model({"setup": 1})
    assert e.value.field == "devices[0].cost_prior.setup"


def test_an_emulated_qpu_without_a_prior_is_seeded_from_its_timing_profile():
    cfg = parse_config({"devices": [
        {"name": "heron", "type": "emulated-qpu", "options": {"profile": "ibm-heron", "default_shots": 400}},
        {"name": "own", "type": "emulated-qpu", "options": {"profile": "ibm-heron"},
         "cost_prior": {"per_binding_s": 0.3}}]})
    m = CostModel()
    m.seed(cfg.devices)
    # ibm-heron: 2 s per job, 250 us per shot
    assert m.estimate("heron", "sample", 3) == pytest.approx(2.0 + 3 * 400 * 250e-6)
    assert m.estimate("own", "sample", 3) == pytest.approx(0.9)            # an explicit prior wins
