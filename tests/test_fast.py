"""The compiled rollout (aitimestepper.fast, numba kernels) against the torch reference: the same
steps, costs and gate decisions, and the same physics to round-off, on every family and policy.

The first compiled call of a session loads the numba kernels (they compile once, ~20 s, and are
cached on disk afterwards).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aitimestepper import fast
from aitimestepper.features import context_dim, look
from aitimestepper.model import LearnedPolicy, build_network
from aitimestepper.physics.state import State
from aitimestepper.policies import PRS23, EnergyFeedback, EnergyFreeFall, FixedStep, FreeFall, Oracle
from aitimestepper.rollout import Rollout, Trajectory, rollout
from aitimestepper.systems.families import SystemSet, binaries, draw, group_by_size
from systems import binary
from training_params import tiny_params

THRESHOLD = 2e-4
#: time scales per run, and the cap on steps: a few hundred steps at most per system
DURATION = 0.3
MAX_STEPS = 2_000
#: (family, ranges, systems per dimension): every family, both softened and unsoftened triples,
#: planetary systems with 1 to 3 planets and Plummer clusters of 4 and 8 bodies
CASES = (
    ("binary", {}, 2),
    ("hierarchical_triple", {"period_ratio": (10.0, 30.0)}, 2),
    ("democratic_triple", {"softening": (0.01, 0.05)}, 2),
    ("democratic_triple", {"softening": (0.0, 0.0)}, 2),
    ("planetary", {"planets": (1, 3)}, 6),
    ("plummer", {"bodies": (4, 8)}, 6),
    ("tidal", {"bodies": (2, 4)}, 6),
)
#: The network computes in float32 (torch accumulates its matrix products in float32, the kernel in
#: float64 before rounding) on inputs rounded to float32: its log corrections differ by float32
#: round-off, its steps by 2e-7 relative. A window of past states feeds those back: each row holds
#: the last step's log(error / threshold), the error growing as dt**3 and being a difference of two
#: energies, so that the steps of a history_len = 2 network differ by up to 3e-5 (measured). Then
#: errors differ by about 3 times that (extremes over a run, measured up to 4e-5), and trajectories
#: integrated with such steps by their own integration error times that (measured up to 1e-7). A
#: wrong feature or layer changes steps by O(1): the step counts, compared exactly, catch it.
#: The leading-order energy-error feature log(12 |E| / |R|) adds the round-off of R, a sum over
#: pairs whose terms partly cancel (summed in another order in torch), and the history window
#: feeds the errors back: steps and errors then differ by up to 4e-4 (measured, history_len = 2).
LEARNED_DT_RTOL = 1e-3
LEARNED_POSITIONS_RTOL = 1e-5
#: Democratic triples and clusters are chaotic: a close encounter amplifies the learned policy's
#: float32 round-off exponentially (measured on a perturbed network: on an 8-body cluster, steps
#: differing by 3e-7 after 0.1 crossing times, 2e-3 after 0.2, 2e-2 after 0.3; on a 3-D democratic
#: triple 5e-7 after 0.1, then 91 against 95 steps after 0.2). The learned policies are compared
#: on them over LEARNED_CHAOTIC_DURATION, before the amplification; elsewhere over DURATION.
LEARNED_CHAOTIC_DURATION = 0.1
CHAOTIC_FAMILIES = ("democratic_triple", "plummer")


def chaotic_system(label: dict) -> bool:
    """Democratic triples and clusters, in a tidal field or not."""
    return label["family"] in CHAOTIC_FAMILIES or label.get("system") in CHAOTIC_FAMILIES


#: Gated, a perturbed network reading past states is itself an unstable feedback where it keeps
#: overshooting the gate: each rejection halves a step the next proposal reads back (its correction,
#: and the quartic step's finite difference of R over it). Measured on a gated unsoftened 2-D triple:
#: engines' steps differing by 4e-7 after 5 steps, 2e-5 after 15, 4e-4 after 20, 0.1 after 30 (a
#: trained network: the same steps on every held-out family over a time scale, gated or not). Gated
#: learned runs with a window are compared over LEARNED_FEEDBACK_STEPS, on every family: with the
#: Kepler step in the context, a gated binary (3-4 tries per step) measured final positions
#: differing by 2e-7 after 8 steps, 2e-6 after 12 and 3e-5 after 15, and 27 against 26 steps later.
LEARNED_FEEDBACK_STEPS = 10
POLICIES = (
    "fixed",
    "free_fall",
    "energy_free_fall",
    "prs23",
    "energy_feedback",
    "oracle",
    "learned_h0",
    "learned_h0_gated",
    "learned_h2",
    "learned_h2_gated",
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The torch reference works on tiny tensors, where a second intra-op thread only adds
    synchronisation: on a busy two-core machine it made each float32 linear layer 400x slower
    (8 ms instead of 20 us) and this module 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kind(label: dict) -> str:
    """A system's case: its family, with unsoftened triples and the planet count told apart."""
    if label["family"] == "democratic_triple" and label["softening"] == 0.0:
        return "democratic_triple_unsoftened"
    if label["family"] == "planetary":
        return f"planetary_{label['planets']}"
    if label["family"] == "plummer":
        return f"plummer_{label['bodies']}"
    if label["family"] == "tidal":
        return f"tidal_{label['system']}"
    return label["family"]


