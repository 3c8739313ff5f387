"""Tiny, fast training settings for the tests."""

from __future__ import annotations

from pathlib import Path

from aitimestepper.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]


#: a held-out suite small enough for the tests: every family kind, 1 system per dimension, short runs
SMALL_SUITE = {
    "binaries": {"family": "binary", "eccentricity": [0.3, 0.9], "systems": 1, "duration": 1.0},
    "hierarchical_triples": {"family": "hierarchical_triple", "period_ratio": [10, 30], "systems": 1, "duration": 1.0},
    "democratic_triples": {"family": "democratic_triple", "softening": [0.02, 0.05], "systems": 1, "duration": 0.5},
    "planetary": {"family": "planetary", "planets": [1, 2], "systems": 1, "duration": 1.0},
    "plummer": {"family": "plummer", "bodies": [4], "softening": [0.05, 0.1], "systems": 1, "duration": 0.25},
    "tidal": {"family": "tidal", "bodies": [2], "systems": 1, "duration": 0.5},
}
SMALL_EVALUATION = {
    "suite": SMALL_SUITE,
    "tuning_systems": 1,
    "tuning_duration": 0.25,
    "controller_targets": [0.5, 0.9],
}


def tiny_params(**overrides) -> Params:
    """The shipped params shrunk to seconds of training; ``overrides`` use dotted keys."""
    data = load_params(REPO / "params.yaml").model_dump()
    settings = {
        "epochs": 2,
        "training.num_systems": 24,
        "training.steps_per_epoch": 4,
        "training.replay_batch_size": 64,
        "training.replay_steps": 10,
        "training.replay_min_steps": 5,
        "training.validation_systems": 1,
        "training.validation_duration": 0.25,
        "training.validate_every": 1,
        "systems.planetary.planets": [1, 2],
        "systems.plummer.bodies": [4, 8],
        "model.hidden_sizes": [16],
        "simulation.movie.frames": 12,
        **overrides,
    }
    for key, value in settings.items():
        *sections, leaf = key.split(".")
        target = data
        for section in sections:
            target = target[section]
        target[leaf] = value
    return Params.from_values(data)
