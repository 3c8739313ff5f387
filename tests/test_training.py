"""The two-phase trainer: Part 1 gating, warm-up discard, Part 2, loss, determinism, checkpoints, resume."""

from __future__ import annotations

import math

import pytest
import torch

from aitimestepper.checkpoint import CheckpointError, load_policy, read_checkpoint, save_checkpoint
from aitimestepper.history import History
from aitimestepper.model import LearnedPolicy, build_network
from aitimestepper.physics.initial_conditions import kepler_binary, sample_kepler_elements
from aitimestepper.physics.integrator import step_energy_error
from aitimestepper.physics.state import State
from aitimestepper.training.buffer import ReplayBuffer
from aitimestepper.training.collection import Collector, RetrainLimitError
from aitimestepper.training.loss import band_loss
from aitimestepper.training.replay import replay
from aitimestepper.training.sampler import SystemSampler
from aitimestepper.training.step import gated_step, optimizer_step
from aitimestepper.training.trainer import learning_rate, train
from aitimestepper.training.validation import score
from training_params import tiny_params


def setup(params):
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    network = build_network(params)
    policy = LearnedPolicy(network, params)
    optimizer = torch.optim.Adam(network.parameters(), lr=params.training.learning_rate)
    sampler = SystemSampler(params, generator)
    return policy, optimizer, sampler, generator


def test_part1_rejects_a_too_large_step_and_retrains_until_accepted():
    params = tiny_params(**{"model.initial_dt_fraction": 0.5, "features.history_len": 0})
    policy, optimizer, sampler, _ = setup(params)
    collector = Collector(params, sampler)
    start = collector.state
    first = gated_step(policy, start, policy.new_history(start), collector.energy_threshold, params)
    assert not first.passed.any()  # half a free-fall time is far too long a step
    buffer = ReplayBuffer(1000, 0.0)
    stats = collector.collect(policy, optimizer, buffer).values
    assert stats["retrain_steps"] > 0 and stats["acceptance_rate"] < 1
    assert stats["error_over_threshold_max"] <= 1.0  # every accepted step within its own system's threshold
    assert len(buffer) == params.training.num_orbits * params.training.steps_per_epoch
    # every recorded state, stepped with the retrained policy's dt as accepted then, passed
    state, history = buffer.gather(torch.arange(len(buffer)))
    assert torch.isfinite(state.positions).all()
    assert (collector.state.time > 0).all()


def test_accepted_states_pass_the_threshold_when_replayed():
    params = tiny_params(**{"features.history_len": 0, "model.initial_dt_fraction": 0.05})
    policy, optimizer, sampler, _ = setup(params)
    collector = Collector(params, sampler)
    buffer = ReplayBuffer(1000, 0.0)
    for _ in range(2):
        collector.collect(policy, optimizer, buffer)
    # replaying the most recent epoch's states with the final weights: a few may fail, since
    # weights changed after acceptance, but the energy-error scale must be the threshold's
    state, history = buffer.gather(torch.arange(len(buffer)))
    thresholds = torch.full((state.batch_size,), params.energy_threshold, dtype=torch.float64)
    error = gated_step(policy, state, history, thresholds, params).error
    assert error.median() < params.energy_threshold


def test_retrain_cap_gives_a_clear_error():
    params = tiny_params(**{"model.initial_dt_fraction": 0.9, "training.max_retrain_steps": 2})
    policy, optimizer, sampler, _ = setup(params)
    with pytest.raises(RetrainLimitError, match="max_retrain_steps = 2"):
        Collector(params, sampler).collect(policy, optimizer, ReplayBuffer(100, 0.0))


def test_warm_up_steps_are_discarded():
    params = tiny_params(**{"features.history_len": 3, "training.steps_per_epoch": 2})
    policy, optimizer, sampler, _ = setup(params)
    collector = Collector(params, sampler)
    buffer = ReplayBuffer(1000, 0.0)
    stats = collector.collect(policy, optimizer, buffer).values
    assert len(buffer) == 0  # 2 accepted steps < 3 history slots: every state was warm-up
    assert stats["warmup_discarded"] == 2 * params.training.num_orbits
    stats = collector.collect(policy, optimizer, buffer).values
    # third step: 1 slot still padded for the state before it; fourth: window full
    assert stats["warmup_discarded"] == params.training.num_orbits
    assert len(buffer) == params.training.num_orbits
    assert (buffer.tensors["filled"][: len(buffer)] == 3).all()


def synthetic_buffer(params, count=512):
    """States of moderately eccentric binaries, in a buffer without history."""
    elements = sample_kepler_elements(
        count,
        torch.Generator().manual_seed(5),
        eccentricity_range=(0.3, 0.7),
        eccentricity_sampling="uniform",
        semi_major_axis_range=(1.0, 1.0),
        mass_ratio_range=(1.0, 1.0),
        total_mass=1.0,
        start_phase="random_true_anomaly",
    )
    state = kepler_binary(elements)
    buffer = ReplayBuffer(count, 0.0)
    buffer.add(state, History.empty(state.batch_size, 0, 2))
    return buffer


