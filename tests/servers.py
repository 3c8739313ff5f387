"""`mlflow models serve` started for real on 127.0.0.1 and stopped by its PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from aitimestepper.server import free_port


@contextmanager
def served_model(model_uri: str, tracking_uri: str, log_path: Path) -> Iterator[str]:
    """Serve ``model_uri`` from the store at ``tracking_uri``; yield the base URL once ``/ping``
    answers; stop the server (its process group) by PID on exit."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # e.g. a registry URI set in-process
    env.update(MLFLOW_TRACKING_URI=tracking_uri, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            try:
                if requests.get(f"{base}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        else:
            pytest.fail(f"the model server did not answer /ping within 120 s:\n{log_path.read_text()}")
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the mlflow PID and its uvicorn child
        process.wait(timeout=30)


def split(frame) -> dict:
    """A request frame as the ``dataframe_split`` JSON body of ``/invocations``."""
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
