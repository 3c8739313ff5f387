"""The two-phase trainer on the mixture: Part 1 gating and re-draws, warm-up discard, Part 2, loss,
selection by the worst family, determinism, checkpoints, resume."""

from __future__ import annotations

import math

import pytest
import torch

from aitimestepper.checkpoint import CheckpointError, load_policy, read_checkpoint, save_checkpoint
from aitimestepper.config import MODEL_SETTINGS
from aitimestepper.history import History
from aitimestepper.model import LearnedPolicy, build_network
from aitimestepper.physics.integrator import step_energy_error
from aitimestepper.physics.state import State
from aitimestepper.systems.families import binaries
from aitimestepper.training.buffer import ReplayBuffer
from aitimestepper.training.collection import Collector, RetrainLimitError
from aitimestepper.training.loss import band_loss, quantile_loss
from aitimestepper.training.mixture import MixtureSampler, allocate, sources
from aitimestepper.training.replay import replay
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
    return policy, optimizer, MixtureSampler(params, generator), generator


def untimed(history):
    """Per-epoch metrics without wall-clock times (the only thing allowed to differ)."""
    return [{k: v for k, v in epoch.items() if not k.endswith("time_s")} for epoch in history]


def test_the_mixture_shares_the_systems_among_every_family_dimension_and_body_count():
    params = tiny_params(**{"training.num_systems": 64, "systems.plummer.weight": 2.0})
    chosen = sources(params)
    labels = {source.label for source in chosen}
    assert {"binary/2d/n2", "binary/3d/n2", "planetary/3d/n3", "plummer/2d/n8", "democratic_triple/3d/n3"} <= labels
    counts = allocate(params, chosen)
    assert sum(counts) >= params.training.num_systems and min(counts) >= 1
    share = {name: sum(c for s, c in zip(chosen, counts, strict=True) if s.name == name) for name in params.systems}
    assert share["plummer"] >= 1.5 * share["binary"]  # weight 2 against 1 (rounded per source)
    lanes = MixtureSampler(params, torch.Generator().manual_seed(0)).lanes()
    assert set(lanes) == {2, 3, 4, 8}
    for bodies, (state, time_scale, source) in lanes.items():
        assert state.num_bodies == bodies and state.dim == 3  # planar systems embedded with z = 0
        assert torch.all(time_scale > 0) and torch.all(state.energy() < 0)
        assert {chosen[k].bodies for k in source.tolist()} == {bodies}
    with pytest.raises(ValueError, match="at least one family needs a weight > 0"):
        tiny_params(**{f"systems.{name}.weight": 0.0 for name in params.systems})


def test_part1_rejects_a_too_large_step_and_retrains_until_accepted():
    params = tiny_params(**{"model.initial_correction": 5.0, "features.history_len": 0})
    policy, optimizer, sampler, _ = setup(params)
    collector = Collector(params, sampler)
    lanes = list(collector.lanes.values())
    first = gated_step(policy, lanes[0].state, lanes[0].history, lanes[0].threshold, params)[0]
    assert not first.passed.all()  # five energy-normalised free-fall steps are far too long
    buffer = ReplayBuffer(1000)
    stats = collector.collect(policy, optimizer, buffer).values
    assert stats["retrain_steps"] > 0 and stats["acceptance_rate"] < 1
    assert stats["error_over_threshold_max"] <= 1.0  # every accepted step within its system's threshold
    assert len(buffer) == collector.num_systems * params.training.steps_per_epoch
    for lane in collector.lanes.values():
        assert torch.all(lane.state.time > 0) and torch.isfinite(lane.state.positions).all()


def test_a_system_stuck_on_one_state_is_redrawn_instead_of_stalling_the_epoch():
    # steps 4x too long fail at once; a large learning rate brings them back within tens of retries
    settings = {"model.initial_correction": 4.0, "training.max_retries_per_state": 1, "training.steps_per_epoch": 1}
    params = tiny_params(**settings, **{"training.learning_rate": 0.1, "training.learning_rate_final": 0.1})
    policy, optimizer, sampler, _ = setup(params)
    stats = Collector(params, sampler).collect(policy, optimizer, ReplayBuffer(1000)).values
    assert stats["stuck_redrawn"] > 0
    assert stats["acceptance_rate"] > 0


def test_retrain_cap_gives_a_clear_error():
    params = tiny_params(**{"model.initial_correction": 10.0, "training.max_retrain_steps": 2})
    policy, optimizer, sampler, _ = setup(params)
    with pytest.raises(RetrainLimitError, match="max_retrain_steps = 2"):
        Collector(params, sampler).collect(policy, optimizer, ReplayBuffer(100))


def test_warm_up_steps_are_discarded():
    params = tiny_params(**{"features.history_len": 3, "training.steps_per_epoch": 2})
    policy, optimizer, sampler, _ = setup(params)
    collector = Collector(params, sampler)
    systems = collector.num_systems
    buffer = ReplayBuffer(1000)
    stats = collector.collect(policy, optimizer, buffer).values
    assert len(buffer) == 0  # 2 accepted steps < 3 history slots: every state was warm-up
    assert stats["warmup_discarded"] == 2 * systems
    stats = collector.collect(policy, optimizer, buffer).values
    # third step: 1 slot still padded for the state before it; fourth: window full
    assert stats["warmup_discarded"] == systems
    assert len(buffer) == systems
    assert all(bool((ring.tensors["filled"][: ring.size] == 3).all()) for ring in buffer.rings.values())