def test_part2_runs_batched_and_converges_on_a_synthetic_buffer():
    params = tiny_params(
        **{
            "features.history_len": 0,
            "model.initial_dt_fraction": 0.2,  # too long for many phases: Part 2 must fix it
            "training.replay_batch_size": 64,
            "training.replay_steps": 400,
            "training.replay_min_steps": 1,
            "training.learning_rate": 3e-3,
        }
    )
    policy, optimizer, _, generator = setup(params)
    buffer = synthetic_buffer(params)
    stats = replay(policy, optimizer, buffer, params, generator)
    assert stats["converged"] == 1.0
    assert 1 < stats["iterations"] < 400
    assert stats["pass_rate"] == 1.0


def test_band_loss_pushes_dt_up_when_the_error_is_far_below_the_band():
    params = tiny_params(
        **{
            "features.history_len": 0,
            "model.initial_dt_fraction": 1e-3,
            "training.replay_min_steps": 100,
            "training.replay_steps": 100,
        }
    )
    policy, optimizer, _, generator = setup(params)
    buffer = synthetic_buffer(params)
    state, history = buffer.gather(torch.arange(len(buffer)))
    before = policy.propose(state, history)
    stats = replay(policy, optimizer, buffer, params, generator)
    after = policy.propose(state, history)
    assert stats["iterations"] == 100
    assert (after > 1.5 * before).all()


def test_band_loss_shape():
    threshold = 1e-4
    errors = torch.tensor([1e-8, 0.7e-4, 5e-4], dtype=torch.float64, requires_grad=True)
    loss = band_loss(errors, threshold, 0.5, 0.85, below_weight=0.1)
    (gradient,) = torch.autograd.grad(loss.sum(), errors)
    assert gradient[0] < 0  # below the band: a larger error (larger dt) lowers the loss
    assert loss[1] == 0 and gradient[1] == 0  # inside the band: nothing to do
    assert gradient[2] > 0  # above: shrink
    assert loss[2] > loss[0] * 0  # finite and non-negative
    assert torch.isfinite(band_loss(torch.zeros(1, dtype=torch.float64), threshold, 0.5, 0.85)).all()


def test_failure_penalty_makes_a_barely_failing_step_cost_more_than_a_cautious_one():
    threshold = 1e-4
    cautious, failing = 0.25e-4, 1.02e-4
    errors = torch.tensor([cautious, failing, 0.9e-4], dtype=torch.float64, requires_grad=True)
    plain = band_loss(errors, threshold, 0.5, 0.85, below_weight=0.1)
    # the squared band distance alone ranks the failing step as the better one ...
    assert plain[1] < plain[0]
    penalized = band_loss(errors, threshold, 0.5, 0.85, below_weight=0.1, failure_weight=1.0)
    # ... the penalty (slope 1 per unit log excess) reverses that, and leaves passing steps alone
    assert penalized[1] > penalized[0]
    assert float((penalized[1] - plain[1]).detach()) == pytest.approx(math.log(failing / threshold), rel=1e-12)
    assert torch.equal(penalized[[0, 2]], plain[[0, 2]])
    (gradient,) = torch.autograd.grad(penalized[1], errors)
    (plain_gradient,) = torch.autograd.grad(plain[1], errors)
    assert float(gradient[1]) == pytest.approx(float(plain_gradient[1]) + 1.0 / failing, rel=1e-12)


def test_learning_rate_follows_a_cosine_from_first_to_final():
    constant = tiny_params(epochs=5, **{"training.learning_rate_final": None})
    assert [learning_rate(constant, epoch) for epoch in range(1, 6)] == [constant.training.learning_rate] * 5
    params = tiny_params(epochs=5, **{"training.learning_rate": 1e-3, "training.learning_rate_final": 1e-4})
    rates = [learning_rate(params, epoch) for epoch in range(1, 6)]
    assert rates[0] == pytest.approx(1e-3, rel=1e-12) and rates[-1] == pytest.approx(1e-4, rel=1e-12)
    assert rates[2] == pytest.approx(5.5e-4, rel=1e-12)  # half way: the mean of the two
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))


