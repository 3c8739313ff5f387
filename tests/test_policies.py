"""The classical time-step policies: fixed dt, free-fall, energy-normalised free-fall, PRS23, the
energy-feedback controller and the greedy oracle, against analytic binaries and the gate."""

from __future__ import annotations

import math
import re

import pytest
import torch

from aitimestepper.history import History
from aitimestepper.model import LearnedPolicy, build_network
from aitimestepper.physics.integrator import leapfrog_step, step_energy_error
from aitimestepper.physics.state import State
from aitimestepper.policies import (
    CLASSICAL_POLICIES,
    PRS23,
    EnergyFeedback,
    EnergyFreeFall,
    FixedStep,
    FreeFall,
    Oracle,
    make_policy,
    pairwise_passes_per_step,
)
from aitimestepper.rollout import rollout
from aitimestepper.systems.families import binaries
from aitimestepper.systems.kepler import kepler_binary, period
from systems import binary, binary_elements
from training_params import tiny_params

THRESHOLD = 2e-4


def no_history(state: State) -> History:
    return History.empty(state.batch_size, 0, 0)


def sampled_binaries(generator: torch.Generator, dim: int, count: int = 24) -> State:
    """Binaries over the whole eccentricity range, started uniformly in true anomaly."""
    (group,) = binaries(
        count,
        generator,
        dim=dim,
        eccentricity=(0.0, 0.995),
        eccentricity_sampling="log_one_minus_e",
        semi_major_axis=(0.5, 2.0),
        start_phase="random_true_anomaly",
    )
    return group.state


def masses_of(mass_ratio: float, total_mass: float) -> tuple[float, float]:
    return total_mass / (1.0 + mass_ratio), mass_ratio * total_mass / (1.0 + mass_ratio)


# ------------------------------------------------------------------------------------------------
# the greedy oracle


@pytest.mark.parametrize("systems", ["binaries_2d", "binaries_3d", "cluster"])
def test_oracle_step_passes_the_gate_and_five_percent_more_fails(systems, generator, cluster):
    state = cluster if systems == "cluster" else sampled_binaries(generator, int(systems[-2]))
    dt = Oracle(THRESHOLD).propose(state, no_history(state))
    _, error = step_energy_error(state, dt)
    _, error_larger = step_energy_error(state, 1.05 * dt)
    assert (error <= THRESHOLD).all()
    assert (error_larger > THRESHOLD).all()
    # 12 bisections of a grid spaced by 1e6**(1/63) = 1.245 leave a bracket of 1 + 5e-5 in dt, so the
    # error of the step returned sits within a few 1e-4 of the threshold: far above the 0.5 of a bad search
    assert (error > 0.99 * THRESHOLD).all()


@pytest.mark.parametrize("systems", ["binaries_2d", "binaries_3d", "cluster"])
def test_oracle_steps_shrink_with_the_threshold_as_its_cube_root(systems, generator, cluster):
    state = cluster if systems == "cluster" else sampled_binaries(generator, int(systems[-2]), count=16)
    loose = Oracle(1e-3).propose(state, no_history(state))
    tight = Oracle(1e-5).propose(state, no_history(state))
    assert (tight < loose).all()
    # leapfrog's one-step energy error grows as dt**3 (to leading order): d log dt / d log threshold = 1/3
    exponent = (loose / tight).log() / math.log(1e-3 / 1e-5)
    assert 0.28 < exponent.median().item() < 0.38


def test_oracle_aimed_at_another_threshold_searches_there(generator):
    state = sampled_binaries(generator, 2, count=8)
    aimed = Oracle(THRESHOLD).at_threshold(1e-5)
    assert aimed.energy_threshold == 1e-5
    assert torch.equal(aimed.propose(state, no_history(state)), Oracle(1e-5).propose(state, no_history(state)))


# ------------------------------------------------------------------------------------------------
# the step criteria against analytic binaries


@pytest.mark.parametrize("softening", [0.0, 0.3])
def test_free_fall_step_is_eta_times_the_pair_free_fall_time(softening):
    eccentricities, a, total_mass = [0.0, 0.5, 0.9], 2.0, 4.0
    state = kepler_binary(
        binary_elements(eccentricities, semi_major_axis=a, total_mass=total_mass, mass_ratio=0.3), softening=softening
    )
    dt = FreeFall(0.1).propose(state, no_history(state))
    apocenter = a * (1.0 + torch.tensor(eccentricities, dtype=torch.float64))  # the separation at mean anomaly pi
    softened = (apocenter**2 + softening**2).sqrt()
    assert torch.allclose(dt, 0.1 * (softened**3 / total_mass).sqrt(), rtol=1e-12, atol=0)


