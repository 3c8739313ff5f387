"""A tracked training run: the trainer plus MLflow, progress bar, plots and the run-id file."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from aitimestepper.atomic import write_json
from aitimestepper.checkpoint import checkpoint_digest
from aitimestepper.config import Params
from aitimestepper.plots import training_curves
from aitimestepper.pyfunc import log_simulation_model
from aitimestepper.training.trainer import train

logger = logging.getLogger(__name__)

RUN_FILE = "train_run.json"
CURVES_FILE = "training_curves.png"


def run_training(
    params: Params,
    models_dir: Path,
    *,
    metrics_path: Path | None = None,
    resume: bool = False,
    tracking: bool = True,
) -> dict[str, Any]:
    """Train with a progress bar; with ``tracking``, log everything to MLflow.

    Writes ``models_dir/model.pt``, ``checkpoint.pt``, ``training_curves.png`` and
    ``train_run.json`` (MLflow run id and its pipeline run's, tracking URI, logged model URI, the
    kept checkpoint's SHA-256, summary), and the summary plus the kept
    model's validation metrics to ``metrics_path`` if given.

    Returns:
        The end-of-run summary (epochs, time, Part 2 convergence rate, kept model's metrics).
    """
    models_dir = Path(models_dir)
    bar = tqdm(total=params.epochs, desc="train", unit="epoch", file=sys.stderr, disable=None)

    shown: dict[str, str] = {}

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        bar.n = epoch
        shown.update(accept=f"{metrics['part1/acceptance_rate']:.2f}", p2_iter=str(int(metrics["part2/iterations"])))
        if "validation/worst_family_pass_rate" in metrics:  # a validated epoch
            shown.update(
                worst_family=f"{metrics['validation/worst_family_pass_rate']:.4f}",
                steps=f"{metrics['validation/steps_per_time_scale']:.0f}",
            )
        bar.set_postfix(shown)
        bar.refresh()

    if not tracking:
        result = train(params, models_dir, resume=resume, on_epoch=on_epoch)
        bar.close()
        _write_outputs(result, models_dir, metrics_path, run_id=None, uri=None)
        return result.summary

    import mlflow

    from aitimestepper import tracking as mlflow_tracking

    experiment, contract = params.tracking.experiment_name, params.to_contract()
    name = mlflow_tracking.execution_name(params.energy_threshold, params.seed)
    with (
        mlflow_tracking.tracked_run(experiment, name, contract, tags={"stage": "pipeline"}) as pipeline,
        mlflow_tracking.tracked_run(experiment, f"{name} · train", contract, tags={"stage": "train"}) as run,
    ):
        result = train(
            params,
            models_dir,
            resume=resume,
            epoch_logger=mlflow_tracking.EpochMetrics(run.info.run_id),
            on_epoch=on_epoch,
        )
        bar.close()
        summary = {f"summary/{k}": float(v) for k, v in result.summary.items()}
        mlflow.log_metrics(summary)
        mlflow.log_metrics(summary, run_id=pipeline.info.run_id)
        mlflow.log_dict(params.model_contract(), "contract.json")
        mlflow.log_artifact(str(result.model_path), artifact_path="checkpoint")
        mlflow.set_tag("model_sha256", checkpoint_digest(result.model_path))
        model_info = log_simulation_model(result.model_path)
        _write_outputs(
            result,
            models_dir,
            metrics_path,
            run_id=run.info.run_id,
            pipeline_run_id=pipeline.info.run_id,
            uri=mlflow_tracking.tracking_uri(),
            model_uri=model_info.model_uri,
        )
        mlflow.log_artifact(str(models_dir / CURVES_FILE), artifact_path="plots")
    logger.info("training summary: %s", json.dumps(result.summary))
    return result.summary


def _write_outputs(
    result,
    models_dir: Path,
    metrics_path: Path | None,
    run_id: str | None,
    uri: str | None,
    model_uri: str | None = None,
    pipeline_run_id: str | None = None,
) -> None:
    training_curves(result.history, models_dir / CURVES_FILE, kept_epoch=int(result.best.get("epoch", 0)) or None)
    write_json(
        models_dir / RUN_FILE,
        {
            "run_id": run_id,
            "pipeline_run_id": pipeline_run_id,
            "tracking_uri": uri,
            "model_uri": model_uri,
            "model_sha256": checkpoint_digest(result.model_path),
            "summary": result.summary,
        },
    )
    if metrics_path is not None:
        write_json(metrics_path, {**result.summary, "kept": result.best})
