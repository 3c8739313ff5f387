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


@main.command("simulate")
@PARAMS_OPTION
@click.option(
    "--policy", type=click.Choice(["fixed", "free_fall", "oracle"]), default=None, help="Overrides simulation.policy."
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=Path("metrics/simulate.json"),
    show_default=True,
    help="Metrics JSON to write (atomically).",
)
def simulate_command(params_path: Path, policy: str | None, output: Path) -> None:
    """Integrate the simulation suite of binaries with a classical policy and write metrics."""
    from aitimestepper.simulate import write_simulation

    params = _load(params_path)
    with tqdm(
        desc=f"simulate ({policy or params.simulation.policy})", unit="step", file=sys.stderr, disable=None
    ) as bar:
        metrics = write_simulation(params, policy, output, progress=bar.update)
    summary = metrics["summary"]
    click.echo(
        f"{summary['systems']} systems, {summary['mean_steps_per_orbit']:.1f} steps/orbit, "
        f"gate pass rate {summary['gate_pass_rate']:.4f}, max |dE/E| {summary['max_energy_error']:.2e} -> {output}"
    )