EXPECTED_KINDS = {
    "binary",
    "hierarchical_triple",
    "democratic_triple",
    "democratic_triple_unsoftened",
    "planetary_1",
    "planetary_2",
    "planetary_3",
    "plummer_4",
    "plummer_8",
    "tidal_binary",
    "tidal_plummer",
}


@pytest.fixture(scope="module")
def batches() -> list[SystemSet]:
    """Every case in 2-D and 3-D, systems of equal (N, D) in one batch (as the evaluation runs them)."""
    generator = torch.Generator().manual_seed(5)
    groups = []
    for dim in (2, 3):
        drawn = [group for name, ranges, count in CASES for group in draw(name, count, generator, dim=dim, **ranges)]
        merged = group_by_size(drawn)
        assert {kind(label) for group in merged for label in group.labels} == EXPECTED_KINDS
        groups += merged
    return groups


def perturbed_learned_policy(history_len: int, seed: int) -> LearnedPolicy:
    """A tanh network of the tiny params with every weight and bias drawn from a seeded generator
    (the default initialisation draws from the global one): weights of spread 1 / sqrt(fan-in), so the
    corrections vary from state to state, around 1 rather than the untrained 0.1 (steps near the
    gate's edge, fewer of them; gated runs reject some)."""
    params = tiny_params(**{"features.history_len": history_len})
    network = build_network(params)
    assert network.context_mean.numel() == context_dim(history_len) + 1
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            draw = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            spread = parameter.shape[1] ** -0.5 if parameter.ndim == 2 else 0.1
            parameter.copy_(spread * draw)
    return LearnedPolicy(network, params)


@pytest.fixture(scope="module")
def learned(batches) -> dict[int, LearnedPolicy]:
    """Perturbed networks reading 0 and 2 past states, their inputs standardised over the looks at
    the test's systems (as training does), so float32 rounds inputs of order 1."""
    policies = {}
    for history_len in (0, 2):
        policy = perturbed_learned_policy(history_len, seed=10 + history_len)
        looks = [look(group.state, policy.candidates) for group in batches]
        pair_features = torch.cat([seen.pair_features.flatten(0, 1) for seen in looks])
        context = torch.cat([seen.context for seen in looks])
        padded = torch.zeros(context.shape[0], policy.network.context_mean.numel(), dtype=torch.float64)
        padded[:, : context.shape[1]] = context
        policy.network.set_normalization(pair_features, padded)
        policies[history_len] = policy
    return policies


def contender(name: str, group: SystemSet, learned: dict[int, LearnedPolicy]):
    """(policy, gated) of ``name`` for the systems of ``group``."""
    if name.startswith("learned"):
        return learned[int(name.split("_")[1][1:])], name.endswith("gated")
    return {
        "fixed": (FixedStep(0.003 * group.time_scale.min().item()), False),
        "free_fall": (FreeFall(0.02), False),
        "energy_free_fall": (EnergyFreeFall(0.5), False),
        "prs23": (PRS23(0.05), False),
        "energy_feedback": (EnergyFeedback(THRESHOLD), True),
        "oracle": (Oracle(THRESHOLD), False),
    }[name]


def both_engines(state: State, policy, end_time, **options) -> tuple[Rollout, Rollout]:
    return tuple(rollout(state, policy, end_time, engine=engine, **options) for engine in ("torch", "compiled"))


