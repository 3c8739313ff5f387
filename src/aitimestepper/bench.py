"""Throughput and memory benchmarks, measured side by side in one run (this machine is noisy).

- Simulation throughput: systems-steps per second of the same (compiled) rollout with the learned
  policy and with a fixed dt, for B in {1, 64, 1024} systems of N in {2, 3, 8} bodies; the
  learned policy's overhead is the ratio of the two times per step.
- Part 2 replay: one batched gated step over a minibatch vs the same math sample by sample.
- Training: wall time per epoch at the given params, and peak resident memory of training and of
  simulation, each measured in a child process of its own.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aitimestepper.config import Params
from aitimestepper.model import LearnedPolicy
from aitimestepper.physics.state import State
from aitimestepper.policies import FixedStep
from aitimestepper.rollout import rollout
from aitimestepper.systems.families import plummer_clusters

BATCH_SIZES = (1, 64, 1024)
BODY_COUNTS = (2, 3, 8)
STEPS = 40
REPEATS = 15


def _timed(work: Callable[[], Any], repeats: int = REPEATS) -> float:
    """Median wall time of ``repeats`` calls (after one warm-up call), seconds."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _timed_side_by_side(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[float, float]:
    """Median wall times of ``first`` and ``second``, their calls interleaved (after one warm-up
    call each) so that a slow spell of the machine hits both alike."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(REPEATS):
        for work, spent in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            work()
            spent.append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


def _systems(batch: int, bodies: int) -> State:
    """``batch`` softened 3-D Plummer clusters of ``bodies`` bodies (a binary for 2), seeded."""
    if bodies == 2:
        from aitimestepper.systems.families import binaries

        (group,) = binaries(batch, torch.Generator().manual_seed(7), dim=3)
        return group.state
    (group,) = plummer_clusters(
        batch, torch.Generator().manual_seed(7), dim=3, bodies=(bodies,), softening=(0.01, 0.01)
    )
    return group.state


def simulation_throughput(policy: LearnedPolicy) -> list[dict[str, float]]:
    """Learned vs fixed-dt rollouts of STEPS steps, for every (B, N)."""
    rows = []
    for bodies in BODY_COUNTS:
        for batch in BATCH_SIZES:
            state = _systems(batch, bodies)
            forever = torch.full((batch,), 1e30, dtype=torch.float64)
            fixed = FixedStep(1e-4)

            def run(chosen, state=state, forever=forever):
                return rollout(state, chosen, forever, energy_threshold=1.0, max_steps=STEPS)

            learned_time, fixed_time = _timed_side_by_side(
                lambda run=run: run(policy), lambda run=run, fixed=fixed: run(fixed)
            )
            rows.append(
                {
                    "batch": batch,
                    "bodies": bodies,
                    "learned_system_steps_per_s": batch * STEPS / learned_time,
                    "fixed_system_steps_per_s": batch * STEPS / fixed_time,
                    "learned_overhead": learned_time / fixed_time,
                }
            )
    return rows


def replay_speedup(policy: LearnedPolicy, params: Params, batch: int = 512) -> dict[str, float]:
    """One batched gated step (forward, physics, loss, backward) vs the same per sample."""
    from aitimestepper.training.step import gated_step

    state = _systems(batch, 2)
    history = policy.new_history(state)
    thresholds = torch.full((batch,), params.energy_threshold, dtype=torch.float64)

    def batched():
        gated_step(policy, state, history, thresholds, params)[1].backward()

    def per_sample():
        for k in range(batch):
            index = torch.tensor([k])
            gated_step(policy, state.select(index), history.select(index), thresholds[index], params)[1].backward()

    batched_time = _timed(batched)
    looped_time = _timed(per_sample, repeats=1)
    return {
        "batch": batch,
        "batched_s": batched_time,
        "per_sample_s": looped_time,
        "speedup": looped_time / batched_time,
    }


def _child_peak_rss(code: str) -> dict[str, float]:
    """Run ``code`` in a fresh interpreter; it defines a dict ``result``, which comes back with
    the child's own peak resident memory (MiB) added."""
    reporter = (
        "\nimport json, resource\n"
        "result['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps(result))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code + reporter], capture_output=True, text=True, check=True, timeout=3600
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def training_cost(params_path: Path, epochs: int) -> dict[str, float]:
    """Wall time per epoch (mean of epochs after the first) and peak memory of training."""
    code = f"""
import tempfile
from aitimestepper.config import load_params
from aitimestepper.training.trainer import train
params = load_params({str(params_path)!r}).model_copy(update={{"epochs": {epochs}}})
result = train(params, tempfile.mkdtemp())
times = [h["epoch_time_s"] for h in result.history]
result = {{"epochs": {epochs}, "epoch_time_s": sum(times[1:]) / max(len(times) - 1, 1)}}
"""
    return _child_peak_rss(code)


def simulation_memory(model: Path, batch: int = 1024, bodies: int = 8) -> dict[str, float]:
    """Peak memory of a learned-policy rollout of B = 1024 systems of 8 bodies."""
    code = f"""
import torch
from aitimestepper.bench import _systems, STEPS
from aitimestepper.checkpoint import load_policy
from aitimestepper.rollout import rollout
state = _systems({batch}, {bodies})
rollout(state, load_policy({str(model)!r}), torch.full(({batch},), 1e30, dtype=torch.float64),
        energy_threshold=1.0, max_steps=STEPS)
result = {{"batch": {batch}, "bodies": {bodies}, "steps": STEPS}}
"""
    return _child_peak_rss(code)


def run_benchmarks(params: Params, params_path: Path, model: Path, epochs: int = 4) -> dict[str, Any]:
    """Every benchmark, in one process run, with the machine described."""
    from aitimestepper.checkpoint import load_policy

    policy = load_policy(model)
    throughput = simulation_throughput(policy)
    return {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
        },
        "simulation_throughput": throughput,
        "learned_overhead_at_b1024": max(r["learned_overhead"] for r in throughput if r["batch"] == 1024),
        "replay": replay_speedup(policy, policy.params),
        "training": training_cost(params_path, epochs),
        "simulation_memory": simulation_memory(model),
    }
