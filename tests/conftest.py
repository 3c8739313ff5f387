"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch

from aitimestepper.physics.state import State
from aitimestepper.runtime import Runtime
from aitimestepper.systems.families import plummer_clusters


def pytest_configure(config) -> None:
    """The command line's numerics (and one torch thread) before the first torch operation."""
    Runtime().apply()


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def cluster(generator) -> State:
    """Four 4-body 3-D Plummer clusters with unequal masses, softened, in virial equilibrium."""
    (group,) = plummer_clusters(4, generator, dim=3, bodies=(4,), mass_spread=(0.2, 1.0), softening=(0.01, 0.01))
    return group.state


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint from seconds of training (shared by the tests that only need some model)."""
    from aitimestepper.training.trainer import train
    from training_params import tiny_params

    directory = tmp_path_factory.mktemp("tiny_model")
    return train(tiny_params(), directory).model_path
