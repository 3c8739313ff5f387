"""The ``aits`` command line: thin wrappers that parse, call a library function, report.

Exit codes: 0 success, 2 bad input (the message names the problem), 1 failure.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
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
    Runtime().apply()


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
        f"{summary['kept_validation_pass_rate']:.4f}, {summary['kept_validation_steps_per_orbit']:.1f} steps/orbit, "
        f"final mean dt = {summary['final_dt_over_tff_mean']:.4f} free-fall times"
    )


@main.command("simulate")
@PARAMS_OPTION
@click.option(
    "--policy",
    type=click.Choice(["learned", "fixed", "free_fall", "oracle"]),
    default=None,
    help="Overrides simulation.policy.",
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path),
    default=Path("models/model.pt"),
    show_default=True,
    help="Checkpoint of the learned policy.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=Path("metrics/simulate.json"),
    show_default=True,
    help="Metrics JSON to write (atomically).",
)
def simulate_command(params_path: Path, policy: str | None, model_path: Path, output: Path) -> None:
    """Integrate the simulation suite of binaries with a policy and write metrics."""
    from aitimestepper.checkpoint import CheckpointError

    params = _load(params_path)
    try:
        _simulate(params, policy, model_path, output)
    except CheckpointError as error:
        raise click.UsageError(str(error)) from None


def _simulate(params: Params, policy: str | None, model_path: Path, output: Path) -> None:
    from aitimestepper.simulate import write_simulation

    with tqdm(
        desc=f"simulate ({policy or params.simulation.policy})", unit="step", file=sys.stderr, disable=None
    ) as bar:
        metrics = write_simulation(params, policy, output, model_path=model_path, progress=bar.update)
    summary = metrics["summary"]
    click.echo(
        f"{summary['systems']} systems, {summary['mean_steps_per_orbit']:.1f} steps/orbit, "
        f"gate pass rate {summary['gate_pass_rate']:.4f}, max |dE/E| {summary['max_energy_error']:.2e} -> {output}"
    )
