"""The ``aits`` command line: thin wrappers that parse, call a library function, report.

Exit codes: 0 success, 2 bad input (the message names the problem), 1 failure.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import click
from pydantic import ValidationError
from tqdm import tqdm

from aitimestepper.config import DEFAULT_PARAMS_FILE, Params, ParamsError, load_params
from aitimestepper.runtime import Runtime

logger = logging.getLogger("aitimestepper")

PARAMS_OPTION = click.option(
    "--params",
    "params_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_PARAMS_FILE,
    show_default=True,
    help="Params file (every scientific setting).",
)


def _load(params_path: Path) -> Params:
    try:
        return load_params(params_path)
    except ParamsError as error:
        raise click.UsageError(str(error)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """aitimestepper: a learned time-stepper for gravitational N-body simulation."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        runtime = Runtime()
    except ValidationError as error:
        messages = (problem["msg"].removeprefix("Value error, ") for problem in error.errors())
        raise click.UsageError("; ".join(messages)) from None
    runtime.apply()


@main.command("params")
@PARAMS_OPTION
def params_command(params_path: Path) -> None:
    """Validate the params file and print its config contract as JSON."""
    click.echo(json.dumps(_load(params_path).to_contract(), indent=2))


@main.command("train")
@PARAMS_OPTION
@click.option(
    "--models-dir",
    type=click.Path(path_type=Path),
    default=Path("models"),
    show_default=True,
    help="Where model.pt (kept by validation) and checkpoint.pt (resumable state) go.",
)
@click.option(
    "--metrics",
    "metrics_path",
    type=click.Path(path_type=Path),
    default=Path("metrics/train.json"),
    show_default=True,
    help="Summary metrics JSON.",
)
@click.option("--resume", is_flag=True, help="Continue from MODELS_DIR/checkpoint.pt after an interruption.")
@click.option("--no-tracking", is_flag=True, help="Do not log to MLflow.")
def train_command(params_path: Path, models_dir: Path, metrics_path: Path, resume: bool, no_tracking: bool) -> None:
    """Train the learned time-stepper (Part 1 collection + Part 2 replay per epoch)."""
    from aitimestepper.training.run import run_training

    params = _load(params_path)
    summary = run_training(params, models_dir, metrics_path=metrics_path, resume=resume, tracking=not no_tracking)
    click.echo(
        f"trained {summary['epochs']} epochs in {summary['wall_time_s']:.0f} s; Part 2 converged in "
        f"{summary['part2_convergence_rate']:.0%} of epochs; kept epoch {summary['kept_epoch']}: validation pass rate "
        f"{summary['kept_validation_pass_rate']:.4f} (worst family "
        f"{summary['kept_validation_worst_family_pass_rate']:.4f}), "
        f"{summary['kept_validation_steps_per_time_scale']:.1f} steps per time scale"
    )