@pytest.mark.parametrize(("phase", "mass_ratio"), [(math.pi, 1.0), (math.pi, 0.2), (0.0, 0.5)])
def test_energy_free_fall_step_follows_the_pair_share_of_the_energy(phase, mass_ratio):
    eccentricities, a, total_mass, eta = [0.0, 0.3, 0.8], 1.5, 2.0, 0.7
    state = binary(eccentricities, phase=phase, semi_major_axis=a, total_mass=total_mass, mass_ratio=mass_ratio)
    dt = EnergyFreeFall(eta).propose(state, no_history(state))
    m1, m2 = masses_of(mass_ratio, total_mass)
    e = torch.tensor(eccentricities, dtype=torch.float64)
    r = a * (1.0 + e) if phase == math.pi else a * (1.0 - e)
    tau = (r**3 / total_mass).sqrt()
    energy = m1 * m2 / (2.0 * a)  # |E| of a Kepler orbit, G = 1
    assert torch.allclose(dt, eta * tau * (energy * r / (m1 * m2)) ** (1.0 / 3.0), rtol=1e-10, atol=0)


def test_energy_free_fall_reads_the_energy_in_the_centre_of_mass_frame():
    state = binary([0.0, 0.6], mass_ratio=0.4)
    boost = torch.tensor([3.0, -2.0], dtype=torch.float64)
    moving = State.from_arrays(state.positions, state.velocities + boost, state.masses)
    rule = EnergyFreeFall(0.5)
    assert torch.allclose(rule.propose(moving, no_history(moving)), rule.propose(state, no_history(state)), rtol=1e-12)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize(("a", "total_mass", "mass_ratio"), [(1.0, 1.0, 1.0), (3.0, 0.5, 0.1)])
def test_prs23_step_is_eta_over_omega_on_a_circular_binary(dim, a, total_mass, mass_ratio):
    elements = binary_elements([0.0, 0.0], phase=1.0, semi_major_axis=a, total_mass=total_mass, mass_ratio=mass_ratio)
    state = kepler_binary(elements, dim=dim)
    dt = PRS23(0.2).propose(state, no_history(state))
    omega = math.sqrt(total_mass / a**3)  # a = w**2 r, j = w**3 r, s = w**4 r: sqrt(2 a**2 / (j**2 + a s)) = 1 / w
    assert torch.allclose(dt, torch.full_like(dt, 0.2 / omega), rtol=1e-10, atol=0)


