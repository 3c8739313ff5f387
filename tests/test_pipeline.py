"""`dvc repro` of the real pipeline in a temporary copy of the repository, with tiny params, and
a second clone that pulls its outputs from a DVC remote (a local directory)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from aitimestepper.reproduction import differences
from repository_copy import commit, pipeline_environment, run, tiny_pipeline_copy
from training_params import SMALL_EVALUATION


def strict_json(text: str):
    """json.loads refusing NaN and infinities (which Python's json writes and reads by default)."""

    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
def test_dvc_repro_runs_the_whole_pipeline_and_a_second_clone_pulls_it(tmp_path):
    env = pipeline_environment()
    copy, params = tiny_pipeline_copy(tmp_path / "repo", env)
    run(["dvc", "repro"], copy, env)

    for output in (
        "models/model.pt",
        "models/registered.json",
        "metrics/train.json",
        "metrics/simulate.json",
        "metrics/evaluate.json",
        "plots/simulate/orbits.png",
        "plots/simulate/movies/system0.gif",
        "plots/evaluate/cost_vs_accuracy.png",
        "plots/evaluate/dt_along_runs.png",
        "models/training_curves.png",
        "results/simulate/trajectory.npz",
        "dvc.lock",
        "mlflow.db",
    ):
        assert (copy / output).exists(), output
    written = sorted([*copy.glob("metrics/*.json"), *copy.glob("models/*.json")])
    assert len(written) >= 7  # train, simulate, evaluate, bench; train_run, registered, promotion
    for path in written:
        strict_json(path.read_text())  # no NaN or Infinity tokens
    registered = json.loads((copy / "models/registered.json").read_text())
    assert registered["version"] == 1 and registered["alias"] == "candidate"
    promotion = json.loads((copy / "models/promotion.json").read_text())
    assert promotion["promoted"] and promotion["reason"] == "no champion yet"
    again = run(["dvc", "repro"], copy, env)
    assert "Data and pipelines are up to date" in again.stdout

    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{copy / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)  # not a registry URI another test set in-process
    [experiment] = [e for e in client.search_experiments() if e.name == params["tracking"]["experiment_name"]]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's model-training view
    runs = client.search_runs([experiment.experiment_id])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=copy, capture_output=True, text=True).stdout
    name = f"threshold 0.0002 · seed {params['seed']} · {head[:7]}"
    assert sorted(r.info.run_name for r in runs) == [name, f"{name} · evaluate", f"{name} · train"]
    [pipeline] = [r for r in runs if r.info.run_name == name]
    assert all(r.data.tags["mlflow.parentRunId"] == pipeline.info.run_id for r in runs if r is not pipeline)
    [evaluated] = [r for r in runs if r.info.run_name.endswith("evaluate")]
    # one row of the runs table holds the params and the results
    assert pipeline.data.params["energy_threshold"] == "0.0002"
    charted = {
        f"results/{family}/{key}" for family in SMALL_EVALUATION["suite"] for key in ("cost_vs_oracle", "pass_rate")
    }
    assert charted <= set(pipeline.data.metrics)
    assert (
        pipeline.data.metrics["results/worst_family_pass_rate"]
        == evaluated.data.metrics["results/worst_family_pass_rate"]
    )
    logged_movies = sorted(Path(a.path).name for a in client.list_artifacts(evaluated.info.run_id, "movies"))
    assert logged_movies == sorted(f"{name}.gif" for name in SMALL_EVALUATION["suite"])
    non_finite = {"nan", "inf", "-inf", "infinity", "-infinity"}
    for logged in runs:
        for kind, values in (("param", logged.data.params), ("tag", logged.data.tags)):
            bad = {key: value for key, value in values.items() if value.strip().lower() in non_finite}
            assert not bad, f"{logged.info.run_name} {kind}s {bad}"
        assert all(math.isfinite(value) for value in logged.data.metrics.values()), logged.info.run_name
    name = params["tracking"]["registered_model_name"]
    assert client.get_model_version_by_alias(name, "champion").version == 1
    evaluation = json.loads((copy / "metrics/evaluate.json").read_text())
    tags = client.get_model_version(name, "1").tags
    assert tags["model_sha256"] == registered["model_sha256"] == evaluation["model_sha256"]
    assert {key: float(tags[f"evaluation.{key}"]) for key in evaluation["headline"]} == evaluation["headline"]

    # a second clone, without mlflow.db, pulls the outputs from a DVC remote: its pipeline is up to
    # date and its pulled checkpoint simulates as the first clone's did
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], copy, env)
    run(["dvc", "push"], copy, env)
    commit(copy, env, "pipeline outputs")
    run(["git", "clone", "-q", str(copy), str(tmp_path / "clone")], copy, env)
    clone = tmp_path / "clone"
    assert not (clone / "models/model.pt").exists() and not (clone / "mlflow.db").exists()
    run(["dvc", "pull"], clone, env)
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], clone, env).stdout
    assert not (clone / "mlflow.db").exists()  # nothing ran
    command = ["aits", "simulate", "--model", "models/model.pt", "--output", "again/simulate.json"]
    run([*command, "--trajectory", "again/trajectory.npz", "--plots-dir", "again/plots"], clone, env)
    again = json.loads((clone / "again/simulate.json").read_text())
    assert differences(json.loads((copy / "metrics/simulate.json").read_text()), again) == []
