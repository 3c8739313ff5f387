"""`dvc repro` of the real pipeline in a temporary copy of the repository, with tiny params, and
a second clone that pulls its outputs from a DVC remote (a local directory)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aitimestepper.reproduction import differences
from training_params import REPO, SMALL_EVALUATION, tiny_params


def strict_json(text: str):
    """json.loads refusing NaN and infinities (which Python's json writes and reads by default)."""

    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def run(command: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_dvc_repro_runs_the_whole_pipeline_and_a_second_clone_pulls_it(tmp_path):
    copy = tmp_path / "repo"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    params = tiny_params(epochs=2).model_dump(mode="json")
    params["simulation"]["systems"].update(systems=2, duration=0.5)
    params["evaluation"].update(SMALL_EVALUATION, extra_thresholds=[])
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        run(command, copy, env)
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

    client = MlflowClient(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name == params["tracking"]["experiment_name"]]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["evaluate", "train"]
    [evaluated] = [r for r in runs if r.info.run_name == "evaluate"]
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
    for command in (
        ["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")],
        ["dvc", "push"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline outputs"],
        ["git", "clone", "-q", str(copy), str(tmp_path / "clone")],
    ):
        run(command, copy, env)
    clone = tmp_path / "clone"
    assert not (clone / "models/model.pt").exists() and not (clone / "mlflow.db").exists()
    run(["dvc", "pull"], clone, env)
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], clone, env).stdout
    assert not (clone / "mlflow.db").exists()  # nothing ran
    command = ["aits", "simulate", "--model", "models/model.pt", "--output", "again/simulate.json"]
    run([*command, "--trajectory", "again/trajectory.npz", "--plots-dir", "again/plots"], clone, env)
    again = json.loads((clone / "again/simulate.json").read_text())
    assert differences(json.loads((copy / "metrics/simulate.json").read_text()), again) == []
