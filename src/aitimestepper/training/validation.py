"""Validation systems of every training family: choose which snapshot of the training to keep.

``training.validation_systems`` systems per family of the mixture and dimension, drawn from their
own seed (``seed + VALIDATION_SEED_OFFSET``: disjoint from the training draws and from the
held-out suite's ``evaluation.seed``), embedded in 3-D and integrated ungated, by body count, for
``training.validation_duration`` time scales at ``energy_threshold`` and at the lowest training
threshold. The kept snapshot is the one whose worst family, judged by its worst system, passes
best (rates capped at 99.9%), then the one with the fewest steps (geometric mean of steps per
time scale over all validation systems, so no family's scale dominates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from aitimestepper.config import Params
from aitimestepper.model import LearnedPolicy
from aitimestepper.physics.state import State
from aitimestepper.rollout import rollout
from aitimestepper.systems.families import SystemSet
from aitimestepper.training.mixture import embed_in_3d

VALIDATION_SEED_OFFSET = 1_000_003
#: pass rates at or above this count as equal, so fewer steps decide between them
PASS_RATE_TARGET = 0.999
#: steps after which a validation run stops (its rates count over the time it covered): a system
#: in a deep encounter must not hold up the epoch
MAX_VALIDATION_STEPS = 3_000


@dataclass(frozen=True)
class ValidationSet:
    """Validation systems of one body count (3-D), with ``family`` (the mixture key) and
    ``time_scale`` (B,) per system."""

    state: State
    time_scale: Tensor
    family: list[str]


def validation_sets(params: Params) -> list[ValidationSet]:
    """The validation systems of every family of the mixture (weight > 0), by body count."""
    generator = torch.Generator().manual_seed(params.seed + VALIDATION_SEED_OFFSET)
    grouped: dict[int, list[tuple[str, SystemSet]]] = {}
    for name, component in params.systems.items():
        if component.weight == 0:
            continue
        for group in component.draw_all_dims(params.training.validation_systems, generator):
            grouped.setdefault(group.state.num_bodies, []).append((name, group))
    return [
        ValidationSet(
            state=State.concatenate([embed_in_3d(group.state) for _, group in parts]),
            time_scale=torch.cat([group.time_scale for _, group in parts]),
            family=[name for name, group in parts for _ in range(group.state.batch_size)],
        )
        for _, parts in sorted(grouped.items())
    ]


def validation_thresholds(params: Params) -> tuple[float, ...]:
    """The thresholds a model is validated at: ``energy_threshold``, and the lowest training
    threshold when the training range extends below it."""
    lowest = params.energy_threshold * params.training.threshold_factor_min
    return (params.energy_threshold,) if lowest == params.energy_threshold else (params.energy_threshold, lowest)


def validate(policy: LearnedPolicy, params: Params, sets: list[ValidationSet]) -> dict[str, float]:
    """Ungated rollouts of the validation systems at every threshold of :func:`validation_thresholds`.

    Returns:
        ``pass_rate`` (all steps), ``worst_pass_rate`` (the lowest of one system),
        ``worst_family_pass_rate`` (the family whose worst system is lowest: the selection key),
        ``steps_per_time_scale`` (geometric mean over systems), ``max_step_error`` (over the
        threshold), and per family ``<family>/worst_pass_rate`` and ``<family>/steps_per_time_scale``.
    """
    duration = params.training.validation_duration
    levels = validation_thresholds(params)
    passed, steps, rows, families, worst_error = [], [], [], [], 0.0
    for chosen in sets:
        count = chosen.state.batch_size
        thresholds = torch.tensor(levels, dtype=torch.float64).repeat_interleave(count)
        time_scale = chosen.time_scale.repeat(len(levels))
        result = rollout(
            State.concatenate([chosen.state] * len(levels)),
            policy.at_threshold(thresholds),
            duration * time_scale,
            energy_threshold=thresholds,
            max_steps=MAX_VALIDATION_STEPS,
        )
        taken = result.steps.double()
        elapsed = (result.final_state.time / time_scale).clamp_min(1e-12)
        rate = torch.where(result.failed, torch.zeros_like(taken), result.steps_passed / taken.clamp_min(1))
        passed.append(result.steps_passed.double())
        steps.append(taken)
        rows.append(torch.stack([rate, (taken.clamp_min(1) / elapsed).log()], dim=1))  # pass rate, log steps
        families += chosen.family * len(levels)
        worst_error = max(worst_error, float((result.max_step_error / thresholds).max()))
    table = torch.cat(rows)
    metrics = {
        "pass_rate": float(torch.cat(passed).sum() / torch.cat(steps).sum().clamp_min(1)),
        "worst_pass_rate": float(table[:, 0].min()),
        "steps_per_time_scale": math.exp(float(table[:, 1].mean())),
        "max_step_error": worst_error,
    }
    worst_family = 1.0
    for family in dict.fromkeys(families):
        rows = torch.tensor([name == family for name in families])
        metrics[f"{family}/worst_pass_rate"] = float(table[rows, 0].min())
        metrics[f"{family}/steps_per_time_scale"] = math.exp(float(table[rows, 1].mean()))
        worst_family = min(worst_family, min(metrics[f"{family}/worst_pass_rate"], PASS_RATE_TARGET))
    metrics["worst_family_pass_rate"] = worst_family
    return metrics


def score(metrics: dict[str, float]) -> tuple[float, float]:
    """Sort key, larger is better: the worst family's worst system's pass rate (capped at the
    target), then fewer steps."""
    return (min(metrics["worst_family_pass_rate"], PASS_RATE_TARGET), -metrics["steps_per_time_scale"])
