"""`mlflow models serve` of a registered model: a real server on 127.0.0.1, stopped by its PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import requests

from aitimestepper.pyfunc import log_simulation_model
from aitimestepper.serving import example_request

NAME = "aits-serve-test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tmp_path, tiny_checkpoint):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with mlflow.start_run():
        version = log_simulation_model(tiny_checkpoint, registered_model_name=NAME).registered_model_version
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [
            str(bin_dir / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{NAME}/{version}",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if requests.get(f"{base}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        else:
            pytest.fail("server did not answer /ping within 120 s")
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the mlflow PID and its uvicorn child
        process.wait(timeout=30)
        log.close()


def post(base: str, payload: dict) -> requests.Response:
    return requests.post(f"{base}/invocations", json=payload, timeout=120)


def split(frame) -> dict:
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


def test_served_model_answers_and_refuses_malformed_requests(server):
    answer = post(server, split(example_request(2e-4)))
    assert answer.status_code == 200, answer.text
    [row] = answer.json()["predictions"]
    assert row["reached_end"] and row["steps"] > 10 and row["gate_pass_rate"] > 0.5
    assert abs(row["time"] - 2 * 3.141592653589793) < 1e-9

    bad_mass = example_request(2e-4)
    bad_mass.at[0, "masses"] = [1.0, -1.0]
    refused = post(server, split(bad_mass))
    assert refused.status_code == 400 and "every mass must be finite and > 0" in refused.text

    ragged = example_request(2e-4)
    ragged.at[0, "positions"] = [[0.0, 0.0], [1.0]]
    assert post(server, split(ragged)).status_code == 400

    missing = example_request(2e-4).drop(columns=["duration"])
    assert post(server, split(missing)).status_code == 400

    too_long = example_request(2e-4)
    too_long.at[0, "max_steps"] = 10**9
    assert post(server, split(too_long)).status_code == 400

    wrong_threshold = example_request(2e-4)
    wrong_threshold.at[0, "energy_threshold"] = 2.0
    refused = post(server, split(wrong_threshold))
    assert refused.status_code == 400 and "energy_threshold" in refused.text

    coincident = example_request(2e-4)
    coincident.at[0, "positions"] = [[0.5, 0.0], [0.5, 0.0]]
    refused = post(server, split(coincident))
    assert refused.status_code == 400 and "bodies 0 and 1 are at the same position" in refused.text

    softened = example_request(2e-4)
    softened.at[0, "positions"] = [[0.5, 0.0], [0.5, 0.0]]
    softened.at[0, "softening"] = 0.1
    assert post(server, split(softened)).status_code == 200

    without_threshold = post(server, split(example_request(2e-4).drop(columns=["energy_threshold"])))
    assert without_threshold.status_code == 200, without_threshold.text
    assert without_threshold.json()["predictions"][0]["energy_threshold"] > 0  # the model's own

    assert requests.get(f"{server}/ping", timeout=5).status_code == 200  # still serving
    assert post(server, split(example_request(2e-4))).status_code == 200
