"""Throughput and memory benchmarks, measured side by side in one run (this machine is noisy).

- One system: steps per second of one system of N in {2, 3, 8, 32} bodies over ``SINGLE_STEPS``
  steps (long enough that the cost of a call is paid once) with a fixed dt, the free-fall rule,
  the energy-feedback controller (gated) and the learned policy, interleaved, and REBOUND's
  leapfrog (C, a fixed dt) and IAS15 on the same system as the reference.
- Batches: system-steps per second of B in {64, 1024, 4096} systems of N in {2, 3, 8} bodies
  with the learned policy and a fixed dt, interleaved.
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

from aitimestepper import reference
from aitimestepper.config import Params
from aitimestepper.model import LearnedPolicy
from aitimestepper.physics.state import State
from aitimestepper.policies import EnergyFeedback, FixedStep, FreeFall
from aitimestepper.rollout import rollout
from aitimestepper.systems.families import plummer_clusters

SINGLE_BODY_COUNTS = (2, 3, 8, 32)
SINGLE_STEPS = 2_000
#: REBOUND runs many more steps per timing (it is thousands of times faster per step)
REFERENCE_STEPS = 200_000
BATCH_SIZES = (64, 1024, 4096)
BATCH_BODY_COUNTS = (2, 3, 8)
BATCH_STEPS = 40
REPEATS = 15
#: the threshold of the benchmark's gated controller and of the learned policy's aim
THRESHOLD = 2e-4
#: a fixed dt small against every benchmark system's time scale (its cost does not depend on it)
FIXED_DT = 1e-4


def _timed(work: Callable[[], Any], repeats: int = REPEATS) -> float:
    """Median wall time of ``repeats`` calls (after one warm-up call), seconds."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _timed_side_by_side(works: dict[str, Callable[[], Any]], repeats: int = REPEATS) -> dict[str, float]:
    """Median wall time of each of ``works``, their calls interleaved (after one warm-up call
    each) so that a slow spell of the machine hits them alike."""
    for work in works.values():
        work()
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            started = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(spent) for name, spent in times.items()}


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


def _contenders(learned: LearnedPolicy) -> dict[str, tuple]:
    """name -> (policy, gated) of the one-system benchmark."""
    return {
        "fixed": (FixedStep(FIXED_DT), False),
        "free_fall": (FreeFall(0.05), False),
        "controller": (EnergyFeedback(THRESHOLD), True),
        "learned": (learned.at_threshold(THRESHOLD), False),
    }


def single_system_rates(policy: LearnedPolicy) -> list[dict[str, float]]:
    """Steps per second of one system, per N: every contender over ``SINGLE_STEPS`` steps
    (interleaved, 3 repeats), REBOUND's leapfrog and IAS15 over ``REFERENCE_STEPS``; and the
    learned policy's share of REBOUND leapfrog's rate."""
    rows = []
    forever = torch.full((1,), 1e30, dtype=torch.float64)
    for bodies in SINGLE_BODY_COUNTS:
        state = _systems(1, bodies)
        works, steps = {}, {}
        for name, (chosen, gated) in _contenders(policy).items():

            def work(chosen=chosen, gated=gated, name=name, state=state, steps=steps):
                done = rollout(state, chosen, forever, energy_threshold=THRESHOLD, max_steps=SINGLE_STEPS, gated=gated)
                steps[name] = int(done.steps.sum())

            works[name] = work
        seconds = _timed_side_by_side(works, repeats=3)
        row: dict[str, float] = {"bodies": bodies, "steps": SINGLE_STEPS}
        row |= {f"{name}_steps_per_s": steps[name] / spent for name, spent in seconds.items()}
        row["rebound_leapfrog_steps_per_s"] = reference.steps_per_second(state, "leapfrog", REFERENCE_STEPS, FIXED_DT)
        row["rebound_ias15_steps_per_s"] = reference.steps_per_second(state, "ias15", REFERENCE_STEPS // 10)
        row["learned_over_rebound_leapfrog"] = row["learned_steps_per_s"] / row["rebound_leapfrog_steps_per_s"]
        rows.append(row)
    return rows


def batch_throughput(policy: LearnedPolicy) -> list[dict[str, float]]:
    """Learned vs fixed-dt rollouts of BATCH_STEPS steps, for every (B, N) (engine ``auto``)."""
    rows = []
    learned = policy.at_threshold(THRESHOLD)
    for bodies in BATCH_BODY_COUNTS:
        for batch in BATCH_SIZES:
            state = _systems(batch, bodies)
            forever = torch.full((batch,), 1e30, dtype=torch.float64)

            def run(chosen, state=state, forever=forever):
                return rollout(state, chosen, forever, energy_threshold=THRESHOLD, max_steps=BATCH_STEPS)

            seconds = _timed_side_by_side(
                {"learned": lambda run=run: run(learned), "fixed": lambda run=run: run(FixedStep(FIXED_DT))},
                repeats=5 if batch > 1024 else REPEATS,
            )
            rows.append(
                {
                    "batch": batch,
                    "bodies": bodies,
                    "learned_system_steps_per_s": batch * BATCH_STEPS / seconds["learned"],
                    "fixed_system_steps_per_s": batch * BATCH_STEPS / seconds["fixed"],
                    "learned_overhead": seconds["learned"] / seconds["fixed"],
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
from aitimestepper.bench import _systems, BATCH_STEPS
from aitimestepper.checkpoint import load_policy
from aitimestepper.rollout import rollout
state = _systems({batch}, {bodies})
rollout(state, load_policy({str(model)!r}), torch.full(({batch},), 1e30, dtype=torch.float64),
        energy_threshold=1.0, max_steps=BATCH_STEPS)
result = {{"batch": {batch}, "bodies": {bodies}, "steps": BATCH_STEPS}}
"""
    return _child_peak_rss(code)


def run_benchmarks(params: Params, params_path: Path, model: Path, epochs: int = 4) -> dict[str, Any]:
    """Every benchmark, in one process run, with the machine described."""
    from aitimestepper.checkpoint import load_policy

    policy = load_policy(model)
    single = single_system_rates(policy)
    batches = batch_throughput(policy)
    return {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
        },
        "single_system": single,
        "batch_throughput": batches,
        "learned_over_rebound_leapfrog_n3": next(
            r["learned_over_rebound_leapfrog"] for r in single if r["bodies"] == 3
        ),
        "learned_overhead_at_b1024": max(r["learned_overhead"] for r in batches if r["batch"] == 1024),
        "replay": replay_speedup(policy, policy.params),
        "training": training_cost(params_path, epochs),
        "simulation_memory": simulation_memory(model),
    }