def assert_same_run(
    reference: Rollout, compiled: Rollout, labels: list[dict], dt_rtol: float, positions_rtol: float = 1e-9
) -> None:
    """Identical decisions (steps, costs, passes, failures), the same physics to round-off."""
    where = f"systems {[kind(label) for label in labels]}"
    for field in ("steps", "force_evaluations", "steps_passed", "failed", "reached_end"):
        assert torch.equal(getattr(reference, field), getattr(compiled, field)), f"{field} differ on {where}"
    scale = reference.final_state.positions.abs().amax(dim=(1, 2), keepdim=True)
    difference = (reference.final_state.positions - compiled.final_state.positions).abs() / scale
    assert difference.max() <= positions_rtol, f"final positions differ by {difference.max():.2e} on {where}"
    # runs that reach their end stop on it; runs cut short by a cap sum their (round-off equal) steps
    assert torch.allclose(reference.final_state.time, compiled.final_state.time, rtol=max(dt_rtol, 1e-12), atol=0)
    # a step's error grows as dt**3: steps equal to dt_rtol give errors equal to 3 dt_rtol (negligible
    # beside 1e-9 but for the learned policy's float32 steps)
    for field in ("max_energy_error", "max_step_error"):
        expected, actual = getattr(reference, field), getattr(compiled, field)
        assert torch.allclose(expected, actual, rtol=3 * dt_rtol, atol=1e-9), f"{field} differ on {where}"
    assert torch.allclose(reference.proposed_dt_min, compiled.proposed_dt_min, rtol=dt_rtol, atol=0), where
    if reference.trajectory is not None:
        assert_same_trajectory(reference.trajectory, compiled.trajectory, dt_rtol, positions_rtol)


def assert_same_trajectory(reference: Trajectory, compiled: Trajectory, dt_rtol: float, positions_rtol: float) -> None:
    """The same rows (a system's steps, then its last state repeated with dt 0), equal to round-off."""
    assert reference.positions.shape == compiled.positions.shape
    assert torch.equal(reference.dt == 0, compiled.dt == 0)
    # a last step lands on the end time: end - t, of the times' absolute round-off
    times = reference.time.abs().max() * max(dt_rtol, 1e-12)
    assert torch.allclose(reference.dt, compiled.dt, rtol=dt_rtol, atol=times)
    assert torch.allclose(reference.time, compiled.time, rtol=0, atol=times)
    # the accumulated error crosses 0 where steps' errors of both signs cancel: its round-off is
    # that of the steps summed, 3 dt_rtol of the largest accumulated error of the system's run
    largest = reference.energy_error.abs().amax(dim=0, keepdim=True)
    difference = (reference.energy_error - compiled.energy_error).abs()
    assert (difference <= 3 * dt_rtol * torch.maximum(reference.energy_error.abs(), largest) + 1e-12).all()
    scale = reference.positions.abs().amax()
    assert (reference.positions - compiled.positions).abs().max() <= positions_rtol * scale


@pytest.mark.parametrize("name", POLICIES)
def test_compiled_rollout_equals_the_torch_reference(name, batches, learned):
    # Only round-off separates the engines: torch sums over bodies and pairs in its own (vectorised,
    # regrouped) order where the kernels sum sequentially, and its log/exp/pow/tanh are other
    # implementations than numba's (even its float64 sqrt is not always correctly rounded); the same
    # operations in the same order agree bit for bit (test_a_fixed_step_of_a_binary_is_bit_for_bit...).
    # Round-off compounds where a policy compounds its inputs: the controller's next step is a product
    # of past error ratios, each error a difference of two energies (round-off 1e-16 |E| / |E1 - E0|
    # relative): measured 2e-11 on its smallest proposal. The learned policy: see LEARNED_DT_RTOL.
    dt_rtol = LEARNED_DT_RTOL if name.startswith("learned") else 1e-9 if name == "energy_feedback" else 1e-12
    positions_rtol = LEARNED_POSITIONS_RTOL if name.startswith("learned") else 1e-9
    for group in batches:
        policy, gated = contender(name, group, learned)
        assert fast.supports(policy)
        chaotic = any(chaotic_system(label) for label in group.labels)
        duration = LEARNED_CHAOTIC_DURATION if name.startswith("learned") and chaotic else DURATION
        feedback = gated and policy.history_len > 0
        reference, compiled = both_engines(
            group.state,
            policy,
            duration * group.time_scale,
            energy_threshold=THRESHOLD,
            max_steps=LEARNED_FEEDBACK_STEPS if feedback else MAX_STEPS,
            gated=gated,
            record=True,
        )
        assert not reference.failed.any() and (reference.steps > 0).all()
        if gated:
            assert torch.equal(reference.steps_passed, reference.steps)
        assert_same_run(reference, compiled, group.labels, dt_rtol, positions_rtol)


