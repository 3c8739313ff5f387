"""One learned model for a range of energy thresholds: the threshold input, its draws in training,
per-system thresholds in rollouts and validation."""

from __future__ import annotations

import math

import pytest
import torch

from aitimestepper.config import ParamsError, load_params
from aitimestepper.features import KEPLER_COLUMN, system_context
from aitimestepper.model import LearnedPolicy, build_network
from aitimestepper.policies import FixedStep
from aitimestepper.rollout import rollout
from aitimestepper.systems.kepler import KeplerElements, kepler_binary
from aitimestepper.training.mixture import draw_thresholds
from aitimestepper.training.validation import validate, validation_sets, validation_thresholds
from training_params import REPO, tiny_params


def binaries(eccentricities=(0.5, 0.9, 0.99)) -> KeplerElements:
    e = torch.tensor(eccentricities, dtype=torch.float64)
    ones = torch.ones_like(e)
    return KeplerElements(e, ones, ones, ones, torch.full_like(e, math.pi))


def untrained_policy(params) -> LearnedPolicy:
    torch.manual_seed(0)
    return LearnedPolicy(build_network(params), params)


def test_untrained_steps_follow_the_leapfrog_cube_law():
    """The output layer starts at zero weight, so the network is constant: the step at threshold
    eps / 8 is exactly half the step at eps (one-step error ~ dt**3) times the change of the
    analytic reference (the Kepler step, in units of eps**(1/3))."""
    params = tiny_params()
    policy = untrained_policy(params)
    state = kepler_binary(binaries())
    history = policy.new_history(state)
    full = policy.propose(state, history)
    eighth = policy.at_threshold(params.energy_threshold / 8).propose(state, history)

    def reference(threshold: float) -> torch.Tensor:
        log_threshold = torch.full((state.batch_size,), math.log(threshold), dtype=torch.float64)
        context = system_context(policy.look(state), history, log_threshold)
        return context[:, KEPLER_COLUMN]

    change = (reference(params.energy_threshold / 8) - reference(params.energy_threshold)).exp()
    torch.testing.assert_close(eighth, 0.5 * full * change, rtol=1e-13, atol=0.0)
    # at an apsis R vanishes and the step's error grows faster than dt**3 (as dt**5 at most here):
    # a smaller threshold allows relatively longer steps, between the cube law and the fifth-power one
    assert torch.all(change > 1.0) and torch.all(change < 8.0 ** (2.0 / 15.0))


def test_trained_network_reads_the_threshold(tiny_checkpoint):
    """Beyond the cube law the threshold is a network input: a trained model's step ratio
    between two thresholds is not exactly the prefactor's."""
    from aitimestepper.checkpoint import load_policy

    policy = load_policy(tiny_checkpoint)
    state = kepler_binary(binaries())
    history = policy.new_history(state)
    threshold = policy.params.energy_threshold
    ratio = policy.at_threshold(threshold / 8).propose(state, history) / policy.propose(state, history)
    assert not torch.allclose(ratio, torch.full_like(ratio, 0.5), rtol=1e-9, atol=0.0)


def test_per_system_thresholds_equal_separate_runs(tiny_checkpoint):
    from aitimestepper.checkpoint import load_policy

    policy = load_policy(tiny_checkpoint)
    state = kepler_binary(binaries((0.9, 0.9)))
    history = policy.new_history(state)
    thresholds = torch.tensor([2e-4, 5e-5], dtype=torch.float64)
    together = policy.at_threshold(thresholds).propose(state, history)
    apart = [policy.at_threshold(float(t)).propose(state, history)[k] for k, t in enumerate(thresholds)]
    assert together.tolist() == [float(a) for a in apart]
    assert together[1] < together[0]


def test_rollout_gates_each_system_at_its_own_threshold():
    state = kepler_binary(binaries((0.5, 0.5)))
    end = torch.full((2,), 0.2, dtype=torch.float64)
    thresholds = torch.tensor([1.0, 1e-20], dtype=torch.float64)
    result = rollout(state, FixedStep(0.05), end, energy_threshold=thresholds, max_steps=10)
    assert result.steps.tolist() == [4, 4]
    assert result.steps_passed.tolist() == [4, 0]