def test_non_finite_steps_never_reach_the_weights(monkeypatch):
    params = tiny_params(**{"features.history_len": 0})
    # a float64 network, so that its constant output can be set to make dt exactly 0.5
    monkeypatch.setattr("aitimestepper.model.NETWORK_DTYPE", torch.float64)
    policy, optimizer, _, _ = setup(params)
    # system 1 is aimed so that the drift of a dt = 0.5 step puts both bodies on one point
    positions = torch.tensor([[[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
    velocities = torch.tensor([[[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [-1.5, 0.0]]], dtype=torch.float64)
    state = State.from_arrays(positions, velocities, torch.ones(2, 2, dtype=torch.float64))
    fraction = 0.5 / state.free_fall_time()
    network = policy.network
    with torch.no_grad():  # make the untrained network output exactly dt = 0.5 for both systems
        network.layers[-1].bias.fill_(math.log(fraction[1].item()))
    thresholds = torch.full((2,), params.energy_threshold, dtype=torch.float64)
    outcome = gated_step(policy, state, History.empty(state.batch_size, 0, 2), thresholds, params)
    assert outcome.finite.tolist() == [True, False]
    assert torch.isfinite(outcome.loss)
    before = [p.detach().clone() for p in network.parameters()]
    assert optimizer_step(outcome.loss, optimizer, network.parameters(), 1.0)
    assert all(torch.isfinite(p).all() for p in network.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters(), strict=True))


def test_training_is_deterministic(tmp_path):
    params = tiny_params()
    first = train(params, tmp_path / "a")
    second = train(params, tmp_path / "b")
    assert untimed(first.history) == untimed(second.history)
    for a, b in zip(
        first.policy.network.state_dict().values(), second.policy.network.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_training_does_not_depend_on_the_core_count(tmp_path):
    # wide enough that torch would split elementwise ops and sums across threads
    params = tiny_params(**{"model.hidden_sizes": [64, 64], "training.replay_batch_size": 1024})
    ambient = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = train(params, tmp_path / "two")
        assert torch.get_num_threads() == 2  # restored after training
        torch.set_num_threads(1)
        one = train(params, tmp_path / "one")
    finally:
        torch.set_num_threads(ambient)
    assert untimed(one.history) == untimed(two.history)
    for a, b in zip(one.policy.network.state_dict().values(), two.policy.network.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_round_trip_rebuilds_the_policy(tmp_path):
    params = tiny_params()
    result = train(params, tmp_path)
    raw = torch.load(result.model_path, weights_only=True)
    assert raw["contract"] == params.to_contract() and raw["dtype"] == "float64"
    policy = load_policy(result.model_path)
    kept = read_checkpoint(result.model_path)
    state = kepler_binary(
        sample_kepler_elements(
            8,
            torch.Generator().manual_seed(1),
            eccentricity_range=(0.5, 0.9),
            eccentricity_sampling="uniform",
            semi_major_axis_range=(1.0, 3.0),
            mass_ratio_range=(0.5, 1.0),
            total_mass=2.0,
            start_phase="random",
        )
    )
    history = policy.new_history(state)
    reference = LearnedPolicy(build_network(params), params)
    reference.network.load_state_dict(kept["model_state"])
    assert torch.equal(policy.propose(state, history), reference.propose(state, history))
    _, error = step_energy_error(state, policy.propose(state, history))
    assert torch.isfinite(error).all()


def test_bad_checkpoints_are_refused_clearly(tmp_path):
    params = tiny_params()
    result = train(params, tmp_path)
    payload = read_checkpoint(result.model_path)
    save_checkpoint(tmp_path / "future.pt", {**payload, "contract": {**payload["contract"], "contract_version": 99}})
    with pytest.raises(CheckpointError, match="version 99 is not supported"):
        load_policy(tmp_path / "future.pt")
    wider = {**payload["contract"], "model": {**payload["contract"]["model"], "hidden_sizes": [32, 16]}}
    save_checkpoint(tmp_path / "shapes.pt", {**payload, "contract": wider})
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_policy(tmp_path / "shapes.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_policy(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "missing.pt")


def untimed(history):
    """Per-epoch metrics without wall-clock times (the only thing allowed to differ)."""
    return [{k: v for k, v in epoch.items() if not k.endswith("time_s")} for epoch in history]


class Crash(Exception):
    pass


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    # a range of training thresholds: the per-system thresholds of Part 1 must be restored too
    params = tiny_params(epochs=3, **{"training.threshold_factor_min": 0.5, "training.threshold_factor_max": 2.0})
    uninterrupted = train(params, tmp_path / "whole")

    def crash_after_first_epoch(epoch, metrics):
        if epoch == 1:
            raise Crash

    with pytest.raises(Crash):
        train(params, tmp_path / "resumed", on_epoch=crash_after_first_epoch)
    assert read_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 1
    resumed = train(params, tmp_path / "resumed", resume=True)
    assert untimed(resumed.history) == untimed(uninterrupted.history)
    for a, b in zip(
        resumed.policy.network.state_dict().values(), uninterrupted.policy.network.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_resume_refuses_a_checkpoint_of_other_params(tmp_path):
    train(tiny_params(), tmp_path)
    with pytest.raises(ValueError, match="other params"):
        train(tiny_params(seed=7), tmp_path, resume=True)


def test_selection_prefers_every_system_passing_over_a_higher_overall_rate():
    """A low-eccentricity orbit takes few steps: its failures hardly move the overall pass rate,
    so model selection ranks snapshots by their worst system."""
    every_system = {"pass_rate": 0.9995, "worst_pass_rate": 0.9992, "steps_per_orbit": 200.0, "reached_end": 1.0}
    one_fails = {"pass_rate": 0.9999, "worst_pass_rate": 0.98, "steps_per_orbit": 150.0, "reached_end": 1.0}
    assert score(every_system) > score(one_fails)
    assert score({**every_system, "steps_per_orbit": 190.0}) > score(every_system)
    assert score(one_fails) > score({**one_fails, "reached_end": 0.5})