def test_gated_learned_runs_exercise_the_gate(batches, learned):
    """The comparisons above include rejected tries: the perturbed network overshoots now and then
    (triples, over the steps the chaotic ones are compared on)."""
    group = next(group for group in batches if group.num_bodies == 3)
    reference, compiled = both_engines(
        group.state,
        learned[2],
        DURATION * group.time_scale,
        energy_threshold=THRESHOLD,
        max_steps=LEARNED_FEEDBACK_STEPS,
        gated=True,
    )
    assert (reference.force_evaluations > reference.steps).any()
    assert torch.equal(reference.force_evaluations, compiled.force_evaluations)


@pytest.mark.parametrize("dim", [2, 3])
def test_a_fixed_step_of_a_binary_is_bit_for_bit_where_sqrt_is_correctly_rounded(dim):
    """Two bodies: every sum has one term and the step calls sqrt only, so both engines make the same
    operations in the same order, and IEEE arithmetic gives the same bits, except where torch's
    float64 sqrt is not correctly rounded: on this build it is off by one ulp on about 1% of arguments
    (e.g. sqrt(1.0237520594022436)), where numba's (the hardware instruction) is exact."""
    (group,) = binaries(2_000, torch.Generator().manual_seed(3), dim=dim, eccentricity=(0.0, 0.99))
    reference, compiled = both_engines(
        group.state, FixedStep(1e-3), group.time_scale, energy_threshold=THRESHOLD, max_steps=1
    )
    after, other = reference.final_state, compiled.final_state
    assert torch.equal(after.positions, other.positions)  # the drift reads the start's accelerations
    square = (after.positions[:, 1] - after.positions[:, 0]).square().sum(dim=1)
    exact = torch.from_numpy(np.sqrt(square.numpy())) == square.sqrt()
    assert exact.double().mean() > 0.95  # measured: 98.6% (2-D) and 98.9% (3-D) of these systems
    for name in ("accelerations", "velocities"):
        assert torch.equal(getattr(after, name)[exact], getattr(other, name)[exact])
    assert torch.equal(reference.max_energy_error[exact], compiled.max_energy_error[exact])


@pytest.mark.parametrize("dim", [2, 3])
def test_compiled_accelerations_are_the_plain_pair_loops_bit_for_bit(dim):
    """The kernel's one pass over the pairs (body i's sums held in registers) makes every body's sum
    in the order j = 0, 1, ..., as a plain loop in Python floats (IEEE double, the same operations)."""
    fast._kernels()
    from aitimestepper.kernels.physics import accelerations

    rng = np.random.default_rng(dim)
    for count in (2, 3, 8, 17, 32):
        positions, masses, eps = rng.normal(size=(count, dim)), rng.uniform(0.01, 1.0, count), 0.01 * (count % 2)
        out = np.empty((count, dim))
        potential = accelerations(positions, masses, eps, out)
        x = positions.tolist()
        expected = [[0.0] * dim for _ in range(count)]
        expected_potential = 0.0
        for i in range(count):
            for j in range(i + 1, count):
                square = 0.0
                for d in range(dim):
                    square += (x[j][d] - x[i][d]) * (x[j][d] - x[i][d])
                square += eps * eps
                root = math.sqrt(square)
                inverse_cube = 1.0 / (square * root)
                for d in range(dim):
                    expected[i][d] += masses[j] * inverse_cube * (x[j][d] - x[i][d])
                    expected[j][d] += masses[i] * inverse_cube * (x[i][d] - x[j][d])
                expected_potential += masses[i] * masses[j] * (1.0 / root)
        assert out.tolist() == expected and potential == expected_potential, count


