"""Simulation: integrate systems with any policy and report metrics, a trajectory and plots.

Systems come from an initial-conditions file or from the ``simulation`` section of the params
(a suite of equal-mass Kepler binaries). Policies come from a checkpoint path, an MLflow model
URI (``models:/name@alias``, ``runs:/...``) or a classical policy name; a learned policy is
rebuilt from its config contract alone and uses its own ``energy_threshold``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aitimestepper.atomic import write_atomic, write_json
from aitimestepper.config import Params
from aitimestepper.model import LearnedPolicy
from aitimestepper.physics.initial_conditions import KeplerElements, kepler_binary, load_systems
from aitimestepper.physics.state import State
from aitimestepper.policies import TimeStepPolicy, make_policy
from aitimestepper.rollout import Rollout, rollout
from aitimestepper.training.sampler import characteristic_period

CLASSICAL_POLICIES = ("fixed", "free_fall", "oracle")
_PHASES = {"pericenter": 0.0, "apocenter": math.pi}


def simulation_binaries(params: Params) -> KeplerElements:
    """The binaries of the simulation stage: ``simulation.eccentricities`` cycled over
    ``simulation.num_systems`` equal-mass systems with a = 1 and the total mass of the
    initial conditions; random start phases are drawn from ``seed``."""
    sim = params.simulation
    count = sim.num_systems
    eccentricity = torch.tensor(
        [sim.eccentricities[k % len(sim.eccentricities)] for k in range(count)], dtype=torch.float64
    )
    if sim.start_phase == "random":
        generator = torch.Generator().manual_seed(params.seed)
        mean_anomaly = 2.0 * math.pi * torch.rand(count, generator=generator, dtype=torch.float64)
    else:
        mean_anomaly = torch.full((count,), _PHASES[sim.start_phase], dtype=torch.float64)
    ones = torch.ones(count, dtype=torch.float64)
    return KeplerElements(
        eccentricity=eccentricity,
        semi_major_axis=ones,
        total_mass=ones * params.initial_conditions.total_mass,
        mass_ratio=ones,
        mean_anomaly=mean_anomaly,
    )


def load_any_policy(source: str | Path, params: Params) -> TimeStepPolicy:
    """A policy from a classical name, an MLflow model URI or a checkpoint path.

    Raises:
        ValueError: (CheckpointError included) the source cannot be loaded; the message says why.
    """
    source = str(source)
    if source in CLASSICAL_POLICIES:
        sim = params.simulation
        return make_policy(source, energy_threshold=params.energy_threshold, fixed_dt=sim.fixed_dt, eta=sim.eta)
    if "://" in source or source.startswith("models:/"):
        return _policy_from_mlflow(source)
    from aitimestepper.checkpoint import load_policy

    return load_policy(Path(source))


def _policy_from_mlflow(uri: str) -> LearnedPolicy:
    import mlflow
    from mlflow.exceptions import MlflowException

    from aitimestepper import tracking

    tracking.configure()
    try:
        model = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as error:
        raise ValueError(f"cannot load model {uri} from {tracking.tracking_uri()}: {error}") from None
    return model.unwrap_python_model().policy


def threshold_of(policy: TimeStepPolicy, params: Params) -> float:
    """The gate: a learned policy's own contract threshold, else the params'."""
    return policy.params.energy_threshold if isinstance(policy, LearnedPolicy) else params.energy_threshold


def run_simulation(
    policy: TimeStepPolicy,
    state: State,
    periods: torch.Tensor,
    *,
    energy_threshold: float,
    end_time: torch.Tensor,
    max_steps: int,
    gated: bool = False,
    record: bool = False,
    progress=None,
) -> tuple[dict[str, Any], Rollout]:
    """Integrate ``state`` until ``end_time`` (B,) and summarize per system and overall.

    Args:
        periods: (B,) each system's orbital (or characteristic) period, to express costs per orbit.

    Returns:
        (JSON-ready metrics, the raw rollout).
    """
    started = time.perf_counter()
    result = rollout(
        state,
        policy,
        end_time,
        energy_threshold=energy_threshold,
        max_steps=max_steps,
        gated=gated,
        record=record,
        progress=progress,
    )
    wall_time = time.perf_counter() - started
    systems = _per_system(result, state, end_time / periods)
    metrics = {
        "policy": policy.name,
        "gated": gated,
        "energy_threshold": energy_threshold,
        "wall_time_s": wall_time,
        "summary": _summary(systems, wall_time),
        "systems": systems,
    }
    return metrics, result


def simulate_from_params(
    params: Params,
    policy_source: str | Path,
    *,
    ics: Path | None = None,
    periods: float | None = None,
    duration: float | None = None,
    gated: bool = False,
    energy_threshold: float | None = None,
    record: bool = True,
    progress=None,
) -> tuple[dict[str, Any], Rollout]:
    """The simulation stage: systems from ``ics`` (or the params' binaries), for ``duration``
    time units or ``periods`` periods (default ``simulation.duration_periods``), gated (and, for
    policies that read one, aimed) at ``energy_threshold`` (default: :func:`threshold_of`)."""
    policy = load_any_policy(policy_source, params)
    if energy_threshold is None:
        energy_threshold = threshold_of(policy, params)
    else:
        policy = policy.at_threshold(energy_threshold)
    if ics is not None:
        state = load_systems(ics)
        orbit = characteristic_period(state)
        extra = {}
    else:
        elements = simulation_binaries(params)
        state = kepler_binary(elements, dim=params.physics.dim, softening=params.physics.softening)
        orbit = elements.period
        extra = {"eccentricity": elements.eccentricity}
    if duration is not None:
        end_time = torch.full((state.batch_size,), float(duration), dtype=torch.float64)
    else:
        end_time = (periods or params.simulation.duration_periods) * orbit
    metrics, result = run_simulation(
        policy,
        state,
        orbit,
        energy_threshold=energy_threshold,
        end_time=end_time,
        max_steps=params.simulation.max_steps,
        gated=gated,
        record=record,
        progress=progress,
    )
    for key, values in extra.items():
        for system, value in zip(metrics["systems"], values.tolist(), strict=True):
            system[key] = value
    metrics["source"] = str(policy_source)
    return metrics, result


def write_outputs(
    metrics: dict[str, Any], result: Rollout, output: Path, trajectory: Path | None, plots_dir: Path | None
) -> None:
    """Metrics JSON, trajectory NPZ and plots, each written atomically."""
    write_json(output, metrics)
    if result.trajectory is not None and trajectory is not None:
        arrays = {
            "time": result.trajectory.time.numpy(),
            "dt": result.trajectory.dt.numpy(),
            "energy_error": result.trajectory.energy_error.numpy(),
            "positions": result.trajectory.positions.numpy(),
            "masses": result.final_state.masses.numpy(),
        }

        def save(tmp: Path) -> None:
            with tmp.open("wb") as handle:  # a file object: numpy would append .npz to a name
                np.savez_compressed(handle, **arrays)

        write_atomic(Path(trajectory), save)
    if result.trajectory is not None and plots_dir is not None:
        from aitimestepper.plots import simulation_plots

        simulation_plots(result.trajectory, Path(plots_dir), title=f"{metrics['policy']} ({metrics['source']})")


def _per_system(result: Rollout, state: State, orbits: torch.Tensor) -> list[dict[str, Any]]:
    steps = result.steps.double().clamp_min(1)
    columns = {
        "num_bodies": torch.full_like(result.steps, state.num_bodies),
        "orbits": orbits,
        "steps": result.steps,
        "force_evaluations": result.force_evaluations,
        "steps_per_orbit": result.steps.double() / orbits,
        "force_evaluations_per_orbit": result.force_evaluations.double() / orbits,
        "gate_pass_rate": result.steps_passed / steps,
        "max_energy_error": result.max_energy_error,
        "final_energy_error": result.final_energy_error,
        "max_step_energy_error": result.max_step_error,
        "dt_min": torch.where(result.steps > 0, result.dt_min, torch.zeros_like(result.dt_min)),
        "dt_max": result.dt_max,
        "dt_mean": result.dt_mean,
        "momentum_drift": result.momentum_drift,
        "angular_momentum_drift": result.angular_momentum_drift,
        "reached_end": result.reached_end,
        "failed": result.failed,
    }
    return [{key: values[k].item() for key, values in columns.items()} for k in range(state.batch_size)]


def _summary(systems: list[dict[str, Any]], wall_time: float) -> dict[str, Any]:
    steps = sum(s["steps"] for s in systems)
    return {
        "systems": len(systems),
        "all_reached_end": all(s["reached_end"] for s in systems),
        "any_failed": any(s["failed"] for s in systems),
        "gate_pass_rate": sum(s["gate_pass_rate"] * s["steps"] for s in systems) / max(steps, 1),
        "mean_steps_per_orbit": sum(s["steps_per_orbit"] for s in systems) / len(systems),
        "mean_force_evaluations_per_orbit": sum(s["force_evaluations_per_orbit"] for s in systems) / len(systems),
        "max_energy_error": max(s["max_energy_error"] for s in systems),
        "max_momentum_drift": max(s["momentum_drift"] for s in systems),
        "steps_per_second": steps / max(wall_time, 1e-9),
    }
