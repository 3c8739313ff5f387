"""Simulation: integrate systems with any policy and report metrics, a trajectory and plots.

Systems come from an initial-conditions file or from ``simulation.systems`` (a family spec of
:mod:`aitimestepper.systems`, drawn from ``seed``). Policies come from a checkpoint path, an
MLflow model URI (``models:/name@alias``, ``runs:/...``) or a classical policy name; a learned
policy is rebuilt from its config contract alone and uses its own ``energy_threshold``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aitimestepper.atomic import write_atomic, write_json
from aitimestepper.config import HostParams, MovieParams, Params
from aitimestepper.model import LearnedPolicy
from aitimestepper.physics.external import TidalField
from aitimestepper.physics.state import State
from aitimestepper.policies import CLASSICAL_POLICIES, TimeStepPolicy, make_policy
from aitimestepper.rollout import Rollout, rollout
from aitimestepper.systems.families import SystemSet, crossing_time
from aitimestepper.systems.files import load_systems

#: the stream of the simulate stage's draws from ``seed`` (training draws use the seed itself)
SIMULATION_SEED_OFFSET = 2_000_003


def simulation_systems(params: Params) -> list[SystemSet]:
    """The systems of ``simulation.systems``, drawn from ``seed``, one set per (N, D), in the tidal
    field of ``physics.external`` if it is set."""
    generator = torch.Generator().manual_seed(params.seed + SIMULATION_SEED_OFFSET)
    entry = params.simulation.systems
    sets = entry.draw_all_dims(entry.systems, generator)
    host = params.physics.external
    if host is None:
        return sets
    return [replace(systems, state=_in_field(systems.state, host)) for systems in sets]


def _in_field(state: State, host: HostParams) -> State:
    """``state`` in the host's field (its accelerations and energy with it)."""
    field = TidalField.build(
        torch.full((state.batch_size,), host.host_mass, dtype=torch.float64),
        torch.tensor(host.host_position, dtype=torch.float64).expand(state.batch_size, -1),
        host.orbit,
        host.softening,
    )
    return State.from_arrays(state.positions, state.velocities, state.masses, state.softening, external=field)


def file_systems(path: Path) -> SystemSet:
    """The systems of an initial-conditions file, their time scale the crossing time."""
    state = load_systems(path)
    labels = [{"family": "file", "file": str(path), "index": k} for k in range(state.batch_size)]
    return SystemSet("file", state, crossing_time(state), labels)


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
    systems: SystemSet,
    *,
    energy_threshold: float,
    end_time: torch.Tensor,
    max_steps: int,
    gated: bool = False,
    record: bool = False,
    progress=None,
) -> tuple[dict[str, Any], Rollout]:
    """Integrate ``systems`` until ``end_time`` (B,) and summarise per system and overall; costs
    are per time scale of each system.

    Returns:
        (JSON-ready metrics, the raw rollout).
    """
    started = time.perf_counter()
    result = rollout(
        systems.state,
        policy,
        end_time,
        energy_threshold=energy_threshold,
        max_steps=max_steps,
        gated=gated,
        record=record,
        progress=progress,
    )
    wall_time = time.perf_counter() - started
    rows = _per_system(result, systems)
    metrics = {
        "policy": policy.name,
        "gated": gated,
        "energy_threshold": energy_threshold,
        "tidal_field": _field_kind(systems.state),
        "wall_time_s": wall_time,
        "summary": _summary(rows, wall_time),
        "systems": rows,
    }
    return metrics, result


def _field_kind(state) -> str | None:
    """The host's orbit when the systems feel a tidal field (the energies and errors reported are
    then the conserved quantity's, see :mod:`aitimestepper.physics.external`), else None."""
    if state.external is None or not bool(state.external.present.any()):
        return None
    rotations = state.external.rotation[state.external.present].tolist()
    orbits = {"circular" if rotation > 0 else "static" for rotation in rotations}
    return orbits.pop() if len(orbits) == 1 else "static+circular"


def simulate_from_params(
    params: Params,
    policy_source: str | Path,
    *,
    ics: Path | None = None,
    time_scales: float | None = None,
    duration: float | None = None,
    gated: bool = False,
    energy_threshold: float | None = None,
    eta: float | None = None,
    record: bool = True,
    progress=None,
) -> list[tuple[dict[str, Any], Rollout]]:
    """The simulation stage: systems from ``ics`` (or ``simulation.systems``), for ``duration``
    time units or ``time_scales`` time scales (default ``simulation.systems.duration``), gated
    (and, for policies that read one, aimed) at ``energy_threshold`` (default: :func:`threshold_of`).

    Returns:
        One (metrics, rollout) per group of systems of equal N and D.
    """
    if eta is not None:
        params = params.model_copy(update={"simulation": params.simulation.model_copy(update={"eta": eta})})
    policy = load_any_policy(policy_source, params)
    if energy_threshold is None:
        energy_threshold = threshold_of(policy, params)
    else:
        policy = policy.at_threshold(energy_threshold)
    groups = [file_systems(ics)] if ics is not None else simulation_systems(params)
    outputs = []
    for systems in groups:
        if duration is not None:
            end_time = torch.full((systems.state.batch_size,), float(duration), dtype=torch.float64)
        else:
            end_time = (time_scales or params.simulation.systems.duration) * systems.time_scale
        metrics, result = run_simulation(
            policy,
            systems,
            energy_threshold=energy_threshold,
            end_time=end_time,
            max_steps=params.simulation.max_steps,
            gated=gated,
            record=record,
            progress=progress,
        )
        metrics["source"] = str(policy_source)
        outputs.append((metrics, result))
    return outputs


