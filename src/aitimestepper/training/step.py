"""One differentiable, NaN-safe gated step of a batch: the unit both training phases repeat."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aitimestepper.config import Params
from aitimestepper.features import PairLook
from aitimestepper.history import History
from aitimestepper.model import LearnedPolicy
from aitimestepper.physics.integrator import step_energy_error
from aitimestepper.physics.state import State
from aitimestepper.training.loss import band_loss, quantile_loss, shrink_loss


@dataclass(frozen=True)
class GatedStep:
    """The outcome of one step of each of B systems (of one body count) with the policy's dt.

    Attributes:
        dt: (B,) steps taken (detached).
        error: (B,) relative energy errors (detached; inf where non-finite).
        after: the states after the step (detached).
        seen: the policy's look at the states before the step (rows for their history windows).
        finite: (B,) bool, the step produced finite values.
        passed: (B,) bool, finite and error <= the system's threshold.
        losses: (B,) per-system losses, differentiable with respect to the network; finite by
            construction (non-finite systems only contribute a dt-halving term that does not pass
            through the physics).
    """

    dt: Tensor
    error: Tensor
    after: State
    seen: PairLook
    finite: Tensor
    passed: Tensor
    losses: Tensor


def gated_steps(
    policy: LearnedPolicy,
    states: list[State],
    histories: list[History],
    thresholds: list[Tensor],
    params: Params,
) -> tuple[list[GatedStep], Tensor]:
    """Predict dt for the systems of every batch (one network call), each aimed at its threshold,
    take one leapfrog step per system and score it against that threshold.

    Args:
        policy: the learned policy being trained.
        states, histories: batches of systems (one body count each) and their windows.
        thresholds: (B_g,) float64 threshold of each system of each batch.
        params: the loss settings.

    Returns:
        One :class:`GatedStep` per batch, and the mean loss over all systems (a scalar).
    """
    looks = [policy.look(state) for state in states]
    steps = policy.steps_from_looks(looks, histories, torch.cat(thresholds))
    outcomes = [
        _scored(state, dt, seen, threshold, params)
        for state, dt, seen, threshold in zip(states, steps, looks, thresholds, strict=True)
    ]
    return outcomes, torch.cat([outcome.losses for outcome in outcomes]).mean()


def gated_step(
    policy: LearnedPolicy, state: State, history: History, energy_threshold: Tensor, params: Params
) -> tuple[GatedStep, Tensor]:
    """:func:`gated_steps` of a single batch."""
    outcomes, loss = gated_steps(policy, [state], [history], [energy_threshold], params)
    return outcomes[0], loss


def _scored(state: State, dt: Tensor, seen: PairLook, energy_threshold: Tensor, params: Params) -> GatedStep:
    after, error = step_energy_error(state, dt)
    finite = after.finite_mask() & error.isfinite()
    if bool(finite.all()):
        losses = _band(error, energy_threshold, params)
    else:  # redo the physics on the finite systems only, so no NaN enters the graph
        good = finite.nonzero().squeeze(1)
        _, good_error = step_energy_error(state.select(good), dt[good])
        losses = torch.zeros_like(dt)
        losses = losses.index_put((good,), _band(good_error, energy_threshold[good], params))
        bad = (~finite).nonzero().squeeze(1)
        losses = losses.index_put((bad,), shrink_loss(dt[bad].log()))
    error = error.detach()
    return GatedStep(
        dt=dt.detach(),
        error=error,
        after=after.detach(),
        seen=seen,
        finite=finite,
        passed=finite & (error <= energy_threshold),
        losses=losses,
    )


def _band(error: Tensor, energy_threshold: Tensor, params: Params) -> Tensor:
    """The loss of ``training.loss`` on finite errors."""
    training = params.training
    if training.loss == "quantile":
        return quantile_loss(error, training.quantile_gate * energy_threshold, training.quantile_pass_rate)
    return band_loss(
        error,
        energy_threshold,
        training.band_lower,
        training.band_upper,
        training.below_band_weight,
        training.failure_weight,
    )


def optimizer_step(loss: Tensor, optimizer: torch.optim.Optimizer, parameters, grad_clip: float) -> bool:
    """Backpropagate ``loss`` and step, unless a gradient is not finite (then skip and return False)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parameters = list(parameters)
    norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    if not bool(torch.isfinite(norm)):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True