@main.command("simulate")
@PARAMS_OPTION
@click.option(
    "--model",
    "source",
    default=None,
    help="Policy: a checkpoint path, an MLflow URI (models:/NAME@ALIAS, runs:/ID/model) or one of "
    "fixed|free_fall|energy_free_fall|prs23|energy_feedback|oracle. "
    "Default: simulation.policy (learned: models/model.pt).",
)
@click.option("--ics", type=click.Path(path_type=Path), default=None, help="Initial conditions (JSON/NPZ, see README).")
@click.option(
    "--time-scales",
    type=float,
    default=None,
    help="Duration in time scales (periods, crossing times) [default: simulation.systems.duration].",
)
@click.option("--duration", type=float, default=None, help="Duration in time units (instead of --time-scales).")
@click.option("--gated", is_flag=True, help="Reject steps above the threshold and retry them with half the step.")
@click.option(
    "--energy-threshold",
    type=float,
    default=None,
    help="Gate (and, for a learned model, the threshold its steps aim at) "
    "[default: the model's energy_threshold, else the params'].",
)
@click.option("--eta", type=float, default=None, help="Factor of the free-fall, energy_free_fall and prs23 rules.")
@click.option(
    "--max-steps", type=click.IntRange(1), default=None, help="Cap on steps per system [simulation.max_steps]."
)
@click.option("--output", type=click.Path(path_type=Path), default=Path("metrics/simulate.json"), show_default=True)
@click.option(
    "--trajectory", type=click.Path(path_type=Path), default=Path("results/simulate/trajectory.npz"), show_default=True
)
@click.option("--plots-dir", type=click.Path(path_type=Path), default=Path("plots/simulate"), show_default=True)
@click.option(
    "--movie",
    "movie_systems",
    type=click.IntRange(0, 64),
    is_flag=False,
    flag_value=1,
    default=None,
    help="Animated GIFs of the first N systems of each group in PLOTS_DIR/movies (--movie alone: 1; 0: none) "
    "[default: simulation.movie.systems].",
)
def simulate_command(
    params_path: Path,
    source: str | None,
    ics: Path | None,
    time_scales: float | None,
    duration: float | None,
    gated: bool,
    energy_threshold: float | None,
    eta: float | None,
    max_steps: int | None,
    output: Path,
    trajectory: Path,
    plots_dir: Path,
    movie_systems: int | None,
) -> None:
    """Integrate systems with a policy; write metrics JSON, a trajectory NPZ, plots and movies."""
    from aitimestepper.simulate import simulate_from_params, write_outputs

    params = _load(params_path)
    if time_scales is not None and duration is not None:
        raise click.UsageError("give --time-scales or --duration, not both")
    for name, value in (("--time-scales", time_scales), ("--duration", duration), ("--eta", eta)):
        if value is not None and not value > 0:
            raise click.UsageError(f"{name} must be > 0, got {value}")
    if energy_threshold is not None and not 0 < energy_threshold < 1:
        raise click.UsageError(f"--energy-threshold must be in (0, 1), got {energy_threshold}")
    if max_steps is not None:
        params = params.model_copy(update={"simulation": params.simulation.model_copy(update={"max_steps": max_steps})})
    if source is None:
        source = "models/model.pt" if params.simulation.policy == "learned" else params.simulation.policy
    with tqdm(desc=f"simulate ({source})", unit="step", file=sys.stderr, disable=None) as bar:
        try:
            outputs = simulate_from_params(
                params,
                source,
                ics=ics,
                time_scales=time_scales,
                duration=duration,
                gated=gated,
                energy_threshold=energy_threshold,
                eta=eta,
                progress=bar.update,
            )
        except ValueError as error:
            raise click.UsageError(str(error)) from None
    movie = params.simulation.movie
    if movie_systems is not None:
        movie = movie.model_copy(update={"systems": movie_systems})
    if movie.systems > 0:
        click.echo(f"writing plots and movies of up to {movie.systems} systems per group -> {plots_dir}", err=True)
    summary = write_outputs(outputs, output, trajectory, plots_dir, movie)["summary"]
    click.echo(
        f"{summary['systems']} systems, {summary['mean_steps_per_time_scale']:.1f} steps and "
        f"{summary['mean_force_evaluations_per_time_scale']:.1f} force evaluations per time scale, gate pass rate "
        f"{summary['gate_pass_rate']:.4f}, max single-step |dE/E| {summary['max_step_energy_error']:.2e}, "
        f"max |dE/E| {summary['max_energy_error']:.2e} -> {output}"
    )
    if summary["systems_at_step_cap"]:
        click.echo(
            f"warning: {summary['systems_at_step_cap']} system(s) stopped at the step cap before their end time "
            "(hit_step_cap in the metrics); raise --max-steps to go on",
            err=True,
        )


@main.command("compare-metrics")
@click.argument("reference", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("run", type=click.Path(path_type=Path, exists=True, file_okay=False))
def compare_metrics_command(reference: Path, run: Path) -> None:
    """Compare the pipeline's metrics JSON files of RUN with REFERENCE (two metrics directories),
    wall times aside; exit 1 if any value differs."""
    from aitimestepper.reproduction import compare_metrics

    found = compare_metrics(reference, run)
    for name, lines in found.items():
        click.echo(f"{name}: {'identical' if not lines else f'{len(lines)} difference(s)'}")
        for line in lines[:20]:
            click.echo(f"  {line}")
    if any(found.values()):
        sys.exit(1)


@main.command("register")
@PARAMS_OPTION
@click.option("--train-run", type=click.Path(path_type=Path), default=Path("models/train_run.json"), show_default=True)
@click.option("--output", type=click.Path(path_type=Path), default=Path("models/registered.json"), show_default=True)
def register_command(params_path: Path, train_run: Path, output: Path) -> None:
    """Register the trained model in the MLflow registry with the alias 'candidate'."""
    from aitimestepper.registry import RegistryError, register_trained

    params = _load(params_path)
    if not train_run.is_file():
        raise click.UsageError(f"{train_run} does not exist: run `aits train` first")
    try:
        registered = register_trained(train_run, params.tracking.registered_model_name, output)
    except RegistryError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"registered {registered['uri']} as {registered['alias_uri']} -> {output}")