@pytest.mark.parametrize("dim", [2, 3])
def test_fixed_step_runs_of_binaries_agree_to_a_few_ulps(dim):
    """The same operations along 2000 steps: only the rare one-ulp sqrt differences accumulate."""
    (group,) = binaries(4, torch.Generator().manual_seed(3), dim=dim)
    reference, compiled = both_engines(
        group.state, FixedStep(1e-3), group.time_scale, energy_threshold=THRESHOLD, max_steps=MAX_STEPS
    )
    assert torch.equal(reference.steps, compiled.steps) and (reference.steps == MAX_STEPS).all()
    for name in ("positions", "velocities"):
        assert torch.allclose(
            getattr(reference.final_state, name), getattr(compiled.final_state, name), rtol=0, atol=1e-15
        )
    assert torch.allclose(reference.max_energy_error, compiled.max_energy_error, rtol=0, atol=1e-15)


def test_a_non_tanh_learned_policy_has_no_compiled_twin():
    params = tiny_params(**{"model.activation": "relu"})
    policy = LearnedPolicy(build_network(params), params)
    assert not fast.supports(policy)
    state = binary([0.5])
    end = torch.tensor([1.0], dtype=torch.float64)
    auto = rollout(state, policy, end, energy_threshold=THRESHOLD, max_steps=1_000)
    reference = rollout(state, policy, end, energy_threshold=THRESHOLD, max_steps=1_000, engine="torch")
    assert torch.equal(auto.final_state.positions, reference.final_state.positions)  # auto falls back to torch


def test_auto_runs_every_policy_with_a_compiled_twin_compiled_whatever_the_batch():
    """The compiled path is the faster one at every batch size measured: a large learned batch
    (300 binaries) on ``auto`` is the compiled run, bit for bit, and the torch run to round-off."""
    params = tiny_params()
    policy = LearnedPolicy(build_network(params), params)
    (binary_set,) = binaries(300, torch.Generator().manual_seed(1), dim=2)
    end = 0.3 * binary_set.time_scale
    auto = rollout(binary_set.state, policy, end, energy_threshold=THRESHOLD, max_steps=200)
    compiled = rollout(binary_set.state, policy, end, energy_threshold=THRESHOLD, max_steps=200, engine="compiled")
    reference = rollout(binary_set.state, policy, end, energy_threshold=THRESHOLD, max_steps=200, engine="torch")
    assert torch.equal(auto.final_state.positions, compiled.final_state.positions)
    assert torch.equal(auto.steps, reference.steps)
    assert torch.allclose(auto.final_state.positions, reference.final_state.positions, rtol=0, atol=1e-9)


def test_compiled_engine_refuses_a_non_tanh_learned_policy():
    params = tiny_params(**{"model.activation": "relu"})
    policy = LearnedPolicy(build_network(params), params)
    with pytest.raises(ValueError, match="compiled"):
        rollout(
            binary([0.5]),
            policy,
            torch.tensor([1.0], dtype=torch.float64),
            energy_threshold=THRESHOLD,
            max_steps=100,
            engine="compiled",
        )


