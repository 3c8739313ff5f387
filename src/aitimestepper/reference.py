"""REBOUND, the reference N-body code, on the project's systems: for benchmarks and tests only.

REBOUND (a development dependency, ``pip install -e '.[dev]'``) integrates one system at a time
in C: its ``leapfrog`` (drift-kick-drift, one force evaluation per step, a fixed dt) is the speed
a time-step policy has to be measured against, and ``ias15`` (15th order, adaptive) the accuracy.
"""

from __future__ import annotations

import time
from typing import Any

from aitimestepper.physics.state import State


def _rebound():
    try:
        import rebound
    except ImportError as error:  # a benchmark or test dependency, not a runtime one
        raise ImportError("REBOUND is a development dependency: pip install -e '.[dev]'") from error
    return rebound


def simulation(state: State, system: int, integrator: str, dt: float | None = None) -> Any:
    """A ``rebound.Simulation`` of system ``system`` of ``state`` (G = 1, its softening, its time),
    with ``integrator`` (``leapfrog`` needs ``dt``)."""
    rebound = _rebound()
    sim = rebound.Simulation()
    sim.G = 1.0
    sim.softening = float(state.softening[system])
    sim.t = float(state.time[system])
    dim = state.dim
    for mass, position, velocity in zip(
        state.masses[system].tolist(), state.positions[system].tolist(), state.velocities[system].tolist(), strict=True
    ):
        coordinates = dict(zip(("x", "y", "z")[:dim], position, strict=True))
        coordinates |= dict(zip(("vx", "vy", "vz")[:dim], velocity, strict=True))
        sim.add(m=mass, **coordinates)
    sim.integrator = integrator
    if dt is not None:
        sim.dt = dt
    return sim


def steps_per_second(state: State, integrator: str, steps: int, dt: float | None = None, repeats: int = 3) -> float:
    """REBOUND's steps per second on system 0 of ``state``: the best of ``repeats`` runs of
    ``steps`` steps, each from the start."""
    best = float("inf")
    for _ in range(repeats):
        sim = simulation(state, 0, integrator, dt)
        started = time.perf_counter()
        sim.steps(steps)
        best = min(best, time.perf_counter() - started)
    return steps / best


def positions_at(state: State, system: int, end_time: float, integrator: str = "ias15", dt: float | None = None):
    """Positions (N, D) of system ``system`` at ``end_time``, integrated by REBOUND (IAS15 by
    default: accurate to round-off over a few orbits); float64 nested lists."""
    sim = simulation(state, system, integrator, dt)
    if integrator == "ias15":
        sim.integrate(end_time, exact_finish_time=1)
    else:
        sim.steps(round((end_time - sim.t) / dt))
    dim = state.dim
    return [list(particle.xyz)[:dim] for particle in sim.particles]