@main.command("evaluate")
@PARAMS_OPTION
@click.option(
    "--model",
    "source",
    type=click.Path(path_type=Path),
    default=Path("models/model.pt"),
    show_default=True,
    help="The learned model's checkpoint.",
)
@click.option("--output", type=click.Path(path_type=Path), default=Path("metrics/evaluate.json"), show_default=True)
@click.option("--plots-dir", type=click.Path(path_type=Path), default=Path("plots/evaluate"), show_default=True)
@click.option(
    "--train-run",
    type=click.Path(path_type=Path),
    default=Path("models/train_run.json"),
    show_default=True,
    help="The training record of the model: if it trained this very checkpoint in this tracking store, the "
    "evaluation run joins its pipeline run, which gets the headline results too.",
)
@click.option("--no-tracking", is_flag=True, help="Do not log to MLflow.")
def evaluate_command(
    params_path: Path, source: Path, output: Path, plots_dir: Path, train_run: Path, no_tracking: bool
) -> None:
    """Compare the learned policy with tuned classical rules and the oracle on every held-out family."""
    from aitimestepper.checkpoint import CheckpointError, load_policy
    from aitimestepper.evaluation.report import evaluate, write_report

    params = _load(params_path)
    try:
        load_policy(source)
    except CheckpointError as error:
        raise click.UsageError(str(error)) from None
    jobs = len(params.evaluation.suite) * (1 + len(params.evaluation.extra_thresholds))
    with tqdm(total=jobs, desc="evaluate", unit="family", file=sys.stderr, disable=None) as bar:
        report = evaluate(params, str(source), progress=lambda name: (bar.set_postfix_str(name), bar.update(1)))
    click.echo(f"writing the report, plots and one movie per family -> {output}, {plots_dir}", err=True)
    write_report(report, output, plots_dir, params=params)
    if not no_tracking:
        _track_evaluation(params, report, plots_dir, train_run)
    numbers = report["headline"]
    click.echo(json.dumps(report["summary"], indent=1))
    click.echo(
        f"learned: worst family pass rate {numbers['worst_family_pass_rate']:.4f}, cost "
        f"{numbers['cost_ratio_to_oracle']:.3f}x the oracle along its own paths (geometric mean of the families' "
        f"medians) -> {output}"
    )


def _track_evaluation(params: Params, report: dict, plots_dir: Path, train_run: Path) -> None:
    import mlflow

    from aitimestepper import tracking

    tracking.configure()
    pipeline = tracking.joined_pipeline_run(train_run, report["model_sha256"])
    if pipeline is None:
        logger.info("%s is not the training record of this checkpoint in this store: a stand-alone run", train_run)
    name = (
        f"{mlflow.get_run(pipeline).info.run_name} · evaluate"
        if pipeline
        else f"evaluate · {Path(report['source']).name} {report['model_sha256'][:8]}"
    )
    results = tracking.result_metrics(report)

    metrics = {
        f"t{threshold}/{family}/{policy}/{key}": float(value)
        for threshold, per_threshold in report["thresholds"].items()
        for family, data in per_threshold["families"].items()
        for policy, values in data["summary"].items()
        for key, value in values.items()
        if math.isfinite(float(value))
    }
    with tracking.tracked_run(
        params.tracking.experiment_name,
        name,
        params.to_contract(),
        tags={"stage": "evaluate", "model": report["source"], "model_sha256": report["model_sha256"]},
        parent_run_id=pipeline,
    ) as run:
        mlflow.log_metrics({**metrics, **results})
        headline = [key for key in results if key.count("/") == 1 or key.endswith("/cost_vs_oracle")]
        view = tracking.share_results_view(run.info.experiment_id, headline)
        if pipeline:
            mlflow.log_metrics(results, run_id=pipeline)
        mlflow.log_dict(report, "evaluate.json")
        for plot in sorted(plots_dir.glob("*.png")):
            mlflow.log_artifact(str(plot), artifact_path="plots")
        for movie in sorted((plots_dir / "movies").glob("*.gif")):
            mlflow.log_artifact(str(movie), artifact_path="movies")
    click.echo(f"MLflow: the runs table with the results as columns is at <tracking UI>/{view}", err=True)