def test_the_buffer_keeps_each_states_time_and_tidal_field():
    """Replayed states are the collected ones: a host on a circular orbit is where it was at the
    state's time, and systems without a field (host mass 0) share the ring with systems in one."""
    from aitimestepper.physics.integrator import leapfrog_step
    from aitimestepper.physics.state import State
    from aitimestepper.systems import tidal_systems
    from aitimestepper.training.mixture import embed_in_3d

    (in_field,) = tidal_systems(3, torch.Generator().manual_seed(3), dim=2, bodies=(2,), orbits=("circular",))
    (bare,) = binaries(2, torch.Generator().manual_seed(4), dim=2)
    state = embed_in_3d(State.concatenate([in_field.state, bare.state]))
    state = leapfrog_step(state, torch.full((5,), 0.01, dtype=torch.float64))
    buffer = ReplayBuffer(10)
    buffer.add(state, History.empty(5, 0, 4))
    replayed, _ = buffer.gather(2, torch.arange(5))
    assert torch.equal(replayed.time, state.time)
    assert replayed.external.present.tolist() == [True, True, True, False, False]
    assert torch.equal(replayed.external.host_position, state.external.host_position)
    assert torch.equal(replayed.energy(), state.energy())
    assert torch.equal(replayed.accelerations, state.accelerations)


def synthetic_buffer(count=256):
    """States of moderately eccentric 3-D binaries, in a buffer without history."""
    (group,) = binaries(
        count, torch.Generator().manual_seed(5), dim=3, eccentricity=(0.3, 0.7), start_phase="random_true_anomaly"
    )
    buffer = ReplayBuffer(count)
    buffer.add(group.state, History.empty(count, 0, 4))
    return buffer


def test_part2_runs_batched_and_converges_on_a_synthetic_buffer():
    params = tiny_params(
        **{
            "features.history_len": 0,
            "model.initial_correction": 3.0,  # too long for many phases: Part 2 must fix it
            "training.replay_batch_size": 64,
            "training.replay_steps": 400,
            "training.replay_min_steps": 1,
            "training.learning_rate": 3e-3,
        }
    )
    policy, optimizer, _, generator = setup(params)
    buffer = synthetic_buffer()
    state, history = buffer.gather(2, torch.arange(len(buffer)))
    assert not gated_step(policy, state, history, torch.full((len(buffer),), 2e-4), params)[0].passed.all()
    stats = replay(policy, optimizer, buffer, params, generator)
    assert stats["converged"] == 1.0
    assert 1 < stats["iterations"] < 400
    assert stats["pass_rate"] == 1.0


def test_band_loss_pushes_dt_up_when_the_error_is_far_below_the_band():
    params = tiny_params(
        **{
            "features.history_len": 0,
            "model.initial_correction": 2e-3,
            "training.replay_min_steps": 100,
            "training.replay_steps": 100,
        }
    )
    policy, optimizer, _, generator = setup(params)
    buffer = synthetic_buffer()
    state, history = buffer.gather(2, torch.arange(len(buffer)))
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
    # squared log distances from the band: 0.1 x log(0.5e-4 / 1e-8)^2 below, log(5 / 0.85)^2 above
    assert loss[0].item() == pytest.approx(0.1 * math.log(0.5e-4 / 1e-8) ** 2, rel=1e-9)
    assert loss[2].item() == pytest.approx(math.log(5e-4 / 0.85e-4) ** 2, rel=1e-9)
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


def test_quantile_loss_puts_the_gate_at_the_requested_share_of_passing_steps():
    """For errors a network cannot tell apart (log-uniform over two decades around the gate), the
    step scale minimising the quantile loss makes the requested share pass: one log dt, shifting
    every log error by 3 log dt, fitted by gradient descent."""
    threshold, pass_rate = 1e-4, 0.99
    spread = torch.linspace(-2.3, 2.3, 2001, dtype=torch.float64)  # log errors at dt = 1
    log_dt = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([log_dt], lr=0.02)
    for _ in range(3000):
        error = threshold * (spread + 3.0 * log_dt).exp()
        loss = quantile_loss(error, threshold, pass_rate).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    passing = float((spread + 3.0 * log_dt.detach() <= 0).double().mean())
    assert passing == pytest.approx(pass_rate, abs=0.003)
    # below the gate the loss is log(threshold / error); above, pass_rate / (1 - pass_rate) times log(error / threshold)
    values = quantile_loss(torch.tensor([1e-5, 1e-4, 1e-3], dtype=torch.float64), threshold, pass_rate)
    torch.testing.assert_close(values, torch.tensor([math.log(10.0), 0.0, 99.0 * math.log(10.0)], dtype=torch.float64))