@pytest.mark.parametrize("name", ["free_fall_gated", "learned"])
def test_per_system_caps_and_thresholds_are_honoured_alike(name, learned):
    """Each system of a batch runs as it would alone, with its own step cap and its own threshold:
    the gate's (gated free-fall) or the one the network aims at (learned, ungated)."""
    (group,) = binaries(4, torch.Generator().manual_seed(11), dim=2, eccentricity=(0.5, 0.9))
    # (at 1e-3 a perturbed network can blow system 0 apart, where its huge steps amplify float32
    # round-off: measured 110% energy error in 17 steps, positions 1.3e-5 apart between engines)
    thresholds = torch.tensor([5e-4, 2e-4, 5e-5, 2e-4], dtype=torch.float64)
    caps = torch.tensor([3_000, 7, 3_000, 40])
    if name == "learned":
        policy, gated, aimed = learned[0].at_threshold(thresholds), False, learned[0].at_threshold
    else:
        policy, gated, aimed = FreeFall(0.08), True, lambda threshold: FreeFall(0.08)
    end = group.time_scale
    options = {"max_steps": 3_000, "gated": gated, "step_caps": caps}
    reference, compiled = both_engines(group.state, policy, end, energy_threshold=thresholds, record=True, **options)
    assert_same_run(reference, compiled, group.labels, LEARNED_DT_RTOL, LEARNED_POSITIONS_RTOL)
    assert reference.steps.tolist()[1::2] == [7, 40]  # the caps stopped these two early
    assert reference.reached_end.tolist() == [True, False, True, False]
    for k in range(4):
        alone = rollout(
            group.state.select(torch.tensor([k])),
            aimed(thresholds[k].item()),
            end[k : k + 1],
            energy_threshold=thresholds[k].item(),
            engine="torch",
            **{**options, "step_caps": caps[k : k + 1]},
        )
        for field in ("steps", "steps_passed", "force_evaluations"):
            assert getattr(alone, field).item() == getattr(reference, field)[k].item(), (field, k)
    # one threshold for all instead: the looser system costs more, the tighter one less (the
    # perturbed network's own response to the threshold is random: it only has to read it)
    uniform = rollout(group.state, aimed(2e-4), end, energy_threshold=2e-4, engine="torch", **options)
    assert uniform.reached_end[[0, 2]].all()
    if name == "learned":
        assert (reference.force_evaluations[[0, 2]] != uniform.force_evaluations[[0, 2]]).all()
    else:
        assert reference.force_evaluations[0] < uniform.force_evaluations[0]
        assert reference.force_evaluations[2] > uniform.force_evaluations[2]
    assert torch.equal(reference.force_evaluations[[1, 3]], uniform.force_evaluations[[1, 3]])
    if gated:
        assert (reference.max_step_error <= thresholds).all()
        assert reference.max_step_error[0] > 2e-4  # the loosest system used its looser gate


@pytest.mark.parametrize("gated", [False, True])
def test_a_system_that_breaks_is_flagged_failed_by_both_engines(gated):
    """Two bodies 1e-100 apart, unsoftened, and a huge fixed step: the first kick overflows the
    kinetic energy (non-finite however often the gate halves it); a bound binary beside them goes on."""
    positions = torch.tensor([[[0.0, 0.0], [1e-100, 0.0]], [[-0.5, 0.0], [0.5, 0.0]]], dtype=torch.float64)
    velocities = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[0.0, -0.7], [0.0, 0.7]]], dtype=torch.float64)
    state = State.from_arrays(positions, velocities, torch.full((2, 2), 0.5, dtype=torch.float64))
    end = torch.tensor([1e11, 2.0 * math.pi], dtype=torch.float64)
    reference, compiled = both_engines(
        state, FixedStep(1e10), end, energy_threshold=THRESHOLD, max_steps=1_000, gated=gated, record=True
    )
    assert_same_trajectory(reference.trajectory, compiled.trajectory, 1e-12, 1e-12)
    assert (reference.trajectory.dt[:, 0] == 0).all()  # the broken system's try is a row, with dt 0
    for result in (reference, compiled):
        assert result.failed.tolist() == [True, False]
        assert result.reached_end.tolist() == [False, True]
        assert result.steps[0] == 0 and result.steps[1] > 0
        # a failed system stops at its last finite state: here its start
        assert torch.equal(result.final_state.positions[0], positions[0])
        assert result.final_state.time[0] == 0.0
        assert result.final_state.positions.isfinite().all()
        expected_tries = 1 + (40 if gated else 0)  # every try of a gated step is counted, the 40 retries too
        assert result.force_evaluations[0] == expected_tries
    for field in ("steps", "force_evaluations", "steps_passed", "failed"):
        assert torch.equal(getattr(reference, field), getattr(compiled, field))


def test_the_compiled_quartic_root_equals_the_torch_one():
    """The quartic step's bisection, scalar in the kernel, vectorised in torch, for rates and changes
    of either sign over twelve decades (every bracket case): the same root to round-off."""
    from aitimestepper.features import _quartic_root
    from aitimestepper.kernels.learned import quartic_root

    generator = torch.Generator().manual_seed(11)
    spread = lambda: torch.randn(2000, generator=generator, dtype=torch.float64)  # noqa: E731
    rate, change = spread() * spread().mul(3).exp(), spread() * spread().mul(3).exp()
    change[:100] = 0.0
    expected = _quartic_root(rate, change)
    pairs = zip(rate.tolist(), change.tolist(), strict=True)
    actual = torch.tensor([quartic_root(u, w) for u, w in pairs], dtype=torch.float64)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


