"""`mlflow models serve` of a registered model: a real server on 127.0.0.1, stopped by its PID."""

from __future__ import annotations

import json

import mlflow
import pytest
import requests

from aitimestepper.pyfunc import log_simulation_model
from aitimestepper.serving import example_request
from invalid_systems import GOOD, KINDS
from servers import served_model, split

NAME = "aits-serve-test"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    tmp_path = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with mlflow.start_run():
        version = log_simulation_model(tiny_checkpoint, registered_model_name=NAME).registered_model_version
    with served_model(f"models:/{NAME}/{version}", uri, tmp_path / "server.log") as base:
        yield base


def post(base: str, payload: dict) -> requests.Response:
    return requests.post(f"{base}/invocations", json=payload, timeout=120)


def strict(response: requests.Response):
    """The body parsed as strict JSON: NaN and infinities refused."""

    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant} in {response.text[:200]}")

    return json.loads(response.text, parse_constant=refuse)


def request_of(system: dict, duration: float = 0.5) -> dict:
    """A dataframe_split request for one system of the invalid-systems catalog's format."""
    columns = ["masses", "positions", "velocities", "duration", "softening"]
    row = [system["masses"], system["positions"], system["velocities"], duration, system.get("softening", 0.0)]
    return {"dataframe_split": {"columns": columns, "data": [row]}}


def test_served_model_answers_and_refuses_malformed_requests(server):
    answer = post(server, split(example_request(2e-4)))
    assert answer.status_code == 200, answer.text
    [row] = strict(answer)["predictions"]
    assert row["non_finite"] == [] and row["hit_step_cap"] is False
    assert row["reached_end"] and row["steps"] > 10 and row["gate_pass_rate"] > 0.5
    assert abs(row["time"] - 2 * 3.141592653589793) < 1e-9

    bad_mass = example_request(2e-4)
    bad_mass.at[0, "masses"] = [1.0, -1.0]
    refused = post(server, split(bad_mass))
    assert refused.status_code == 400 and "the mass of body 1 must be finite and > 0" in refused.text
    strict(refused)

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


def test_the_served_model_integrates_systems_in_a_tidal_field(server):
    """The host columns put a row's system in a host's tidal field (the example's second row: a
    circular orbit about a host whose Jacobi radius is 4 binary separations); rows without them
    beside it feel none; bad host columns get HTTP 400 naming the column."""
    frame = example_request(2e-4, field=True)
    answer = post(server, split(frame))
    assert answer.status_code == 200, answer.text
    bare, in_field = strict(answer)["predictions"]
    assert bare["reached_end"] and in_field["reached_end"] and in_field["gate_pass_rate"] == 1.0
    alone = strict(post(server, split(example_request(2e-4))))["predictions"][0]
    assert bare["final_positions"] == alone["final_positions"]  # its neighbour's field does not reach it
    assert in_field["final_positions"] != bare["final_positions"]

    wrong_dimension = example_request(2e-4, field=True)
    wrong_dimension.at[1, "host_position"] = [10.0, 0.0, 0.0]
    refused = post(server, split(wrong_dimension))
    assert refused.status_code == 400 and "host_position must be 2 finite numbers" in refused.text
    without_position = example_request(2e-4, field=True)
    without_position.at[1, "host_position"] = None
    refused = post(server, split(without_position))
    assert refused.status_code == 400 and "host_mass and host_position go together" in refused.text
    strict(refused)


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_every_kind_of_invalid_system_gets_http_400_naming_it(server, kind):
    # the request carries NaN and infinities as JSON's NaN/Infinity tokens (what a Python client sends)
    payload = json.dumps(request_of(kind.system), allow_nan=True)
    refused = requests.post(
        f"{server}/invocations", data=payload, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert refused.status_code == 400, refused.text
    assert kind.served in refused.text, refused.text
    assert "row 0" in refused.text or "rows [0]" in refused.text, refused.text  # the row, and in it the body
    strict(refused)


def test_a_capped_run_says_so(server):
    capped = example_request(2e-4)
    capped.at[0, "max_steps"] = 5
    [row] = strict(post(server, split(capped)))["predictions"]
    assert row["steps"] == 5 and row["hit_step_cap"] is True and row["reached_end"] is False


@pytest.mark.slow
def test_the_server_stays_up_through_1000_mixed_requests_with_the_same_answers(server):
    valid = request_of(GOOD, duration=0.3)
    reference = strict(post(server, valid))["predictions"]
    for k in range(1000):
        kind = KINDS[k % len(KINDS)]
        if k % 3 == 0:
            answer = post(server, valid)
            assert answer.status_code == 200 and strict(answer)["predictions"] == reference, (k, answer.text)
        else:
            payload = json.dumps(request_of(kind.system), allow_nan=True)
            answer = requests.post(
                f"{server}/invocations", data=payload, headers={"Content-Type": "application/json"}, timeout=60
            )
            assert answer.status_code == 400, (k, kind.name, answer.text)
    assert requests.get(f"{server}/ping", timeout=5).status_code == 200
