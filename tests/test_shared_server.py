"""The shared tracking server for real: PostgreSQL and `mlflow server` on 127.0.0.1, a queued sweep
of the tiny pipeline run two at a time against it, a model served from its registry, and every
process stopped by PID with nothing left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from aitimestepper.server import SharedServer, free_port
from aitimestepper.serving import example_request
from repository_copy import pipeline_environment, run, tiny_pipeline_copy
from servers import served_model, split
from training_params import SMALL_EVALUATION

SWEEP = {f"threshold{threshold}-seed{seed}": (threshold, seed) for threshold in ("2e-4", "1e-4") for seed in (0, 1)}
QUEUE_TIMEOUT_S = 1500


@pytest.fixture(scope="module")
def shared_server():
    directory = Path(tempfile.mkdtemp(prefix="aits-server-"))
    directory.chmod(0o755)  # PostgreSQL runs as user postgres when the tests run as root: it must reach the dir
    server = SharedServer(directory, free_port(), free_port()).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def sweep(shared_server, tmp_path_factory):
    """Four experiments (two thresholds x two seeds) queued with `dvc exp run --queue` and run by
    `dvc queue start -j 2`, tracked on the shared server. Returns the repository copy, its params
    and environment, and the final `dvc queue status` text."""
    env = pipeline_environment(MLFLOW_TRACKING_URI=shared_server.uri)
    repo, params = tiny_pipeline_copy(tmp_path_factory.mktemp("sweep") / "repo", env)
    for name, (threshold, seed) in SWEEP.items():
        run(
            [
                "dvc",
                "exp",
                "run",
                "--queue",
                "--name",
                name,
                "-S",
                f"energy_threshold={threshold}",
                "-S",
                f"seed={seed}",
            ],
            repo,
            env,
        )
    run(["dvc", "queue", "start", "-j", "2"], repo, env)
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while True:
        status = run(["dvc", "queue", "status"], repo, env).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, f"the queue did not finish in {QUEUE_TIMEOUT_S} s:\n{status}"
        time.sleep(5)
    return repo, params, env, status


@pytest.mark.slow
def test_every_queued_experiment_succeeds_and_dvc_lists_it(sweep):
    repo, _, env, status = sweep
    failed = [line for line in status.splitlines() if "Failed" in line]
    logs = "".join(run(["dvc", "queue", "logs", line.split()[1]], repo, env).stdout for line in failed[:1])
    assert status.count("Success") == len(SWEEP) and not failed, f"{status}\n{logs}"
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    experiments = {
        experiment["name"]: experiment["revs"][0]["data"]
        for baseline in shown
        for experiment in baseline.get("experiments") or []
    }
    assert set(experiments) == set(SWEEP)
    for name, (threshold, seed) in SWEEP.items():
        data = experiments[name]
        assert data["params"]["params.yaml"]["data"]["seed"] == seed
        assert float(data["params"]["params.yaml"]["data"]["energy_threshold"]) == float(threshold)
        assert "headline" in data["metrics"]["metrics/evaluate.json"]["data"]


@pytest.mark.slow
def test_every_run_lands_on_the_server_as_one_row_per_experiment(sweep, shared_server):
    _, params, _, _ = sweep
    client = MlflowClient(tracking_uri=shared_server.uri, registry_uri=shared_server.uri)
    experiment = client.get_experiment_by_name(params["tracking"]["experiment_name"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert len(runs) == 3 * len(SWEEP), sorted(r.info.run_name for r in runs)  # none lost, none extra
    assert all(r.info.status == "FINISHED" for r in runs)
    pipelines = {r.info.run_name: r for r in runs if r.data.tags["stage"] == "pipeline"}
    assert set(pipelines) == set(SWEEP)  # named by the DVC experiment
    # the shared view that shows threshold, seed and the results as columns of the runs table
    view = json.loads(experiment.tags["mlflow.sharedViewState.results"])
    columns = view["selectedColumns"]
    assert view["chartsSearchFilter"] == "results/"  # the chart mode shows the results only
    assert columns[:2] == ["params.`energy_threshold`", "params.`seed`"]
    shown = [column.removeprefix("metrics.`").removesuffix("`") for column in columns[2:]]
    assert "results/cost_ratio_to_oracle" in shown and len(shown) == 3 + len(SMALL_EVALUATION["suite"])
    assert all(set(shown) <= set(pipeline.data.metrics) for pipeline in pipelines.values())
    for name, pipeline in pipelines.items():
        threshold, seed = SWEEP[name]
        assert float(pipeline.data.params["energy_threshold"]) == float(threshold)
        assert pipeline.data.params["seed"] == str(seed)
        children = {
            r.data.tags["stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == pipeline.info.run_id
        }
        assert {stage: child.info.run_name for stage, child in children.items()} == {
            "train": f"{name} · train",
            "evaluate": f"{name} · evaluate",
        }
        for family in SMALL_EVALUATION["suite"]:
            for key in ("cost_vs_oracle", "cost_vs_best_classical", "pass_rate"):
                assert (
                    pipeline.data.metrics[f"results/{family}/{key}"]
                    == children["evaluate"].data.metrics[f"results/{family}/{key}"]
                )
        assert "summary/kept_epoch" in pipeline.data.metrics
        # artifacts through the server's proxy
        logged = {a.path for a in client.list_artifacts(children["evaluate"].info.run_id)}
        assert {"evaluate.json", "plots", "movies"} <= logged
        checkpoint = [a.path for a in client.list_artifacts(children["train"].info.run_id, "checkpoint")]
        assert checkpoint == ["checkpoint/model.pt"]
        report = json.loads(
            Path(client.download_artifacts(children["evaluate"].info.run_id, "evaluate.json")).read_text()
        )
        assert pipeline.data.metrics["results/cost_ratio_to_oracle"] == report["headline"]["cost_ratio_to_oracle"]
        assert float(report["trained_threshold"]) == float(threshold)


@pytest.mark.slow
def test_the_registry_holds_one_distinct_version_per_experiment_and_a_champion(sweep, shared_server):
    _, params, _, _ = sweep
    client = MlflowClient(tracking_uri=shared_server.uri, registry_uri=shared_server.uri)
    name = params["tracking"]["registered_model_name"]
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(int(v.version) for v in versions) == list(range(1, len(SWEEP) + 1))
    train_runs = {
        r.info.run_id
        for r in client.search_runs(
            [client.get_experiment_by_name(params["tracking"]["experiment_name"]).experiment_id], "tags.stage = 'train'"
        )
    }
    assert {v.run_id for v in versions} == train_runs  # each experiment's own model
    assert len({v.tags["model_sha256"] for v in versions}) == len(SWEEP)
    assert all("evaluation.worst_family_pass_rate" in v.tags for v in versions)  # every one judged
    champion = client.get_model_version_by_alias(name, "champion")
    judged = {v.version: float(v.tags["evaluation.cost_ratio_to_oracle"]) for v in versions}
    assert champion.version in judged


@pytest.mark.slow
def test_the_champion_simulates_and_serves_from_the_server_alone(sweep, shared_server, tmp_path):
    repo, params, env, _ = sweep
    model = f"models:/{params['tracking']['registered_model_name']}@champion"
    command = ["aits", "simulate", "--model", model, "--output", str(tmp_path / "simulate.json")]
    run([*command, "--trajectory", str(tmp_path / "trajectory.npz"), "--plots-dir", str(tmp_path / "plots")], repo, env)
    simulated = json.loads((tmp_path / "simulate.json").read_text())
    assert simulated["source"] == model and simulated["summary"]["systems"] == 2
    assert simulated["summary"]["all_reached_end"]
    with served_model(model, shared_server.uri, tmp_path / "serve.log") as base:
        answer = requests.post(f"{base}/invocations", json=split(example_request(2e-4)), timeout=120)
    assert answer.status_code == 200, answer.text
    [row] = answer.json()["predictions"]
    assert row["reached_end"] and row["steps"] > 10


@pytest.mark.slow
def test_concurrent_promotions_on_postgresql_all_land(shared_server, monkeypatch):
    """Register and promote stages of a sweep run at once: on PostgreSQL, two first writes of an
    alias collide (a unique-key violation); each write must retry (a promotion deciding again),
    none fail."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from aitimestepper.registry import promote, set_alias

    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_server.uri)
    client = MlflowClient(tracking_uri=shared_server.uri, registry_uri=shared_server.uri)
    run_id = client.create_run("0").info.run_id
    for trial in range(5):
        name = f"race-{trial}"
        client.create_registered_model(name)
        for cost in (1.3, 1.2, 1.1, 1.0):
            version = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id).version
            client.set_model_version_tag(name, version, "evaluation.worst_family_pass_rate", "1.0")
            client.set_model_version_tag(name, version, "evaluation.cost_ratio_to_oracle", str(cost))
        barrier = Barrier(4)

        def promote_at_once(version: int, name=name, barrier=barrier):
            barrier.wait()
            return promote(name, version)

        def register_at_once(version: int, name=name, barrier=barrier):
            barrier.wait()
            set_alias(client, name, "candidate", version)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(register_at_once, (1, 2, 3, 4)))  # the register stages' first writes of `candidate`
            decisions = list(pool.map(promote_at_once, (1, 2, 3, 4)))
        assert int(client.get_model_version_by_alias(name, "candidate").version) in {1, 2, 3, 4}
        assert all(d["promoted"] or d["reason"] == "worse than the champion" for d in decisions), decisions
        assert int(client.get_model_version_by_alias(name, "champion").version) in {1, 2, 3, 4}