def test_fixed_step_is_constant(cluster):
    policy = FixedStep(0.25)
    later = leapfrog_step(cluster, torch.full((cluster.batch_size,), 0.1, dtype=torch.float64))
    for state in (cluster, later):
        assert torch.equal(policy.propose(state, no_history(state)), torch.full((4,), 0.25, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------
# the energy-feedback controller


def test_gated_energy_feedback_passes_every_step_at_a_counted_cost():
    eccentricities = [0.3, 0.7, 0.9]
    state = binary(eccentricities, mass_ratio=0.5)
    end = period(torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    controller = EnergyFeedback(THRESHOLD)
    result = rollout(state, controller, end, energy_threshold=THRESHOLD, max_steps=20_000, gated=True, record=True)
    assert result.reached_end.all() and not result.failed.any()
    assert torch.equal(result.steps_passed, result.steps)
    assert (result.max_step_error <= THRESHOLD).all()
    rejections = result.force_evaluations - result.steps
    assert (rejections > 0).all()  # the controller overshoots now and then: the gate pays for it

    # Replay the accepted steps: each was its proposal (dt * clamp(0.9 (0.5 threshold / error)**(1/3),
    # 1/2, 2) after the previous step, the end time capping the last) halved once per rejected try, and
    # every rejected try of twice the accepted step failed the gate.
    for k in range(3):
        one = state.select(torch.tensor([k]))
        steps = result.trajectory.dt[1:, k][result.trajectory.dt[1:, k] > 0]
        assert steps.numel() == result.steps[k]
        proposal = EnergyFeedback(THRESHOLD).propose(one, no_history(one)).item()  # a fresh controller's first
        counted = 0
        for dt in steps.tolist():
            tried = min(proposal, end[k].item() - one.time.item())
            halvings = math.log2(tried / dt)
            assert halvings == pytest.approx(round(halvings), abs=1e-9)
            if round(halvings) > 0:
                _, failing = step_energy_error(one, torch.tensor([2.0 * dt], dtype=torch.float64))
                assert failing.item() > THRESHOLD
            counted += round(halvings)
            after, error = step_energy_error(one, torch.tensor([dt], dtype=torch.float64))
            factor = 0.9 * (0.5 * THRESHOLD / error.item()) ** (1.0 / 3.0)
            proposal, one = dt * min(max(factor, 0.5), 2.0), after
        assert counted == rejections[k].item()


def test_energy_feedback_first_step_is_a_fraction_of_the_energy_normalised_step():
    state = binary([0.0, 0.5, 0.9])
    controller = EnergyFeedback(THRESHOLD, initial_fraction=0.1)
    expected = 0.1 * EnergyFreeFall(1.0).propose(state, no_history(state)) * THRESHOLD ** (1.0 / 3.0)
    assert torch.allclose(controller.propose(state, no_history(state)), expected, rtol=1e-12)


@pytest.mark.parametrize("dim", [2, 3])
def test_gated_energy_feedback_costs_one_to_three_oracle_steps_on_binaries(dim):
    (group,) = binaries(8, torch.Generator().manual_seed(7), dim=dim, eccentricity=(0.0, 0.95))
    end = group.time_scale
    controller = rollout(
        group.state, EnergyFeedback(THRESHOLD), end, energy_threshold=THRESHOLD, max_steps=50_000, gated=True
    )
    oracle = rollout(group.state, Oracle(THRESHOLD), end, energy_threshold=THRESHOLD, max_steps=50_000)
    assert controller.reached_end.all() and oracle.reached_end.all()
    assert torch.equal(oracle.steps_passed, oracle.steps)
    ratio = controller.force_evaluations.double() / oracle.steps.double()
    assert (ratio > 1.0).all() and (ratio < 3.0).all()  # measured: 1.44 to 1.71


# ------------------------------------------------------------------------------------------------
# costs, names and refused values


def test_pairwise_passes_per_step_of_every_policy():
    params = tiny_params()
    assert pairwise_passes_per_step(FixedStep(0.1)) == 1
    assert pairwise_passes_per_step(FreeFall(0.1)) == 1
    assert pairwise_passes_per_step(EnergyFreeFall(0.1)) == 1
    assert pairwise_passes_per_step(EnergyFeedback(THRESHOLD)) == 1
    assert pairwise_passes_per_step(LearnedPolicy(build_network(params), params)) == 1
    assert pairwise_passes_per_step(PRS23(0.1)) == 1  # jerk and snap from the look at the state
    assert pairwise_passes_per_step(Oracle(THRESHOLD)) == 1 + 64 + 12
    assert pairwise_passes_per_step(Oracle(THRESHOLD, grid_points=10, bisections=5)) == 16


def test_rollouts_count_one_evaluation_per_step_of_prs23_and_the_oracle():
    state = binary([0.5])
    end = torch.tensor([2.0 * math.pi], dtype=torch.float64)  # one period
    prs23 = rollout(state, PRS23(0.05), end, energy_threshold=THRESHOLD, max_steps=10_000)
    assert prs23.steps.item() > 20 and prs23.force_evaluations.item() == prs23.steps.item()
    oracle = rollout(state, Oracle(THRESHOLD), end, energy_threshold=THRESHOLD, max_steps=10_000)
    assert oracle.steps.item() > 20 and oracle.force_evaluations.item() == oracle.steps.item()


def test_make_policy_builds_every_classical_policy_by_name():
    expected = {
        "fixed": FixedStep,
        "free_fall": FreeFall,
        "energy_free_fall": EnergyFreeFall,
        "prs23": PRS23,
        "energy_feedback": EnergyFeedback,
        "oracle": Oracle,
    }
    assert set(CLASSICAL_POLICIES) == set(expected)
    for name, kind in expected.items():
        policy = make_policy(name, energy_threshold=1e-4, fixed_dt=0.01, eta=0.07)
        assert type(policy) is kind and policy.name == name
        if name == "fixed":
            assert policy.dt == 0.01
        elif name in ("free_fall", "energy_free_fall", "prs23"):
            assert policy.eta == 0.07
        else:
            assert policy.energy_threshold == 1e-4


def test_make_policy_refuses_an_unknown_name_listing_the_valid_ones():
    with pytest.raises(ValueError, match="'rk4'") as refused:
        make_policy("rk4", energy_threshold=1e-4, fixed_dt=1.0, eta=0.1)
    for name in CLASSICAL_POLICIES:
        assert repr(name) in str(refused.value)


@pytest.mark.parametrize(
    ("build", "value"),
    [
        (FixedStep, 0.0),
        (FixedStep, -1e-3),
        (FreeFall, 0.0),
        (FreeFall, math.nan),
        (EnergyFreeFall, -1.0),
        (PRS23, 0.0),
        (Oracle, 0.0),
        (Oracle, 1.0),
        (Oracle, math.inf),
        (lambda target: EnergyFeedback(THRESHOLD, target=target), 0.0),
        (lambda target: EnergyFeedback(THRESHOLD, target=target), 1.5),
    ],
)
def test_bad_values_are_refused_naming_the_value(build, value):
    with pytest.raises(ValueError, match=re.escape(f"got {value}")):
        build(value)


@pytest.mark.parametrize("value", [0.0, -1e-4, 2.0, math.nan])
def test_energy_feedback_refuses_a_bad_threshold(value):
    with pytest.raises(ValueError, match=re.escape(f"got {value}")):
        EnergyFeedback(value)
