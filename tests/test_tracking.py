"""MLflow tracking against a real SQLite store in a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from aitimestepper.pyfunc import pip_requirements
from aitimestepper.training.run import run_training
from training_params import tiny_params

EPOCH_KEYS = [
    "part1/acceptance_rate",
    "part1/retrain_iterations_mean",
    "part1/retrain_iterations_max",
    "part1/error_over_threshold_mean",
    "part1/error_over_threshold_max",
    "part1/dt_over_energy_free_fall_mean",
    "part1/dt_over_energy_free_fall_min",
    "part1/dt_over_energy_free_fall_max",
    "part1/warmup_discarded",
    "part1/stuck_redrawn",
    "part2/converged",
    "part2/iterations",
    "part2/pass_rate",
    "part2/error_over_threshold_mean",
    "part2/error_over_threshold_max",
    "validation/pass_rate",
    "validation/worst_family_pass_rate",
    "validation/steps_per_time_scale",
    "validation/plummer/worst_pass_rate",
    "loss",
    "epoch_time_s",
    "buffer_size",
]


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-test")
    monkeypatch.chdir(tmp_path)
    return uri


def test_training_run_lands_in_the_store_with_per_epoch_metrics(tmp_path, store):
    params = tiny_params(epochs=3)
    summary = run_training(params, tmp_path / "models")
    record = json.loads((tmp_path / "models" / "train_run.json").read_text())
    assert record["tracking_uri"] == store and record["summary"] == summary
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["energy_threshold"] == "0.0002"
    assert run.data.params["training.steps_per_epoch"] == "4"
    assert run.data.tags["dvc_exp_name"] == "exp-test"
    # one pipeline run per execution, named by the DVC experiment, with training as its child
    pipeline = client.get_run(record["pipeline_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
    assert (pipeline.info.run_name, run.info.run_name) == ("exp-test", "exp-test · train")
    assert pipeline.info.status == "FINISHED" and pipeline.data.params == run.data.params
    assert pipeline.data.metrics["summary/kept_epoch"] == summary["kept_epoch"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for key in EPOCH_KEYS:
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2, 3], key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"contract.json", "checkpoint", "plots"} <= artifacts
    logged = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [m.source_run_id for m in logged] == [run.info.run_id]
    requirements = Path(client.download_artifacts(run.info.run_id, "model/requirements.txt", str(tmp_path)))
    stated = requirements.read_text().split()
    assert stated == pip_requirements() and {"torch==2.13.0", "numba==0.68.1"} <= set(stated)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/model.pt"]
    assert (tmp_path / "models" / "training_curves.png").stat().st_size > 10_000


def test_an_evaluation_joins_only_the_pipeline_run_that_trained_its_checkpoint_in_this_store(tmp_path, store):
    from aitimestepper.tracking import joined_pipeline_run

    record = tmp_path / "train_run.json"
    assert joined_pipeline_run(record, "abc") is None  # no training record
    record.write_text(json.dumps({"pipeline_run_id": "p1", "model_sha256": "abc", "tracking_uri": store}))
    assert joined_pipeline_run(record, "abc") == "p1"
    assert joined_pipeline_run(record, "another checkpoint") is None
    record.write_text(json.dumps({"pipeline_run_id": "p1", "model_sha256": "abc", "tracking_uri": "sqlite:///x.db"}))
    assert joined_pipeline_run(record, "abc") is None  # trained in another store
