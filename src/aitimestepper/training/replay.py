"""Part 2: train on random minibatches of collected states until a whole minibatch passes."""

from __future__ import annotations

import torch

from aitimestepper.config import Params
from aitimestepper.model import LearnedPolicy
from aitimestepper.physics.state import State
from aitimestepper.training.buffer import ReplayBuffer
from aitimestepper.training.mixture import draw_thresholds
from aitimestepper.training.step import gated_steps, optimizer_step


def replay(
    policy: LearnedPolicy,
    optimizer: torch.optim.Optimizer,
    buffer: ReplayBuffer,
    params: Params,
    generator: torch.Generator,
) -> dict[str, float]:
    """Run Part 2 once.

    Each iteration draws ``replay_batch_size`` states (with their histories) and a fresh training
    threshold for each (a state collected at one threshold teaches the others), steps all of them
    in one batched pass and takes one optimizer step on the band loss of every sample (so dt is
    pushed up where the error is needlessly small, and down where it fails). It stops once a
    minibatch passes entirely after at least ``replay_min_steps`` iterations (converged), or after
    ``replay_steps`` iterations.

    Returns:
        ``part2/*`` metrics: converged (0/1), iterations, pass rate and energy errors (as fractions
        of each sample's threshold) of the last minibatch, mean loss, skipped (non-finite) updates.
    """
    training = params.training
    if len(buffer) == 0:
        return {"converged": 0.0, "iterations": 0.0, "pass_rate": 0.0, "loss_mean": 0.0}
    converged, iterations, skipped, loss_total = False, 0, 0, 0.0
    for iterations in range(1, training.replay_steps + 1):  # noqa: B007 (iterations is reported)
        batches = buffer.sample(training.replay_batch_size, generator)
        states, histories = [state for state, _ in batches], [history for _, history in batches]
        thresholds = draw_thresholds(params, training.replay_batch_size, generator)
        outcomes, loss = gated_steps(policy, states, histories, list(thresholds.split(_sizes(states))), params)
        loss_total += float(loss.detach())
        passed = torch.cat([outcome.passed for outcome in outcomes])
        if bool(passed.all()) and iterations >= training.replay_min_steps:
            converged = True
            break
        skipped += not optimizer_step(loss, optimizer, policy.network.parameters(), training.grad_clip)
    fractions = torch.cat([outcome.error for outcome in outcomes]) / thresholds
    finite = torch.cat([outcome.finite for outcome in outcomes])
    finite_fractions = fractions[finite]
    return {
        "converged": float(converged),
        "iterations": float(iterations),
        "pass_rate": float(passed.double().mean()),
        "error_over_threshold_mean": float(finite_fractions.mean()) if finite_fractions.numel() else 0.0,
        "error_over_threshold_max": float(finite_fractions.max()) if finite_fractions.numel() else 0.0,
        "non_finite": float((~finite).sum()),
        "loss_mean": loss_total / iterations,
        "skipped_updates": float(skipped),
    }


def _sizes(states: list[State]) -> list[int]:
    return [state.batch_size for state in states]
