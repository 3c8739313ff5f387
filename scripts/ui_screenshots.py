"""Screenshots of the MLflow UI in headless Chromium: the check that the runs table and a run
comparison read well (``make ui-check``).

Takes the tracking store of ``MLFLOW_TRACKING_URI`` (a shared server, used as is) or the local
SQLite store ``mlflow.db`` (served for the shots by a throw-away ``mlflow server`` on a free
loopback port, stopped by PID), and writes to ``--out`` (default ``results/ui``):

- ``runs_table.png``: the experiment's runs table in the shared view the evaluate stage stores
  (threshold, seed and ``results/*`` columns), the newest pipeline run expanded to show its train
  and evaluate children;
- ``charts.png``: the runs table's chart view in the same view (one bar chart per ``results/*``
  metric, a bar per run);
- ``compare.png``: MLflow's comparison of the newest pipeline runs (up to ``--runs``).

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no port,
no extra package): each page is loaded until the newest pipeline run's name shows, MLflow's
assistant panel (which opens on a first visit) is closed, and the page is captured. Needs
Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import base64
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

WIDTH, HEIGHT = 1800, 1000
MODEL_TRAINING = "workflowType=machine_learning"  # the side bar's "Model training" (not GenAI) view
CLOSE_ASSISTANT = "document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')?.click()"
EXPAND_FIRST_RUN = "document.querySelector('button[data-component-id$=\"runnamecellrenderer.tsx_46\"]')?.click()"
PAGE_TIMEOUT_S = 60.0


class Chromium:
    """Headless Chromium driven over the DevTools protocol on file descriptors 3 and 4."""

    def __init__(self, binary: str) -> None:
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def on_fds_3_and_4() -> None:
            os.dup2(commands_read, 3)
            os.dup2(replies_write, 4)

        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
            + ["--remote-debugging-pipe", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=on_fds_3_and_4,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(commands_read)
        os.close(replies_write)
        self._buffer, self._last_id = b"", 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        metrics = {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics, self.session)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result (events in between are skipped)."""
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    sys.exit("ui_screenshots: Chromium exited")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._last_id:
                if "error" in reply:
                    sys.exit(f"ui_screenshots: {method} failed: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session)
        return result["result"].get("value")

    def screenshot(self, url: str, path: Path, shows: str, actions: tuple[str, ...] = ()) -> None:
        """Load ``url`` until the page's text contains ``shows``, close the assistant panel, run
        ``actions`` (JavaScript), and write a PNG of the window to ``path``."""
        self.call("Page.navigate", {"url": "about:blank"}, self.session)  # a full load, not an in-app route change
        self.call("Page.navigate", {"url": url}, self.session)
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while not self.evaluate(f"document.body !== null && document.body.innerText.includes({json.dumps(shows)})"):
            if time.monotonic() > deadline:
                sys.exit(f"ui_screenshots: {url} did not show {shows!r} within {PAGE_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        time.sleep(2.0)  # charts and lazy columns render after the data
        for expression in (CLOSE_ASSISTANT, *actions):
            self.evaluate(expression)
            time.sleep(1.0)
        png = self.call("Page.captureScreenshot", {"format": "png"}, self.session)["data"]
        path.write_bytes(base64.b64decode(png))
        print(f"{path}  <- {url}")

    def close(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)
        os.close(self._commands)
        os.close(self._replies)


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


def take(base: str, store: str, experiment_name: str, out: Path, runs: int) -> None:
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        sys.exit(f"ui_screenshots: no experiment {experiment_name!r} in {store}: run the pipeline first")
    ident = experiment.experiment_id
    pipelines = client.search_runs([ident], "tags.stage = 'pipeline'", order_by=["start_time DESC"], max_results=runs)
    if not pipelines:
        sys.exit(f"ui_screenshots: no pipeline run in {experiment_name!r}: run the pipeline first")
    newest = pipelines[0].info.run_name
    out.mkdir(parents=True, exist_ok=True)
    runs_page = f"{base}/#/experiments/{ident}/runs?{MODEL_TRAINING}"
    view = f"&viewStateShareKey={RESULTS_VIEW}" if SHARED_VIEW_TAG + RESULTS_VIEW in experiment.tags else ""
    browser = Chromium(_browser())
    try:
        browser.screenshot(runs_page + view, out / "runs_table.png", newest, actions=(EXPAND_FIRST_RUN,))
        browser.screenshot(f"{runs_page}&compareRunsMode=CHART{view}", out / "charts.png", newest)
        if len(pipelines) >= 2:
            ids = json.dumps([r.info.run_id for r in pipelines])
            query = urllib.parse.urlencode({"runs": ids, "experiments": json.dumps([ident])})
            browser.screenshot(f"{base}/#/compare-runs?{query}&{MODEL_TRAINING}", out / "compare.png", newest)
        else:
            print("one pipeline run only: no comparison (run a sweep first, see the README)")
    finally:
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("results/ui"))
    parser.add_argument("--runs", type=int, default=4, help="pipeline runs compared (the newest)")
    arguments = parser.parse_args()
    experiment_name = load_params(arguments.params).tracking.experiment_name
    store = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
    if store.startswith("http"):
        take(store.rstrip("/"), store, experiment_name, arguments.out, arguments.runs)
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
        take(base, store, experiment_name, arguments.out, arguments.runs)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
