"""The learned time-step policy: an MLP from dimensionless features to dt / free-fall time."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from aitimestepper.config import Params
from aitimestepper.features import Snapshot, assemble, snapshot, snapshot_width
from aitimestepper.history import History
from aitimestepper.physics.state import DTYPE, State
from aitimestepper.policies import TimeStepPolicy

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


class TimeStepNet(nn.Module):
    """MLP mapping (B, F) features to (B,) log(dt / t_ff), t_ff the shortest free-fall time.

    Predicting the step relative to the state's own dynamical time makes one network serve
    systems of any length, mass and time scale. Inputs are standardized with constants stored
    as buffers (so they travel in the ``state_dict``); the output is clamped to
    [log min_fraction, log max_fraction]. Float64 throughout, like the physics.
    """

    def __init__(
        self,
        feature_dim: int,
        hidden_sizes: tuple[int, ...],
        activation: str,
        initial_fraction: float,
        min_fraction: float,
        max_fraction: float,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = feature_dim
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden, dtype=DTYPE), _ACTIVATIONS[activation]()]
            width = hidden
        output = nn.Linear(width, 1, dtype=DTYPE)
        nn.init.zeros_(output.weight)
        nn.init.constant_(output.bias, math.log(initial_fraction))
        self.layers = nn.Sequential(*layers, output)
        self.register_buffer("feature_mean", torch.zeros(feature_dim, dtype=DTYPE))
        self.register_buffer("feature_scale", torch.ones(feature_dim, dtype=DTYPE))
        self.log_min, self.log_max = math.log(min_fraction), math.log(max_fraction)

    def set_normalization(self, features: Tensor) -> None:
        """Standardize inputs with the mean and spread of ``features`` (S, F); constant columns
        (e.g. zero padding) get scale 1."""
        self.feature_mean.copy_(features.mean(dim=0))
        spread = features.std(dim=0)
        self.feature_scale.copy_(torch.where(spread > 1e-8, spread, torch.ones_like(spread)))

    def forward(self, features: Tensor) -> Tensor:
        """(B, F) features -> (B,) log(dt / t_ff)."""
        normalized = (features - self.feature_mean) / self.feature_scale
        return self.layers(normalized).squeeze(-1).clamp(self.log_min, self.log_max)


def build_network(params: Params) -> TimeStepNet:
    """The network described by ``params`` (its architecture part of the config contract)."""
    model = params.model
    return TimeStepNet(
        feature_dim=params.feature_dim,
        hidden_sizes=tuple(model.hidden_sizes),
        activation=model.activation,
        initial_fraction=model.initial_dt_fraction,
        min_fraction=model.min_dt_fraction,
        max_fraction=model.max_dt_fraction,
    )


class LearnedPolicy(TimeStepPolicy):
    """The network as a time-step policy: dt = scale * t_ff * exp(net(features(state, history))).

    ``scale`` is 1 at the threshold the network was trained for; :meth:`at_threshold` moves it
    to another one.
    """

    name = "learned"

    def __init__(self, network: TimeStepNet, params: Params, scale: float = 1.0) -> None:
        self.network = network
        self.params = params
        self.family = params.features.family
        self.history_len = params.features.history_len
        self.scale = scale

    def at_threshold(self, energy_threshold: float) -> LearnedPolicy:
        """The same network aimed at another threshold: leapfrog's one-step energy error grows
        as dt**3, so steps are scaled by (threshold / trained threshold) ** (1/3)."""
        ratio = energy_threshold / self.params.energy_threshold
        return LearnedPolicy(self.network, self.params, scale=ratio ** (1.0 / 3.0))

    def new_history(self, state: State) -> History:
        return History.empty(state.batch_size, self.history_len, snapshot_width(self.family))

    def step_size(self, state: State, history: History) -> tuple[Tensor, Snapshot]:
        """(B,) time steps, differentiable with respect to the network's parameters, and the
        snapshot of ``state`` they were computed from (to push into ``history`` after the step)."""
        look = snapshot(state, self.family)
        features = assemble(look.rows, history, self.family)
        return self.scale * look.free_fall_time * self.network(features).exp(), look

    def propose(self, state: State, history: History) -> Tensor:
        return self.propose_with_snapshot(state, history)[0]

    def propose_with_snapshot(self, state: State, history: History) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            dt, look = self.step_size(state, history)
        return dt, look.rows
