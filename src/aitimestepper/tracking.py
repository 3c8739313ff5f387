"""MLflow tracking: where the store is, and one run's params, tags, metrics and artifacts.

The embedded default store is SQLite in the repository root, ``sqlite:///<root>/mlflow.db``,
with artifacts in ``<root>/mlartifacts``; ``<root>`` is ``DVC_ROOT`` when DVC runs the stage
(so queued experiments, which run in temporary copies, land in the same store) and the working
directory otherwise. ``MLFLOW_TRACKING_URI`` points elsewhere, e.g. a shared server.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient


def project_root() -> Path:
    """``DVC_ROOT`` if set (inside DVC stages), else the working directory; absolute."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the SQLite store in the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def configure() -> str:
    """Point mlflow at :func:`tracking_uri` (tracking and registry) and return it."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str) -> str:
    """The id of experiment ``name``, created with an absolute artifact location if new."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if tracking_uri().startswith("sqlite:"):
        artifact_location = (project_root() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"a.b.c": "value"} with every value as a string (MLflow params)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def run_tags() -> dict[str, str]:
    """Provenance: git commit and, under ``dvc exp run``, the experiment name and baseline."""
    tags = {}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        tags["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    for variable, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    return tags


class EpochMetrics:
    """Logs one epoch's metrics in a single batched call (``step=epoch``)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def log_epoch(self, metrics: dict[str, float], epoch: int) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v == v and abs(v) != float("inf")}
        mlflow.log_metrics(finite, step=epoch, run_id=self.run_id)


@contextmanager
def tracked_run(
    experiment_name: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str] = ()
) -> Iterator[mlflow.ActiveRun]:
    """Start an MLflow run with flattened ``params`` and provenance tags; end it on exit
    (status FAILED if the block raises)."""
    configure()
    experiment_id = ensure_experiment(experiment_name)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags={**run_tags(), **dict(tags)}) as run:
        flat = flatten(params)
        items = list(flat.items())
        for start in range(0, len(items), 100):
            mlflow.log_params(dict(items[start : start + 100]))
        yield run