def test_learning_rate_follows_a_cosine_from_first_to_final():
    constant = tiny_params(epochs=5, **{"training.learning_rate_final": None})
    assert [learning_rate(constant, epoch) for epoch in range(1, 6)] == [constant.training.learning_rate] * 5
    params = tiny_params(epochs=5, **{"training.learning_rate": 1e-3, "training.learning_rate_final": 1e-4})
    rates = [learning_rate(params, epoch) for epoch in range(1, 6)]
    assert rates[0] == pytest.approx(1e-3, rel=1e-12) and rates[-1] == pytest.approx(1e-4, rel=1e-12)
    assert rates[2] == pytest.approx(5.5e-4, rel=1e-12)  # half way: the mean of the two
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))


def test_non_finite_steps_never_reach_the_weights():
    params = tiny_params(**{"features.history_len": 0})
    policy, optimizer, _, _ = setup(params)
    # system 1: bodies 1e100 apart at 1e150 speed; its step (1e280) drifts past the float64 range
    positions = torch.tensor([[[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [1e100, 0.0]]], dtype=torch.float64)
    velocities = torch.tensor([[[0.0, -0.5], [0.0, 0.5]], [[0.0, 0.0], [0.0, 1e150]]], dtype=torch.float64)
    state = State.from_arrays(positions, velocities, torch.ones(2, 2, dtype=torch.float64))
    thresholds = torch.full((2,), params.energy_threshold, dtype=torch.float64)
    outcome, loss = gated_step(policy, state, History.empty(2, 0, 4), thresholds, params)
    assert outcome.finite.tolist() == [True, False]
    assert not outcome.passed[1] and outcome.error[1] == math.inf
    assert torch.isfinite(loss)
    before = [p.detach().clone() for p in policy.network.parameters()]
    assert optimizer_step(loss, optimizer, policy.network.parameters(), 1.0)
    assert all(torch.isfinite(p).all() for p in policy.network.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.network.parameters(), strict=True))


def test_a_tiny_training_on_the_mixture_validates_every_family(tmp_path):
    params = tiny_params()
    result = train(params, tmp_path)
    last = result.history[-1]
    for family in params.systems:
        assert 0.0 <= last[f"validation/{family}/worst_pass_rate"] <= 1.0
        assert last[f"validation/{family}/steps_per_time_scale"] > 0
    assert last["validation/worst_family_pass_rate"] == min(
        min(last[f"validation/{family}/worst_pass_rate"], 0.999) for family in params.systems
    )
    assert result.model_path.is_file() and result.checkpoint_path.is_file()
    assert result.summary["kept_epoch"] in (1, 2)


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
    assert raw["contract"] == params.model_contract()
    assert set(raw["contract"]) == {"contract_version", *MODEL_SETTINGS}  # nothing a later stage reads
    assert raw["dtype"] == {"physics_and_features": "float64", "network_layers": "float32"}
    policy = load_policy(result.model_path)
    kept = read_checkpoint(result.model_path)
    (group,) = binaries(8, torch.Generator().manual_seed(1), dim=3, semi_major_axis=(1.0, 3.0), total_mass=2.0)
    state, history = group.state, policy.new_history(group.state)
    reference = LearnedPolicy(build_network(params), params)
    reference.network.load_state_dict(kept["model_state"])
    assert torch.equal(policy.propose(state, history), reference.propose(state, history))
    _, error = step_energy_error(state, policy.propose(state, history))
    assert torch.isfinite(error).all()


def test_the_same_payload_is_saved_as_the_same_bytes(tmp_path):
    """Checkpoints are written atomically through randomly named temporary files; the bytes must
    not depend on those names (DVC hashes them: a re-run that trains the same weights is a no-op)."""
    payload = {"format": "aitimestepper", "weights": torch.arange(6.0)}
    save_checkpoint(tmp_path / "a.pt", payload)
    save_checkpoint(tmp_path / "other_name.pt", payload)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "other_name.pt").read_bytes()


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


class Crash(Exception):
    pass


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    # a range of training thresholds and a history window: per-system state of Part 1 is restored
    params = tiny_params(epochs=3, **{"features.history_len": 1})
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


def test_resume_refuses_other_training_params_only(tmp_path):
    train(tiny_params(), tmp_path)
    with pytest.raises(ValueError, match="other training params"):
        train(tiny_params(seed=7), tmp_path, resume=True)
    # an edit to a section training does not read is no reason to refuse
    resumed = train(
        tiny_params(epochs=3, **{"evaluation.seed": 123, "simulation.max_steps": 10}), tmp_path, resume=True
    )
    assert len(resumed.history) == 3


def test_selection_is_by_the_worst_family_then_the_fewest_steps():
    """Every family passing beats a higher overall rate with one family failing; among equals
    (rates capped at 99.9%), fewer steps win."""
    every_family = {"worst_family_pass_rate": 0.9992, "steps_per_time_scale": 200.0}
    one_fails = {"worst_family_pass_rate": 0.98, "steps_per_time_scale": 150.0}
    assert score(every_family) > score(one_fails)
    assert score({**every_family, "steps_per_time_scale": 190.0}) > score(every_family)
    assert score({"worst_family_pass_rate": 1.0, "steps_per_time_scale": 201.0}) < score(every_family)
