"""Screenshots of the MLflow UI in headless Chromium: the check that the runs table and a run
comparison read well (``make ui-check``).

Takes the tracking store of ``MLFLOW_TRACKING_URI`` (a shared server, used as is) or the local
SQLite store ``mlflow.db`` (served for the shots by a throw-away ``mlflow server`` on a free
loopback port, stopped by PID), and writes to ``--out`` (default ``results/ui``):

- ``runs_table.png``: the experiment's runs table (pipeline runs with their train and evaluate
  children) in the shared view the evaluate stage stores, with threshold, seed and ``results/*``
  columns;
- ``charts.png``: the runs table's chart view (one panel per ``results/*`` metric);
- ``compare.png``: MLflow's comparison of the newest pipeline runs (up to ``--runs``).

Needs Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from aitimestepper.config import load_params
from aitimestepper.server import free_port
from aitimestepper.tracking import RESULTS_VIEW, SHARED_VIEW_TAG

WINDOW = "2400,1300"  # wide: MLflow's assistant panel opens on the right on a first visit
MODEL_TRAINING = "workflowType=machine_learning"  # the side bar's "Model training" (not GenAI) view


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("ui_screenshots: no Chromium on PATH: `apt-get install chromium`")


def _wait_healthy(base: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"ui_screenshots: mlflow server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    sys.exit(f"ui_screenshots: mlflow server did not answer within {timeout:.0f} s")


def screenshot(browser: str, url: str, path: Path) -> None:
    """Render ``url`` in a :data:`WINDOW` window after up to 20 s of virtual time; write a PNG to ``path``."""
    subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={WINDOW}"]
        + ["--virtual-time-budget=20000", f"--screenshot={path}", url],
        check=True,
        capture_output=True,
        timeout=180,
    )
    print(f"{path}  <- {url}")


def take(base: str, store: str, experiment_name: str, out: Path, runs: int, browser: str) -> None:
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        sys.exit(f"ui_screenshots: no experiment {experiment_name!r} in {store}: run the pipeline first")
    ident = experiment.experiment_id
    pipelines = client.search_runs([ident], "tags.stage = 'pipeline'", order_by=["start_time DESC"], max_results=runs)
    out.mkdir(parents=True, exist_ok=True)
    runs_page = f"{base}/#/experiments/{ident}/runs?{MODEL_TRAINING}"
    view = f"&viewStateShareKey={RESULTS_VIEW}" if SHARED_VIEW_TAG + RESULTS_VIEW in experiment.tags else ""
    screenshot(browser, runs_page + view, out / "runs_table.png")
    screenshot(browser, f"{runs_page}&compareRunsMode=CHART", out / "charts.png")
    if len(pipelines) >= 2:
        query = urllib.parse.urlencode(
            {"runs": json.dumps([r.info.run_id for r in pipelines]), "experiments": json.dumps([ident])}
        )
        query += f"&{MODEL_TRAINING}"
        screenshot(browser, f"{base}/#/compare-runs?{query}", out / "compare.png")
    else:
        print("one pipeline run only: no comparison (run a sweep first, see the README)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("results/ui"))
    parser.add_argument("--runs", type=int, default=4, help="pipeline runs compared (the newest)")
    arguments = parser.parse_args()
    experiment_name = load_params(arguments.params).tracking.experiment_name
    browser = _browser()
    store = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
    if store.startswith("http"):
        take(store.rstrip("/"), store, experiment_name, arguments.out, arguments.runs, browser)
        return
    port = free_port()
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store]
    process = subprocess.Popen(
        [*command, "--workers", "1", "--host", "127.0.0.1", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(base, process)
        take(base, store, experiment_name, arguments.out, arguments.runs, browser)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
