"""MLflow tracking: where the store is, and one run's params, tags, metrics and artifacts.

The embedded default store is SQLite in the repository root, ``sqlite:///<root>/mlflow.db``,
with artifacts in ``<root>/mlartifacts``; ``<root>`` is ``DVC_ROOT`` when DVC runs the stage
(so queued experiments, which run in temporary copies, land in the same store) and the working
directory otherwise. ``MLFLOW_TRACKING_URI`` points elsewhere, e.g. a shared server
(:mod:`aitimestepper.server`).

How runs are laid out, so one row of the UI's runs table holds a pipeline execution's params and
results: the train stage opens a *pipeline run*, named by the DVC experiment (``DVC_EXP_NAME``)
or, outside ``dvc exp run``, by threshold, seed and commit (:func:`execution_name`); training is
its child run ``<name> · train``. The evaluate stage adds the child ``<name> · evaluate`` and logs
the headline results (:func:`result_metrics`) on the pipeline run too. Experiments carry the tag
that opens them in the UI's model-training view.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
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


EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(name: str) -> str:
    """The id of experiment ``name``, created with an absolute artifact location if new, and
    tagged to open in the UI's model-training view (not the GenAI traces overview)."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        artifact_location = None
        if tracking_uri().startswith("sqlite:"):
            artifact_location = (project_root() / "mlartifacts").as_uri()
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
            )
        except MlflowException:  # created meanwhile by a parallel run (a queued sweep)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


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


def git_commit() -> str | None:
    """The project's git HEAD, or None outside a git repository."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def execution_name(energy_threshold: float, seed: int) -> str:
    """The pipeline run's name: the DVC experiment's under ``dvc exp run``, else e.g.
    ``threshold 0.0002 · seed 0 · 104812f``."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    commit = git_commit()
    return f"threshold {energy_threshold:g} · seed {seed}" + (f" · {commit[:7]}" if commit else "")


def run_tags() -> dict[str, str]:
    """Provenance: git commit and, under ``dvc exp run``, the experiment name and baseline."""
    tags = {}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
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


def result_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """An evaluation report's results as chartable metrics, at the threshold the model was trained
    for: ``results/worst_family_pass_rate``, ``results/cost_ratio_to_oracle`` (the headline),
    ``results/families_meeting_targets``, and per family ``results/<family>/cost_vs_oracle``,
    ``.../cost_vs_best_classical`` (same paths) and ``.../pass_rate`` of the learned policy."""
    families = report["summary"][f"{report['trained_threshold']:g}"]
    metrics = {f"results/{key}": float(value) for key, value in report["headline"].items()}
    metrics["results/families_meeting_targets"] = float(sum(bool(row["targets_met"]) for row in families.values()))
    for family, row in families.items():
        metrics[f"results/{family}/cost_vs_oracle"] = float(row["learned"])
        metrics[f"results/{family}/cost_vs_best_classical"] = float(row["learned_to_best_classical"])
        metrics[f"results/{family}/pass_rate"] = float(row["learned_pass_rate"])
    return metrics


def joined_pipeline_run(train_run: Path, model_sha256: str) -> str | None:
    """The pipeline run id in the training record ``train_run`` (``models/train_run.json``) if
    that training produced the checkpoint with SHA-256 ``model_sha256`` in the current store;
    else None (a missing record, another checkpoint, or another store)."""
    record = json.loads(Path(train_run).read_text()) if Path(train_run).is_file() else {}
    same = record.get("model_sha256") == model_sha256 and record.get("tracking_uri") == tracking_uri()
    return record.get("pipeline_run_id") if same else None


RESULTS_VIEW = "results"
SHARED_VIEW_TAG = "mlflow.sharedViewState."


def share_results_view(
    experiment_id: str, metric_keys: list[str], param_keys: tuple[str, ...] = ("energy_threshold", "seed")
) -> str:
    """Store a view of the runs table that shows ``param_keys`` and ``metric_keys`` as columns
    (the UI shows no param or metric column by default), and in its chart mode only the
    ``results/*`` charts, as the experiment's shared view :data:`RESULTS_VIEW`; open it with
    ``#/experiments/<id>/runs?viewStateShareKey=results``. Returns that URL fragment."""
    columns = [f"params.`{key}`" for key in param_keys] + [f"metrics.`{key}`" for key in metric_keys]
    view = {"selectedColumns": columns, "chartsSearchFilter": "results/"}
    MlflowClient().set_experiment_tag(experiment_id, SHARED_VIEW_TAG + RESULTS_VIEW, json.dumps(view))
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={RESULTS_VIEW}"


@contextmanager
def tracked_run(
    experiment_name: str,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] = (),
    parent_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start an MLflow run (a child of ``parent_run_id``, or of the active run, if any) with
    flattened ``params`` and provenance tags; end it on exit (status FAILED if the block raises)."""
    configure()
    experiment_id = ensure_experiment(experiment_name)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        nested=nested,
        parent_run_id=parent_run_id,
        tags={**run_tags(), **dict(tags)},
    ) as run:
        flat = flatten(params)
        items = list(flat.items())
        for start in range(0, len(items), 100):
            mlflow.log_params(dict(items[start : start + 100]))
        yield run