def test_training_thresholds_are_log_uniform_in_the_configured_range():
    params = tiny_params(**{"training.threshold_factor_min": 0.25, "training.threshold_factor_max": 4.0})
    drawn = draw_thresholds(params, 20_000, torch.Generator().manual_seed(0))
    factors = drawn / params.energy_threshold
    assert drawn.dtype == torch.float64
    assert factors.min() >= 0.25 and factors.max() <= 4.0
    # log-uniform: log2 of the factor is uniform on [-2, 2], mean 0 and variance 16 / 12
    log_factor = factors.log2()
    assert abs(float(log_factor.mean())) < 0.05
    assert abs(float(log_factor.var()) - 16 / 12) < 0.05
    again = draw_thresholds(params, 20_000, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)


def test_a_single_training_threshold_draws_nothing():
    params = tiny_params(**{"training.threshold_factor_min": 1.0, "training.threshold_factor_max": 1.0})
    generator = torch.Generator().manual_seed(0)
    state_before = generator.get_state()
    drawn = draw_thresholds(params, 5, generator)
    assert drawn.tolist() == [params.energy_threshold] * 5
    assert torch.equal(generator.get_state(), state_before)


def test_validation_covers_the_lowest_training_threshold(tiny_checkpoint):
    from aitimestepper.checkpoint import load_policy

    ranged = tiny_params(**{"training.threshold_factor_min": 0.5, "training.threshold_factor_max": 2.0})
    single = tiny_params(**{"training.threshold_factor_min": 1.0, "training.threshold_factor_max": 1.0})
    assert validation_thresholds(ranged) == (ranged.energy_threshold, 0.5 * ranged.energy_threshold)
    assert validation_thresholds(single) == (single.energy_threshold,)
    policy = load_policy(tiny_checkpoint)
    sets = validation_sets(ranged)
    both, one = validate(policy, ranged, sets), validate(policy, single, sets)
    # the lower threshold needs more steps per time scale, so the mean over both levels is larger
    assert both["steps_per_time_scale"] > one["steps_per_time_scale"]


def test_training_thresholds_must_stay_below_one(tmp_path):
    import yaml

    data = load_params(REPO / "params.yaml").model_dump(mode="json")
    data["energy_threshold"] = 0.2
    data["training"]["threshold_factor_max"] = 10.0
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match=r"threshold_factor_max = 2 must be < 1"):
        load_params(path)


def test_simulation_aims_a_learned_model_at_the_requested_threshold(tiny_checkpoint):
    from aitimestepper.simulate import simulate_from_params

    params = tiny_params()
    runs = {
        threshold: simulate_from_params(
            params, tiny_checkpoint, time_scales=0.5, energy_threshold=threshold, record=False
        )[0][0]
        for threshold in (None, params.energy_threshold / 8)
    }
    default, strict = runs[None], runs[params.energy_threshold / 8]
    assert default["energy_threshold"] == params.energy_threshold
    assert strict["energy_threshold"] == params.energy_threshold / 8
    # an eighth of the threshold: about twice the steps (dt ~ threshold^(1/3))
    ratio = strict["summary"]["mean_steps_per_time_scale"] / default["summary"]["mean_steps_per_time_scale"]
    assert 1.6 < ratio < 2.5


def test_simulation_aims_the_oracle_at_the_requested_threshold():
    """A classical rule that reads a threshold (the oracle) searches at the requested one, not
    at the params' (it would otherwise fail the stricter gate)."""
    from aitimestepper.simulate import simulate_from_params

    params = tiny_params()
    strict = params.energy_threshold / 8
    ((metrics, _),) = simulate_from_params(params, "oracle", time_scales=0.25, energy_threshold=strict, record=False)
    assert metrics["energy_threshold"] == strict
    assert metrics["summary"]["gate_pass_rate"] == 1.0
