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
    families = {component.family for component in params.systems.values()}
    assert families == {"binary", "hierarchical_triple", "democratic_triple", "planetary", "plummer", "tidal"}
    assert params.systems["democratic_triple_unsoftened"].softening == (0.0, 0.0)
    assert all(component.dims == (2, 3) and component.weight > 0 for component in params.systems.values())
    assert params.systems["binary"].eccentricity == (0.0, 0.995)
    assert params.systems["plummer"].bodies == (4, 8, 16, 32)
    assert set(params.evaluation.suite) >= {"binaries", "hierarchical_triples", "planetary", "plummer"}
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
    ("features.candidate_pairs", 0, "greater than or equal to 1"),
    ("systems.binary.eccentricity", [0.5, 1.0], "less than 1"),
    ("systems.binary.weight", -1.0, "greater than or equal to 0"),
    ("systems.binary.family", "quadruple", "does not match any of the expected tags"),
    ("systems.plummer.bodies", [2], "greater than or equal to 3"),
    ("systems.planetary.planets", [1, 9], "less than or equal to 8"),
    ("systems.democratic_triple.softening", [-0.1, 0.0], "greater than or equal to 0"),
    ("systems.binary.dims", [4], "2 or 3"),
    ("model.hidden_sizes", [], "at least 1 item"),
    ("simulation.policy", "rk4", "'fixed', 'free_fall', 'energy_free_fall', 'prs23', 'energy_feedback' or 'oracle'"),
    ("evaluation.suite.plummer.systems", 0, "greater than or equal to 1"),
    ("training", "none", "valid dictionary"),
    ("physics.external", {"host_mass": -1.0, "host_position": [50.0, 0.0, 0.0]}, "greater than 0"),
    ("physics.external", {"host_mass": 1.0, "host_position": [50.0, 0.0], "orbit": "elliptic"}, "'static' or"),
    ("physics.external", {"host_mass": 1.0, "host_position": [0.0, 0.0, 0.0]}, "must not be the origin"),
    ("physics.external", {"host_mass": 1.0, "host_position": [1.0, 2.0, 3.0, 4.0]}, "at most 3 items"),
    ("physics.external", {"host_mass": 1.0}, "Field required"),
    ("systems.tidal.jacobi_fraction", [0.0, 0.5], "greater than 0"),
    ("systems.tidal.orbits", ["parabolic"], "'static' or 'circular'"),
]


@pytest.mark.parametrize(("key", "value", "rule"), BAD_EDITS, ids=[f"{k}={v!r}" for k, v, _ in BAD_EDITS])
def test_bad_edit_is_refused_naming_key_value_and_rule(tmp_path, key, value, rule):
    with pytest.raises(ParamsError) as refused:
        load_params(write_edit(tmp_path, key, value))
    message = str(refused.value)
    assert f"{key} = " in message or f"{key}." in message  # a range names its end: key.0 or key.1
    assert rule in message
    if not isinstance(value, list | dict):
        assert repr(value) in message


IMPOSSIBLE = [
    ("systems", {"binary": {"family": "binary", "eccentricity": [0.9, 0.5]}}, "eccentricity = [0.9, 0.5]: the low end"),
    ("systems", {"p": {"family": "planetary", "planets": [4, 2]}}, "planets = [4, 2]: the low end must be <="),
    ("systems", {"b": {"family": "binary", "weight": 0.0}}, "at least one family needs a weight > 0"),
    ("model", {"min_correction": 0.5, "initial_correction": 0.1}, "need min_correction (0.5) <= initial_correction"),
    ("physics", {"external": {"host_mass": 1.0, "host_position": [50.0, 0.0]}}, "simulation.systems.dims must be [2]"),
    (
        "simulation",
        {"systems": {"family": "tidal", "dims": [3]}, "_physics": {"host_mass": 1.0, "host_position": [50.0, 0, 0]}},
        "the tidal family's systems bring their own hosts",
    ),
]


@pytest.mark.parametrize(("section", "value", "rule"), IMPOSSIBLE)
def test_impossible_combinations_are_refused(tmp_path, section, value, rule):
    data = shipped()
    value = dict(value)
    if "_physics" in value:  # a second section edited with the first
        data["physics"] = {"external": value.pop("_physics")}
    data[section] = value if section == "systems" else {**data[section], **value}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError) as refused:
        load_params(path)
    assert rule in str(refused.value)


def test_final_learning_rate_must_not_exceed_the_first(tmp_path):
    path = write_edit(tmp_path, "training.learning_rate_final", 0.01)
    with pytest.raises(ParamsError, match=r"learning_rate_final \(0.01\) must be <= learning_rate"):
        load_params(path)


def test_loss_band_must_be_ordered(tmp_path):
    path = write_edit(tmp_path, "training.band_lower", 0.99)
    with pytest.raises(ParamsError, match=r"band_lower \(0.99\) must be < band_upper \("):
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
    through_json = json.loads(json.dumps(contract))
    rebuilt = Params.from_contract(through_json)
    assert rebuilt == params
    assert rebuilt.to_contract() == contract


def test_contract_with_unknown_version_or_bad_settings_is_refused():
    contract = load_params(SHIPPED).to_contract()
    with pytest.raises(ParamsError, match="version 99 is not supported"):
        Params.from_contract({**contract, "contract_version": 99})
    with pytest.raises(ParamsError, match="epochs"):
        Params.from_contract({**contract, "epochs": 0})


def test_every_field_has_a_description():
    from aitimestepper.systems.specs import SPECS, FamilySpec

    def walk(model_class, prefix=""):
        for name, field in model_class.model_fields.items():
            if model_class is not FamilySpec and name == "family":
                continue  # the discriminator: its value names the family
            assert field.description, f"{prefix}{name} lacks a description"
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation, f"{prefix}{name}.")

    walk(Params)
    for spec in (FamilySpec, *SPECS):
        walk(spec, f"{spec.__name__}.")
