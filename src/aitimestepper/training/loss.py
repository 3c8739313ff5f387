"""The training losses of a step's relative energy error: the band loss (push the error into a
band below the threshold) and the quantile loss (the largest step that a given share of steps
passes)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

_FLOOR = 1e-300


def band_loss(
    error: Tensor,
    energy_threshold: float | Tensor,
    band_lower: float,
    band_upper: float,
    below_weight: float = 1.0,
    failure_weight: float = 0.0,
) -> Tensor:
    """Per-sample squared distance, in log space, of the energy error from the band, plus a
    linear penalty on failing the gate.

    The band is [band_lower, band_upper] x energy_threshold. Above it the loss shrinks dt, below
    it the loss grows dt (the efficiency lever: a step far under the threshold is wasted work),
    inside it the loss is zero. A step over the threshold costs ``failure_weight`` times its
    log excess on top: without it a barely failing step would cost less than a cautious one
    (the squared distance from the band is small near its upper edge), and a network that cannot
    fit every state would settle with a share of its steps failing.

    Args:
        error: (B,) relative energy errors of one step each, finite, >= 0, differentiable.
        energy_threshold: the gate, in (0, 1): one for all samples or (B,), one per sample.
        band_lower, band_upper: band edges as fractions of the threshold, lower < upper <= 1.
        below_weight: weight of the below-band term. Below 1 the loss is asymmetric: a step
            that fails costs more than one that is too cautious, so a network that cannot
            resolve every state settles on the safe side of the band.
        failure_weight: slope, per unit of log(error / threshold), of the failure penalty.

    Returns:
        (B,) losses, >= 0.
    """
    log_error = (error + _FLOOR).log()
    threshold = torch.as_tensor(energy_threshold, dtype=error.dtype).log()
    upper = threshold + math.log(band_upper)
    lower = threshold + math.log(band_lower)
    return (
        (log_error - upper).relu().square()
        + below_weight * (lower - log_error).relu().square()
        + failure_weight * (log_error - threshold).relu()
    )


def quantile_loss(error: Tensor, energy_threshold: float | Tensor, pass_rate: float) -> Tensor:
    """Per-sample pinball loss in log error: relu(log(thr / e)) + p / (1 - p) relu(log(e / thr)).

    With u = log(e / thr) growing as 3 log dt, its minimum over dt puts the threshold at the
    ``pass_rate`` quantile of the errors a state's features cannot tell apart: states the network
    resolves exactly are stepped up to the gate, states it cannot resolve are stepped back until
    only 1 - ``pass_rate`` of them fail. Below the gate the loss is log(thr / e), three times
    log(edge / dt): the cost of a too-short step, to first order.

    Args:
        error: (B,) relative energy errors of one step each, finite, >= 0, differentiable.
        energy_threshold: the gate, one for all samples or (B,).
        pass_rate: p in (0, 1), the share of steps that should pass.

    Returns:
        (B,) losses, >= 0.
    """
    log_ratio = (error + _FLOOR).log() - torch.as_tensor(energy_threshold, dtype=error.dtype).log()
    return (-log_ratio).relu() + pass_rate / (1.0 - pass_rate) * log_ratio.relu()


def shrink_loss(log_dt: Tensor) -> Tensor:
    """Per-sample loss for steps that produced NaN/inf: halve dt (no gradient through physics)."""
    target = log_dt.detach() - torch.log(torch.tensor(2.0, dtype=log_dt.dtype))
    return (log_dt - target).square()
