"""The project's physics against REBOUND (the reference N-body code, IAS15 accurate to round-off):
the same gravity and softening, and a kick-drift-kick leapfrog that converges at second order."""

from __future__ import annotations

import pytest
import torch

from aitimestepper.policies import FixedStep
from aitimestepper.reference import positions_at
from aitimestepper.rollout import rollout
from aitimestepper.systems.families import binaries, plummer_clusters


def leapfrog_positions(state, end_time: float, dt: float) -> torch.Tensor:
    """Positions (B, N, D) at ``end_time`` after fixed steps of ``dt`` (the torch reference path)."""
    ends = torch.full((state.batch_size,), end_time, dtype=torch.float64)
    done = rollout(state, FixedStep(dt), ends, energy_threshold=1.0, max_steps=10**6, engine="torch")
    assert done.reached_end.all()
    return done.final_state.positions


@pytest.mark.parametrize("dim", [2, 3])
def test_softened_clusters_follow_rebound_to_second_order(dim):
    """Four bodies, softened: halving dt divides the distance to IAS15's positions by about 4,
    and at dt = 1e-3 it is below 1e-5 (measured 1.6e-6: the same forces, softening included)."""
    (group,) = plummer_clusters(2, torch.Generator().manual_seed(3), dim=dim, bodies=(4,), softening=(0.05, 0.05))
    state, end = group.state, 0.5
    truth = torch.tensor([positions_at(state, k, end) for k in range(state.batch_size)], dtype=torch.float64)
    coarse = (leapfrog_positions(state, end, 2e-3) - truth).abs().max().item()
    fine = (leapfrog_positions(state, end, 1e-3) - truth).abs().max().item()
    assert fine < 1e-5
    assert 3.5 < coarse / fine < 4.5


def test_an_eccentric_binary_over_one_period_agrees_with_rebounds_own_leapfrog():
    """A binary (e = 0.6) over one period: REBOUND's leapfrog (drift-kick-drift) and this one
    (kick-drift-kick) at the same dt both land within their second-order error of IAS15."""
    (group,) = binaries(1, torch.Generator().manual_seed(5), dim=3, eccentricity=(0.6, 0.6))
    state, period = group.state, group.time_scale[0].item()
    dt = period / 4000
    truth = torch.tensor(positions_at(state, 0, period), dtype=torch.float64)
    theirs = torch.tensor(positions_at(state, 0, period, integrator="leapfrog", dt=dt), dtype=torch.float64)
    ours = leapfrog_positions(state, period, dt)[0]
    their_error, our_error = (theirs - truth).abs().max().item(), (ours - truth).abs().max().item()
    assert 1e-6 < our_error < 1e-3 and 1e-6 < their_error < 1e-3
    assert 0.1 < our_error / their_error < 10
