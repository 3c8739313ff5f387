"""Part 2: train on random minibatches of collected states until a whole minibatch passes."""

from __future__ import annotations

import torch

from aitimestepper.config import Params
from aitimestepper.model import LearnedPolicy
from aitimestepper.training.buffer import ReplayBuffer
from aitimestepper.training.sampler import draw_thresholds
from aitimestepper.training.step import gated_step, optimizer_step


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
        return {"converged": 0.0, "iterations": 0.0, "pass_rate": float("nan"), "loss_mean": float("nan")}
    converged, iterations, skipped, loss_total = False, 0, 0, 0.0
    for iterations in range(1, training.replay_steps + 1):  # noqa: B007 (iterations is reported)
        state, history = buffer.sample(training.replay_batch_size, generator)
        thresholds = draw_thresholds(params, training.replay_batch_size, generator)
        outcome = gated_step(policy, state, history, thresholds, params)
        fractions = outcome.error / thresholds
        loss_total += float(outcome.loss.detach())
        if bool(outcome.passed.all()) and iterations >= training.replay_min_steps:
            converged = True
            break
        skipped += not optimizer_step(outcome.loss, optimizer, policy.network.parameters(), training.grad_clip)
    finite_fractions = fractions[outcome.finite]
    return {
        "converged": float(converged),
        "iterations": float(iterations),
        "pass_rate": float(outcome.passed.double().mean()),
        "error_over_threshold_mean": float(finite_fractions.mean()) if finite_fractions.numel() else float("inf"),
        "error_over_threshold_max": float(fractions.max()),
        "loss_mean": loss_total / iterations,
        "skipped_updates": float(skipped),
    }