def test_the_compiled_quintic_step_equals_the_torch_one():
    """The quintic step from random rows and windows of 0, 1 and 2 filled slots: its grid search
    and bisection in the kernel and in torch give the same root to round-off."""
    from aitimestepper.features import ROW_WIDTH, quintic_step
    from aitimestepper.history import History
    from aitimestepper.kernels.learned import quintic_step as compiled_quintic_step

    generator = torch.Generator().manual_seed(12)
    count = 1500
    spread = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    rows = spread(count, 3) * torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64)
    past = spread(count, 2, ROW_WIDTH) * 0.3
    past[:, :, 4] = rows[:, None, 2] * (1.0 + 0.3 * spread(count, 2))  # rates near the current one
    history = History(past, torch.randint(0, 3, (count,), generator=generator))
    expected = quintic_step(rows, history)
    actual = torch.tensor(
        [
            compiled_quintic_step(rows[k, 2].item(), rows[k, 0].item(), past[k].numpy(), int(history.filled[k]))
            for k in range(count)
        ],
        dtype=torch.float64,
    )
    assert (expected.abs() < 3.0).sum() > count // 2  # most roots are inside the clip
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


def test_the_batched_and_per_system_kepler_steps_agree():
    """The torch path's Kepler step (one compiled call per batch) and the compiled policy's (one
    call per system) run the same code: the same bits, on binaries, hierarchical triples,
    planetary systems and clusters, 2-D and 3-D, at thresholds over a decade; most steps are found
    inside the clip."""
    from aitimestepper.features import CANCELLATION_FLOOR, kepler_step
    from aitimestepper.kernels.kepler import kepler_step as compiled_kepler_step

    generator = torch.Generator().manual_seed(13)
    checked = inside = 0
    for family, options in (
        ("binary", {}),
        ("hierarchical_triple", {}),
        ("planetary", {"planets": (1, 4)}),
        ("plummer", {"bodies": (8,)}),
    ):
        for dim in (2, 3):
            for group in draw(family, 12, generator, dim=dim, **options):
                seen = look(group.state, 8)
                log_threshold = torch.empty(group.state.batch_size, dtype=torch.float64).uniform_(
                    math.log(5e-5), math.log(5e-4), generator=generator
                )
                batched, cancellation = kepler_step(seen, log_threshold)
                keep = seen.kepler.shape[1]
                single = [
                    compiled_kepler_step(
                        seen.kepler[b].numpy(), keep, seen.kepler_rest[b].item(), log_threshold[b].item()
                    )
                    for b in range(group.state.batch_size)
                ]
                assert batched.tolist() == [step for step, _ in single]
                assert cancellation.tolist() == [math.log(share + CANCELLATION_FLOOR) for _, share in single]
                checked += batched.numel()
                inside += int((batched.abs() < 3.0).sum())
    assert inside > 0.9 * checked


@pytest.mark.parametrize("name", ["energy_feedback", "prs23", "learned_h2"])
def test_the_shadow_oracle_is_the_same_on_both_engines(name, batches, learned):
    """The oracle searching its step along another policy's path (the evaluation's same-path
    yardstick): the same sum of dt / its step on both engines, on every family, and the run
    itself unchanged by it (the oracle's trials touch scratch arrays only)."""
    for group in batches[:: 2 if name.startswith("learned") else 3]:
        policy, gated = contender(name, group, learned)
        options = {"energy_threshold": THRESHOLD, "max_steps": 40, "gated": gated}
        end = LEARNED_CHAOTIC_DURATION * group.time_scale
        reference, compiled = both_engines(group.state, policy, end, shadow=Oracle(THRESHOLD), **options)
        plain = rollout(group.state, policy, end, engine="compiled", **options)
        assert plain.oracle_steps is None
        assert torch.equal(plain.final_state.positions, compiled.final_state.positions)
        rtol = LEARNED_DT_RTOL if name.startswith("learned") else 1e-9
        torch.testing.assert_close(reference.oracle_steps, compiled.oracle_steps, rtol=rtol, atol=0)
        assert (compiled.oracle_steps > 0).all()
        if gated:  # steps that pass the gate stop short of the oracle's edge: the oracle needs fewer
            assert (compiled.oracle_steps <= compiled.steps).all()