@main.command("promote")
@PARAMS_OPTION
@click.option("--version", type=int, default=None, help="Model version [default: the 'candidate' alias].")
@click.option(
    "--evaluation",
    type=click.Path(path_type=Path),
    default=None,
    help="An evaluation report (metrics/evaluate.json) to record on the version of --registered first; "
    "it must have judged that version's checkpoint.",
)
@click.option(
    "--registered",
    type=click.Path(path_type=Path),
    default=Path("models/registered.json"),
    show_default=True,
    help="The registry record (from `aits register`) whose version --evaluation judged.",
)
@click.option("--force", is_flag=True, help="Promote even if the evaluation is worse than the champion's.")
@click.option("--output", type=click.Path(path_type=Path), default=Path("models/promotion.json"), show_default=True)
def promote_command(
    params_path: Path, version: int | None, evaluation: Path | None, registered: Path, force: bool, output: Path
) -> None:
    """Move the 'champion' alias to a version whose evaluation is not worse than the champion's."""
    from aitimestepper.atomic import write_json
    from aitimestepper.registry import RegistryError, judged_version, promote, record_evaluation

    params = _load(params_path)
    name = params.tracking.registered_model_name
    try:
        if evaluation is not None:
            record, numbers = judged_version(registered, evaluation)
            if record["name"] != name or version not in (None, record["version"]):
                raise RegistryError(
                    f"{registered} names version {record['version']} of {record['name']!r}, but promotion was asked "
                    f"of {'version ' + str(version) if version is not None else 'the candidate'} of {name!r}"
                )
            version = record["version"]
            record_evaluation(name, version, numbers)
        decision = promote(name, version, force=force)
    except RegistryError as error:
        raise click.UsageError(str(error)) from None
    write_json(output, decision)
    verb = "promoted" if decision["promoted"] else "kept the champion; did not promote"
    click.echo(f"{verb} version {decision['version']} ({decision['reason']}) -> {output}")


@main.command("server")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".server"),
    show_default=True,
    help="The server's data: PostgreSQL cluster, artifact store, logs (kept between starts).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Tracking server port.")
@click.option("--postgres-port", type=click.IntRange(1, 65535), default=5433, show_default=True)
def server_command(directory: Path, port: int, postgres_port: int) -> None:
    """Run a shared MLflow tracking server (PostgreSQL backend store, proxied artifact store) on
    127.0.0.1 until Ctrl-C; clients set MLFLOW_TRACKING_URI=http://127.0.0.1:PORT."""
    import signal
    import time

    from aitimestepper.server import ServerError, running_server

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for stop_signal in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job starts with it ignored
        signal.signal(stop_signal, interrupt)
    click.echo(f"starting PostgreSQL on 127.0.0.1:{postgres_port} and MLflow on 127.0.0.1:{port} ...", err=True)
    try:
        with running_server(directory, port, postgres_port) as server:
            click.echo(
                f"MLflow tracking server (PostgreSQL store, artifacts in {server.directory / 'artifacts'}) at "
                f"{server.uri}; PIDs {server.pids}\n  export MLFLOW_TRACKING_URI={server.uri}\nCtrl-C stops it."
            )
            try:
                while not server.exited():
                    time.sleep(1.0)
            except KeyboardInterrupt:
                click.echo("stopping ...", err=True)
                return
            raise ServerError(f"{', '.join(server.exited())} exited; see the logs in {server.directory}")
    except ServerError as error:
        raise click.ClickException(str(error)) from None


@main.command("bench")
@PARAMS_OPTION
@click.option("--model", type=click.Path(path_type=Path), default=Path("models/model.pt"), show_default=True)
@click.option("--output", type=click.Path(path_type=Path), default=Path("metrics/bench.json"), show_default=True)
@click.option("--plot", type=click.Path(path_type=Path), default=Path("plots/bench/rates.png"), show_default=True)
@click.option("--epochs", type=click.IntRange(2, 1000), default=4, show_default=True, help="Epochs timed for training.")
def bench_command(params_path: Path, model: Path, output: Path, plot: Path, epochs: int) -> None:
    """Steps per second of every policy against REBOUND, batched throughput, training and memory."""
    from aitimestepper.atomic import write_json
    from aitimestepper.bench import run_benchmarks
    from aitimestepper.checkpoint import CheckpointError
    from aitimestepper.plots import benchmark_rates

    params = _load(params_path)
    try:
        report = run_benchmarks(params, params_path, model, epochs=epochs)
    except CheckpointError as error:
        raise click.UsageError(f"{error} (train first: make repro)") from None
    write_json(output, report)
    benchmark_rates(report, plot)
    triple = next(row for row in report["single_system"] if row["bodies"] == 3)
    click.echo(
        f"one 3-body system: learned {triple['learned_steps_per_s']:,.0f} steps/s, fixed dt "
        f"{triple['fixed_steps_per_s']:,.0f}, REBOUND leapfrog {triple['rebound_leapfrog_steps_per_s']:,.0f} "
        f"(learned at 1/{1 / triple['learned_over_rebound_leapfrog']:.0f} of it); learned-policy overhead at "
        f"B=1024: {report['learned_overhead_at_b1024']:.2f}x; {report['training']['epoch_time_s']:.1f} s/epoch; peak "
        f"memory training {report['training']['peak_rss_mib']:.0f} MiB, simulation "
        f"{report['simulation_memory']['peak_rss_mib']:.0f} MiB -> {output}, {plot}"
    )
