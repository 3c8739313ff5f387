"""Registry round trips and promotion against a real SQLite MLflow store in a temp dir."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from aitimestepper.checkpoint import load_policy
from aitimestepper.pyfunc import log_simulation_model
from aitimestepper.registry import RegistryError, promote, record_evaluation
from aitimestepper.serving import example_request, parse_requests, simulate_requests
from aitimestepper.simulate import load_any_policy, simulate_from_params
from training_params import tiny_params

NAME = "aits-test"


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def register(checkpoint) -> str:
    with mlflow.start_run():
        info = log_simulation_model(checkpoint, registered_model_name=NAME)
    return str(info.registered_model_version)


def requests_frame() -> pd.DataFrame:
    """The example binary at 2e-4, a three-body system, the binary at the model's default
    threshold (no value given) and at an eighth of 2e-4."""
    example = example_request(2e-4)
    second = example.iloc[0].to_dict()
    second.update(
        masses=[1.0, 0.2, 0.3],
        positions=[[0.0, 0.0], [1.0, 0.0], [-1.5, 0.2]],
        velocities=[[0.0, 0.0], [0.0, 1.0], [0.1, -0.7]],
        duration=1.0,
    )
    default = {**example.iloc[0].to_dict(), "energy_threshold": float("nan")}
    strict = {**example.iloc[0].to_dict(), "energy_threshold": 2.5e-5}
    return pd.concat([example, pd.DataFrame([second, default, strict])], ignore_index=True)


def test_pyfunc_round_trip_through_the_registry_by_alias(store, tiny_checkpoint):
    version = register(tiny_checkpoint)
    MlflowClient().set_registered_model_alias(NAME, "candidate", version)
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@candidate")
    frame = requests_frame()
    answer = served.predict(frame)
    policy = load_policy(tiny_checkpoint)
    expected = simulate_requests(policy, parse_requests(frame), policy.params.energy_threshold)
    pd.testing.assert_frame_equal(answer, expected, check_exact=True)
    assert answer["reached_end"].all() and (answer["steps"] > 0).all()
    assert answer["energy_threshold"].tolist() == [2e-4, 2e-4, policy.params.energy_threshold, 2.5e-5]
    # the same binary at an eighth of the threshold: about twice the steps (dt ~ threshold^(1/3))
    assert 1.6 < answer["steps"][3] / answer["steps"][0] < 2.5


def test_a_model_trained_without_a_tidal_family_refuses_rows_in_a_field():
    """The request's host columns reach the policy: a network trained without the tidal family
    refuses them (a request error: HTTP 400 when served), and steps the rows without one."""
    from aitimestepper.model import LearnedPolicy, build_network
    from aitimestepper.serving import RequestError

    params = tiny_params(**{"systems.tidal.weight": 0.0})
    policy = LearnedPolicy(build_network(params), params)
    with pytest.raises(RequestError, match="trained without systems in a tidal field"):
        simulate_requests(policy, parse_requests(example_request(2e-4, field=True)), 2e-4)
    answer = simulate_requests(policy, parse_requests(example_request(2e-4)), 2e-4)
    assert bool(answer["reached_end"].all())


def test_pyfunc_refuses_malformed_requests(store, tiny_checkpoint):
    version = register(tiny_checkpoint)
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    bad = example_request(2e-4)
    bad.at[0, "masses"] = [1.0, -1.0]
    with pytest.raises(mlflow.exceptions.MlflowException, match="the mass of body 1 must be finite and > 0"):
        served.predict(bad)


def test_simulate_from_checkpoint_and_from_registry_uri_agree(store, tiny_checkpoint):
    version = register(tiny_checkpoint)
    params = tiny_params()
    ((by_path, path_run),) = simulate_from_params(params, tiny_checkpoint, time_scales=1.0)
    ((by_uri, uri_run),) = simulate_from_params(params, f"models:/{NAME}/{version}", time_scales=1.0)
    for mine, theirs in zip(by_path["systems"], by_uri["systems"], strict=True):
        assert mine == theirs
    assert (path_run.trajectory.positions == uri_run.trajectory.positions).all()
    assert isinstance(load_any_policy(f"models:/{NAME}/{version}", params), type(load_policy(tiny_checkpoint)))


def test_promotion_is_gated_on_evaluation(store, tiny_checkpoint):
    first, second, third = (register(tiny_checkpoint) for _ in range(3))
    client = MlflowClient()
    with pytest.raises(RegistryError, match="run evaluate first"):
        promote(NAME, int(first))
    record_evaluation(NAME, int(first), {"worst_family_pass_rate": 1.0, "cost_ratio_to_oracle": 1.3})
    assert promote(NAME, int(first))["reason"] == "no champion yet"
    # worse: its worst family passes fewer steps
    record_evaluation(NAME, int(second), {"worst_family_pass_rate": 0.98, "cost_ratio_to_oracle": 1.1})
    decision = promote(NAME, int(second))
    assert not decision["promoted"] and decision["reason"] == "worse than the champion"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == first
    # not worse: passes as well (both above the target) and is cheaper
    record_evaluation(NAME, int(third), {"worst_family_pass_rate": 0.9995, "cost_ratio_to_oracle": 1.2})
    client.set_registered_model_alias(NAME, "candidate", third)
    assert promote(NAME)["promoted"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == third
    assert promote(NAME, int(second), force=True)["reason"] == "forced"


def test_promote_records_an_evaluation_only_of_the_registered_checkpoint(store, tiny_checkpoint, tmp_path):
    """`aits promote --evaluation`: a report of another checkpoint (by SHA-256) is refused with
    exit 2, nothing tagged and nothing written; the report of the registered one is recorded on
    its version and decides the promotion."""
    version = register(tiny_checkpoint)
    digest = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    (tmp_path / "registered.json").write_text(
        json.dumps({"name": NAME, "version": int(version), "model_sha256": digest})
    )
    headline = {"worst_family_pass_rate": 0.9995, "cost_ratio_to_oracle": 1.07}
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump({**tiny_params().model_dump(mode="json"), "tracking": {"registered_model_name": NAME}})
    )
    command = [sys.executable, "-m", "aitimestepper", "promote", "--params", str(params)]
    command += ["--evaluation", "evaluate.json", "--registered", "registered.json", "--output", "promotion.json"]

    (tmp_path / "evaluate.json").write_text(json.dumps({"model_sha256": "0" * 64, "headline": headline}))
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "evaluate the registered model" in done.stderr, done.stderr
    assert not (tmp_path / "promotion.json").exists()
    assert not any(key.startswith("evaluation.") for key in MlflowClient().get_model_version(NAME, version).tags)

    (tmp_path / "evaluate.json").write_text(json.dumps({"model_sha256": digest, "headline": headline}))
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "promotion.json").read_text())["promoted"]
    tags = MlflowClient().get_model_version(NAME, version).tags
    assert {key: float(tags[f"evaluation.{key}"]) for key in headline} == headline
    with pytest.raises(RegistryError, match="no version 99"):
        record_evaluation(NAME, 99, headline)