def write_outputs(
    outputs: list[tuple[dict[str, Any], Rollout]],
    output: Path,
    trajectory: Path | None,
    plots_dir: Path | None,
    movie: MovieParams | None = None,
) -> dict[str, Any]:
    """Metrics JSON (one summary over every group), trajectory NPZ, plots and (``movie``) movies
    of the first ``movie.systems`` systems of each group in ``plots_dir/movies``, each written
    atomically. With several groups of systems (different N or D) the trajectory arrays are
    prefixed ``group<k>_`` and each group's plots and movies go to ``plots_dir/group<k>``."""
    merged = _merged([metrics for metrics, _ in outputs])
    write_json(output, merged)
    several = len(outputs) > 1
    arrays = {}
    for k, (metrics, result) in enumerate(outputs):
        if result.trajectory is None:
            continue
        prefix = f"group{k}_" if several else ""
        arrays.update(
            {
                f"{prefix}time": result.trajectory.time.numpy(),
                f"{prefix}dt": result.trajectory.dt.numpy(),
                f"{prefix}energy_error": result.trajectory.energy_error.numpy(),
                f"{prefix}positions": result.trajectory.positions.numpy(),
                f"{prefix}masses": result.final_state.masses.numpy(),
            }
        )
        if plots_dir is not None:
            from aitimestepper.plots import simulation_plots

            directory = Path(plots_dir) / f"group{k}" if several else Path(plots_dir)
            masses = result.final_state.masses
            title = run_title(metrics)
            simulation_plots(result.trajectory, masses, metrics["systems"], directory, title=title)
            if movie is not None and movie.systems > 0:
                write_movies(result, metrics, directory / "movies", movie)
    if arrays and trajectory is not None:

        def save(tmp: Path) -> None:
            with tmp.open("wb") as handle:  # a file object: numpy would append .npz to a name
                np.savez_compressed(handle, **arrays)

        write_atomic(Path(trajectory), save)
    return merged


def run_title(metrics: dict[str, Any]) -> str:
    """What a simulation shows, in words (never a path): 'learned policy, ungated, threshold
    0.0002 on 4 hierarchical_triple systems of 3 bodies in 3-D'."""
    from aitimestepper.plots import policy_title

    rows = metrics["systems"]
    families = "+".join(dict.fromkeys(str(row.get("family", "file")) for row in rows))
    shape = f"{rows[0]['num_bodies']} bodies in {rows[0]['dim']}-D" if rows else ""
    policy = policy_title(metrics["policy"], metrics["gated"], metrics["energy_threshold"])
    return f"{policy} on {len(rows)} {families} systems of {shape}"


def write_movies(result: Rollout, metrics: dict[str, Any], directory: Path, movie: MovieParams) -> list[Path]:
    """``system<k>.gif`` of the first ``movie.systems`` systems of a recorded rollout; returns
    their paths."""
    from aitimestepper.movies import MovieData, write_movie
    from aitimestepper.plots import policy_title, system_name

    policy = policy_title(metrics["policy"], metrics["gated"], metrics["energy_threshold"])
    paths = []
    for k in range(min(movie.systems, result.final_state.batch_size)):
        data = MovieData.of(result.trajectory, result.final_state.masses, k)
        path = Path(directory) / f"system{k}.gif"
        write_movie(data, path, f"{policy}: {system_name(metrics['systems'][k], k)}", movie.frames, movie.fps)
        paths.append(path)
    return paths


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One metrics dict over the groups of a simulation."""
    first = parts[0]
    rows = [row for part in parts for row in part["systems"]]
    wall_time = sum(part["wall_time_s"] for part in parts)
    return {**first, "wall_time_s": wall_time, "summary": _summary(rows, wall_time), "systems": rows}


def _per_system(result: Rollout, systems: SystemSet) -> list[dict[str, Any]]:
    state = systems.state
    steps = result.steps.double().clamp_min(1)
    elapsed = (result.final_state.time / systems.time_scale).clamp_min(torch.finfo(torch.float64).tiny)
    columns = {
        "num_bodies": torch.full_like(result.steps, state.num_bodies),
        "dim": torch.full_like(result.steps, state.dim),
        "time_scale": systems.time_scale,
        "time_scales_simulated": elapsed,
        "steps": result.steps,
        "force_evaluations": result.force_evaluations,
        "steps_per_time_scale": result.steps.double() / elapsed,
        "force_evaluations_per_time_scale": result.force_evaluations.double() / elapsed,
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
        "hit_step_cap": result.hit_step_cap,
    }
    return [
        {**systems.labels[k], **{key: values[k].item() for key, values in columns.items()}}
        for k in range(state.batch_size)
    ]


def _summary(systems: list[dict[str, Any]], wall_time: float) -> dict[str, Any]:
    steps = sum(s["steps"] for s in systems)
    return {
        "systems": len(systems),
        "all_reached_end": all(s["reached_end"] for s in systems),
        "any_failed": any(s["failed"] for s in systems),
        "systems_at_step_cap": sum(s["hit_step_cap"] for s in systems),
        "gate_pass_rate": sum(s["gate_pass_rate"] * s["steps"] for s in systems) / max(steps, 1),
        "mean_steps_per_time_scale": sum(s["steps_per_time_scale"] for s in systems) / len(systems),
        "mean_force_evaluations_per_time_scale": sum(s["force_evaluations_per_time_scale"] for s in systems)
        / len(systems),
        "max_energy_error": max(s["max_energy_error"] for s in systems),
        "max_step_energy_error": max(s["max_step_energy_error"] for s in systems),
        "max_momentum_drift": max(s["momentum_drift"] for s in systems),
        "steps_per_second": steps / max(wall_time, 1e-9),
    }
