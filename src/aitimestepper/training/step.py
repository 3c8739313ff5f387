"""One differentiable, NaN-safe gated step of a batch: the unit both training phases repeat."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aitimestepper.config import Params
from aitimestepper.features import Snapshot
from aitimestepper.history import History
from aitimestepper.model import LearnedPolicy
from aitimestepper.physics.integrator import step_energy_error
from aitimestepper.physics.state import State
from aitimestepper.training.loss import band_loss, shrink_loss


@dataclass(frozen=True)
class GatedStep:
    """The outcome of one step of each of B systems with the policy's dt.

    Attributes:
        dt: (B,) steps taken (detached).
        error: (B,) relative energy errors (detached; inf where non-finite).
        after: the states after the step (detached).
        seen: the snapshot of the states before the step (rows for their history windows,
            free-fall times).
        finite: (B,) bool, the step produced finite values.
        passed: (B,) bool, finite and error <= the system's threshold.
        loss: scalar mean loss over the batch, differentiable with respect to the network;
            finite by construction (non-finite systems only contribute a dt-halving term that
            does not pass through the physics).
    """

    dt: Tensor
    error: Tensor
    after: State
    seen: Snapshot
    finite: Tensor
    passed: Tensor
    loss: Tensor


def gated_step(
    policy: LearnedPolicy, state: State, history: History, energy_threshold: Tensor, params: Params
) -> GatedStep:
    """Predict dt for every system aimed at its threshold, take one leapfrog step, score the step
    against that threshold.

    Args:
        policy: the learned policy being trained.
        state, history: B systems and their snapshot windows.
        energy_threshold: (B,) float64 threshold of each system.
        params: the loss settings.
    """
    dt, look = policy.step_size(state, history, energy_threshold)
    after, error = step_energy_error(state, dt)
    finite = after.finite_mask() & error.isfinite()
    if bool(finite.all()):
        losses = _band(error, energy_threshold, params)
    else:  # redo the physics on the finite systems only, so no NaN enters the graph
        good = finite.nonzero().squeeze(1)
        _, good_error = step_energy_error(state.select(good), dt[good])
        losses = torch.cat(
            [
                _band(good_error, energy_threshold[good], params),
                shrink_loss(dt[~finite].log()),
            ]
        )
    error = error.detach()
    return GatedStep(
        dt=dt.detach(),
        error=error,
        after=after.detach(),
        seen=look,
        finite=finite,
        passed=finite & (error <= energy_threshold),
        loss=losses.mean(),
    )


def _band(error: Tensor, energy_threshold: Tensor, params: Params) -> Tensor:
    training = params.training
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
