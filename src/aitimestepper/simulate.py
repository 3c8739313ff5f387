"""The simulation stage: integrate a suite of Kepler binaries with a policy, report metrics."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from aitimestepper.atomic import write_json
from aitimestepper.config import Params
from aitimestepper.physics.initial_conditions import KeplerElements, kepler_binary
from aitimestepper.policies import TimeStepPolicy, make_policy
from aitimestepper.rollout import Rollout, rollout

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


def policy_from_params(params: Params, name: str | None = None, model_path: Path | None = None) -> TimeStepPolicy:
    """The policy ``name`` (default ``simulation.policy``): ``learned`` loads ``model_path``,
    the classical ones are configured from params."""
    sim = params.simulation
    name = name or sim.policy
    if name == "learned":
        from aitimestepper.checkpoint import load_policy

        if model_path is None:
            raise ValueError("the learned policy needs a checkpoint path (--model)")
        return load_policy(model_path)
    return make_policy(name, energy_threshold=params.energy_threshold, fixed_dt=sim.fixed_dt, eta=sim.eta)


def run_simulation(params: Params, policy: TimeStepPolicy, progress=None) -> dict[str, Any]:
    """Integrate the stage's binaries for ``simulation.duration_periods`` periods.

    Returns:
        A JSON-ready dict: the policy, the threshold, a ``summary`` over systems and one
        entry per system (steps per orbit, gate pass rate, energy and momentum errors, dt).
    """
    elements = simulation_binaries(params)
    state = kepler_binary(elements, dim=params.physics.dim, softening=params.physics.softening)
    periods = elements.period
    started = time.perf_counter()
    result = rollout(
        state,
        policy,
        params.simulation.duration_periods * periods,
        energy_threshold=params.energy_threshold,
        max_steps=params.simulation.max_steps,
        progress=progress,
    )
    wall_time = time.perf_counter() - started
    systems = _per_system(result, elements, params.simulation.duration_periods)
    return {
        "policy": policy.name,
        "energy_threshold": params.energy_threshold,
        "duration_periods": params.simulation.duration_periods,
        "wall_time_s": wall_time,
        "summary": _summary(systems),
        "systems": systems,
    }


def write_simulation(
    params: Params, policy_name: str | None, output: Path, model_path: Path | None = None, progress=None
) -> dict[str, Any]:
    """Run the stage and write its metrics JSON atomically to ``output``."""
    metrics = run_simulation(params, policy_from_params(params, policy_name, model_path), progress=progress)
    write_json(output, metrics)
    return metrics


def _per_system(result: Rollout, elements: KeplerElements, duration_periods: float) -> list[dict[str, Any]]:
    steps = result.steps.double().clamp_min(1)
    columns = {
        "eccentricity": elements.eccentricity,
        "steps": result.steps,
        "steps_per_orbit": steps / duration_periods,
        "force_evaluations_per_orbit": steps / duration_periods,
        "gate_pass_rate": result.steps_passed / steps,
        "max_energy_error": result.max_energy_error,
        "final_energy_error": result.final_energy_error,
        "max_step_energy_error": result.max_step_error,
        "dt_min": result.dt_min,
        "dt_max": result.dt_max,
        "dt_mean": result.dt_mean,
        "momentum_drift": result.momentum_drift,
        "angular_momentum_drift": result.angular_momentum_drift,
        "reached_end": result.reached_end,
        "failed": result.failed,
    }
    return [{key: values[k].item() for key, values in columns.items()} for k in range(len(elements.eccentricity))]


def _summary(systems: list[dict[str, Any]]) -> dict[str, Any]:
    steps = sum(s["steps"] for s in systems)
    return {
        "systems": len(systems),
        "all_reached_end": all(s["reached_end"] for s in systems),
        "any_failed": any(s["failed"] for s in systems),
        "gate_pass_rate": sum(s["gate_pass_rate"] * s["steps"] for s in systems) / max(steps, 1),
        "mean_steps_per_orbit": sum(s["steps_per_orbit"] for s in systems) / len(systems),
        "max_energy_error": max(s["max_energy_error"] for s in systems),
    }
