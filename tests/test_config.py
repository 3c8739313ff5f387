"""The params contract: the shipped file loads, bad edits are refused by key, round-trips are lossless."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aitimestepper.config import CONTRACT_VERSION, Params, ParamsError, load_params

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "params.yaml"


def shipped() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def write_edit(tmp_path: Path, dotted_key: str, value) -> Path:
    """params.yaml with one key set (``None`` value with a ``+`` prefix key adds an unknown key)."""
    data = shipped()
    *sections, leaf = dotted_key.split(".")
    target = data
    for section in sections:
        target = target[section]
    target[leaf] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_params_load_with_their_documented_defaults():
    params = load_params(SHIPPED)
    assert params.energy_threshold == 2e-4
    assert params.initial_conditions.eccentricity_sampling == "log_one_minus_e"
    assert (params.initial_conditions.eccentricity_min, params.initial_conditions.eccentricity_max) == (0.3, 0.995)
    assert params.features.history_len == 0
    assert params.training.failure_weight > 0 and params.training.learning_rate_final < params.training.learning_rate


def test_defaults_without_a_file_match_the_issue_contract(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: Params() falls back to field defaults
    params = Params()
    assert params.energy_threshold == 2e-4
    assert params.training.steps_per_epoch == 1


def test_params_yaml_in_the_working_directory_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_edit(tmp_path, "energy_threshold", 1e-4)
    assert Params().energy_threshold == 1e-4


def test_environment_cannot_override_science_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENERGY_THRESHOLD", "0.5")
    monkeypatch.setenv("EPOCHS", "7")
    assert Params().energy_threshold == 2e-4
    assert Params().epochs == 20


BAD_EDITS = [
    ("energy_threshold", -1e-4, "greater than 0"),
    ("energy_threshold", 1.0, "less than 1"),
    ("epochs", 0, "greater than or equal to 1"),
    ("epochs", "many", "valid integer"),
    ("epochs", 2.5, "fractional part"),
    ("typo_threshold", 1.0, "unknown key"),
    ("training.lr", 0.1, "unknown key"),
    ("training.steps_per_epoch", 0, "greater than or equal to 1"),
    ("features.history_len", -1, "greater than or equal to 0"),
    ("features.family", "fancy", "'basic', 'rich' or 'delta_mag'"),
    ("initial_conditions.eccentricity_max", 1.0, "less than 1"),
    ("initial_conditions.eccentricity_min", -0.1, "greater than or equal to 0"),
    ("physics.dim", 4, "2 or 3"),
    ("physics.softening", -0.01, "greater than or equal to 0"),
    ("model.hidden_sizes", [], "at least 1 item"),
    ("simulation.policy", "rk4", "'fixed', 'free_fall' or 'oracle'"),
    ("training", "none", "valid dictionary"),
]


@pytest.mark.parametrize(("key", "value", "rule"), BAD_EDITS, ids=[f"{k}={v!r}" for k, v, _ in BAD_EDITS])
def test_bad_edit_is_refused_naming_key_value_and_rule(tmp_path, key, value, rule):
    with pytest.raises(ParamsError) as refused:
        load_params(write_edit(tmp_path, key, value))
    message = str(refused.value)
    assert f"{key} = " in message
    assert rule in message
    if not isinstance(value, list | dict):
        assert repr(value) in message


IMPOSSIBLE = [
    ({"eccentricity_min": 0.9, "eccentricity_max": 0.5}, "eccentricity_min (0.9) must be <= eccentricity_max (0.5)"),
    ({"kind": "binary", "num_bodies": 3}, "num_bodies must be 2 when kind is 'binary'"),
    ({"kind": "cluster", "num_bodies": 2}, "num_bodies must be >= 3 when kind is 'cluster'"),
    ({"kind": "file", "file": None}, "file must name"),
    ({"semi_major_axis_min": 2.0, "semi_major_axis_max": 1.0}, "semi_major_axis_min (2.0) must be <="),
]


@pytest.mark.parametrize(("edits", "rule"), IMPOSSIBLE)
def test_impossible_combinations_are_refused(tmp_path, edits, rule):
    data = shipped()
    data["initial_conditions"].update(edits)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match="initial_conditions") as refused:
        load_params(path)
    assert rule in str(refused.value)


def test_final_learning_rate_must_not_exceed_the_first(tmp_path):
    path = write_edit(tmp_path, "training.learning_rate_final", 0.01)
    with pytest.raises(ParamsError, match=r"learning_rate_final \(0.01\) must be <= learning_rate"):
        load_params(path)


def test_loss_band_must_be_ordered(tmp_path):
    path = write_edit(tmp_path, "training.band_lower", 0.95)
    with pytest.raises(ParamsError, match=r"band_lower \(0.95\) must be < band_upper \(0.9\)"):
        load_params(path)


def test_missing_and_malformed_files_are_refused(tmp_path):
    with pytest.raises(ParamsError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("energy_threshold: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)


def test_contract_round_trip_is_lossless():
    params = load_params(SHIPPED)
    contract = params.to_contract()
    assert contract["contract_version"] == CONTRACT_VERSION
    assert contract["feature_dim"] == params.feature_dim
    through_json = json.loads(json.dumps(contract))
    rebuilt = Params.from_contract(through_json)
    assert rebuilt == params
    assert rebuilt.to_contract() == contract


def test_contract_with_unknown_version_or_wrong_feature_dim_is_refused():
    contract = load_params(SHIPPED).to_contract()
    with pytest.raises(ParamsError, match="version 99 is not supported"):
        Params.from_contract({**contract, "contract_version": 99})
    with pytest.raises(ParamsError, match="feature_dim"):
        Params.from_contract({**contract, "feature_dim": contract["feature_dim"] + 1})
    with pytest.raises(ParamsError, match="epochs"):
        Params.from_contract({**contract, "epochs": 0})


def test_every_field_has_a_description():
    def walk(model_class, prefix=""):
        for name, field in model_class.model_fields.items():
            assert field.description, f"{prefix}{name} lacks a description"
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation, f"{prefix}{name}.")

    walk(Params)
