"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch

from aitimestepper.physics.initial_conditions import virial_cluster
from aitimestepper.physics.state import State


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def cluster(generator) -> State:
    """Four 4-body 3-D clusters with unequal masses, softened, in virial equilibrium."""
    return virial_cluster(4, 4, generator, dim=3, mass_ratio_range=(0.2, 1.0), softening=0.01)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint from seconds of training (shared by the tests that only need some model)."""
    from aitimestepper.training.trainer import train
    from training_params import tiny_params

    directory = tmp_path_factory.mktemp("tiny_model")
    return train(tiny_params(), directory).model_path
