"""The evaluation stage and the classical yardsticks it compares against."""

from __future__ import annotations

import json

import pytest
import torch

from aitimestepper.evaluate import binary_family, evaluate, headline, write_report
from aitimestepper.history import History
from aitimestepper.policies import EnergyFeedback, FreeFall, Oracle, TimeSymmetricFreeFall
from aitimestepper.rollout import rollout
from aitimestepper.training.validation import validation_binaries
from systems import binary, binary_elements
from training_params import SMALL_EVALUATION, tiny_params


def test_model_selection_never_sees_a_held_out_binary():
    params = tiny_params()
    held_out = binary_family(params, scaled=False).elements
    validation = validation_binaries(params)
    evaluated = set(zip(held_out.eccentricity.tolist(), held_out.mean_anomaly.tolist(), strict=True))
    selected_on = set(zip(validation.eccentricity.tolist(), validation.mean_anomaly.tolist(), strict=True))
    assert len(selected_on) == validation.eccentricity.numel() > 0
    assert not {e for e, _ in selected_on} & {e for e, _ in evaluated}
    assert not selected_on & evaluated


def test_gated_rollout_keeps_every_step_under_the_threshold_at_a_counted_cost():
    elements = binary_elements([0.9, 0.99])
    state = binary([0.9, 0.99])
    end = 2.0 * elements.period
    ungated = rollout(state, FreeFall(0.05), end, energy_threshold=2e-4, max_steps=100_000)
    gated = rollout(state, FreeFall(0.05), end, energy_threshold=2e-4, max_steps=100_000, gated=True)
    assert (ungated.steps_passed < ungated.steps).all()  # eta = 0.05 is too bold here
    assert (gated.steps_passed == gated.steps).all()
    assert (gated.force_evaluations > gated.steps).all()  # rejected tries are counted
    assert gated.reached_end.all()


def test_energy_feedback_controller_aims_at_its_target():
    state = binary([0.5, 0.9])
    end = 2.0 * binary_elements([0.5, 0.9]).period
    result = rollout(
        state, EnergyFeedback(2e-4, target=0.5), end, energy_threshold=2e-4, max_steps=100_000, gated=True, record=True
    )
    assert (result.steps_passed == result.steps).all()
    oracle = rollout(state, Oracle(2e-4), end, energy_threshold=2e-4, max_steps=100_000)
    ratio = result.force_evaluations.double() / oracle.steps.double()
    assert (ratio > 1.0).all() and (ratio < 3.0).all()  # reference: about 1.3x in force evaluations


def test_time_symmetric_free_fall_counts_its_extra_pass():
    state = binary([0.5])
    end = binary_elements([0.5]).period
    result = rollout(state, TimeSymmetricFreeFall(0.02), end, energy_threshold=2e-4, max_steps=100_000)
    assert result.force_evaluations.item() == 2 * result.steps.item()
    plain = FreeFall(0.02).propose(state, History.empty(state.batch_size, 0, 0))
    symmetric = TimeSymmetricFreeFall(0.02).propose(state, History.empty(state.batch_size, 0, 0))
    assert not torch.equal(plain, symmetric)


@pytest.mark.slow
def test_evaluation_report_of_a_small_suite(tmp_path, tiny_checkpoint):
    params = tiny_params()
    data = params.model_dump()
    data["evaluation"].update(SMALL_EVALUATION, extra_thresholds=[1e-4])
    params = type(params).model_validate(data)
    report = evaluate(params, str(tiny_checkpoint))
    write_report(report, tmp_path / "evaluate.json", tmp_path / "plots", params=params, source=str(tiny_checkpoint))
    saved = json.loads((tmp_path / "evaluate.json").read_text())
    assert set(saved["thresholds"]) == {"0.0002", "0.0001"}
    families = saved["thresholds"]["0.0002"]["families"]
    assert set(families) == {"binaries", "scaled", "three_body"}
    assert set(saved["thresholds"]["0.0001"]["families"]) == {"binaries", "scaled"}
    assert len(families["binaries"]["systems"]) == 12 and len(families["scaled"]["systems"]) == 24
    assert "fixed" not in families["scaled"]["summary"]
    assert families["binaries"]["summary"]["oracle"]["median_ratio_to_oracle"] == 1.0
    assert families["binaries"]["summary"]["learned_gated"]["gate_pass_rate"] == 1.0
    # scale-free features and dt in free-fall times: the scaled copies take the same steps
    assert saved["thresholds"]["0.0002"]["scale_transfer"]["learned_max_relative_steps_difference"] < 0.02
    assert 0 < headline(saved)["pass_rate"] <= 1
    for name in ("cost_vs_error_binaries.png", "cost_vs_error_three_body.png", "dt_vs_phase.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 5_000