@pytest.mark.slow
def test_the_server_stops_by_pid_and_leaves_no_process(shared_server):
    """Runs after every test that uses the server (pytest keeps the file's order)."""
    pids = shared_server.pids
    assert set(pids) == {"postgres", "mlflow"}
    shared_server.stop()
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # neither the process nor anything in its group (uvicorn, PostgreSQL backends)
    leftovers = subprocess.run(["pgrep", "-f", str(shared_server.directory)], capture_output=True, text=True).stdout
    assert leftovers == ""


@pytest.mark.slow
def test_the_server_command_serves_until_interrupted_and_stops_both(tmp_path):
    """`aits server` (what `make server` runs): up, healthy, and on SIGINT both processes gone."""
    directory = Path(tempfile.mkdtemp(prefix="aits-server-"))
    directory.chmod(0o755)
    port = free_port()
    command = ["aits", "server", "--dir", str(directory), "--port", str(port), "--postgres-port", str(free_port())]
    process = subprocess.Popen(
        command,
        env=pipeline_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        banner = process.stdout.readline()  # printed once both are up
        assert f"http://127.0.0.1:{port}" in banner, banner + process.stderr.read()
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        pids = [int(pid) for pid in re.findall(r"'(?:postgres|mlflow)': (\d+)", banner)]
        assert len(pids) == 2
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)
    finally:
        if process.poll() is None:
            process.kill()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_busy_port_is_refused_by_name_and_nothing_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            ["aits", "server", "--dir", str(tmp_path / "server"), "--port", str(port)],
            env=pipeline_environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1 and f"port {port} on 127.0.0.1 is in use" in done.stderr
    assert not (tmp_path / "server").exists()
