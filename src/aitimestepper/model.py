"""The learned time-step policy: an MLP from dimensionless features and the energy threshold to
dt / free-fall time."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from aitimestepper.config import Params
from aitimestepper.features import Snapshot, assemble, snapshot, snapshot_width
from aitimestepper.history import History
from aitimestepper.physics.state import DTYPE, State
from aitimestepper.policies import TimeStepPolicy

#: the network's own precision. The physics, the features and dt are float64; the network only maps
#: O(1) standardized inputs to log(dt / t_ff), where float32's 7 digits are ample, and float32 tanh
#: and matrix products cost about half their float64 versions on a CPU.
NETWORK_DTYPE = torch.float32

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


class TimeStepNet(nn.Module):
    """MLP mapping (B, F) inputs to (B,) log(dt / t_ff), t_ff the shortest free-fall time.

    Predicting the step relative to the state's own dynamical time makes one network serve
    systems of any length, mass and time scale. Inputs are standardized (in float64) with
    constants stored as buffers (so they travel in the ``state_dict``); the layers compute in
    ``NETWORK_DTYPE``; the output, float64 again, is clamped to [log min_fraction, log max_fraction].
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
            layers += [nn.Linear(width, hidden, dtype=NETWORK_DTYPE), _ACTIVATIONS[activation]()]
            width = hidden
        output = nn.Linear(width, 1, dtype=NETWORK_DTYPE)
        nn.init.zeros_(output.weight)
        nn.init.constant_(output.bias, math.log(initial_fraction))
        self.layers = nn.Sequential(*layers, output)
        self.register_buffer("feature_mean", torch.zeros(feature_dim, dtype=DTYPE))
        self.register_buffer("feature_scale", torch.ones(feature_dim, dtype=DTYPE))
        self.log_min, self.log_max = math.log(min_fraction), math.log(max_fraction)
        self.compute_dtype = NETWORK_DTYPE

    def set_normalization(self, features: Tensor) -> None:
        """Standardize inputs with the mean and spread of ``features`` (S, F); constant columns
        (e.g. zero padding) get scale 1."""
        self.feature_mean.copy_(features.mean(dim=0))
        spread = features.std(dim=0)
        self.feature_scale.copy_(torch.where(spread > 1e-8, spread, torch.ones_like(spread)))

    def forward(self, features: Tensor) -> Tensor:
        """(B, F) float64 inputs -> (B,) float64 log(dt / t_ff) before the threshold scaling."""
        normalized = ((features - self.feature_mean) / self.feature_scale).to(self.compute_dtype)
        return self.layers(normalized).squeeze(-1).to(features.dtype).clamp(self.log_min, self.log_max)


def network_input_dim(params: Params) -> int:
    """The network reads the features of ``params`` plus one column, log(threshold / energy_threshold)."""
    return params.feature_dim + 1


def build_network(params: Params) -> TimeStepNet:
    """The network described by ``params`` (its architecture part of the config contract)."""
    model = params.model
    return TimeStepNet(
        feature_dim=network_input_dim(params),
        hidden_sizes=tuple(model.hidden_sizes),
        activation=model.activation,
        initial_fraction=model.initial_dt_fraction,
        min_fraction=model.min_dt_fraction,
        max_fraction=model.max_dt_fraction,
    )


class LearnedPolicy(TimeStepPolicy):
    """The network as a time-step policy aimed at an energy threshold eps:

        dt = t_ff * (eps / eps_0) ** (1/3) * exp(net(features(state, history), log(eps / eps_0)))

    with eps_0 the params' ``energy_threshold``. Leapfrog's one-step energy error grows as dt**3,
    so the prefactor moves the step to another threshold to leading order; the network, trained
    on thresholds drawn from [threshold_factor_min, threshold_factor_max] x eps_0, corrects the
    rest (the dt**3 law is not exact at large steps).
    """

    name = "learned"

    def __init__(self, network: TimeStepNet, params: Params, energy_threshold: float | Tensor | None = None) -> None:
        self.network = network
        self.params = params
        self.family = params.features.family
        self.history_len = params.features.history_len
        self.energy_threshold = params.energy_threshold if energy_threshold is None else energy_threshold

    def at_threshold(self, energy_threshold: float | Tensor) -> LearnedPolicy:
        """The same network aimed at another threshold: a float, or (B,) one per system."""
        return LearnedPolicy(self.network, self.params, energy_threshold)

    def new_history(self, state: State) -> History:
        return History.empty(state.batch_size, self.history_len, snapshot_width(self.family))

    def step_size(
        self, state: State, history: History, energy_threshold: Tensor | None = None
    ) -> tuple[Tensor, Snapshot]:
        """(B,) time steps, differentiable with respect to the network's parameters, and the
        snapshot of ``state`` they were computed from (to push into ``history`` after the step).

        Args:
            state: B systems.
            history: their snapshot windows.
            energy_threshold: optional (B,) float64 threshold per system; default: the policy's
                (a float for all systems, or (B,)).
        """
        look = snapshot(state, self.family)
        if energy_threshold is None:
            energy_threshold = self.energy_threshold
        if isinstance(energy_threshold, Tensor):
            log_ratio = (energy_threshold / self.params.energy_threshold).log()
            column = log_ratio.unsqueeze(1)
        else:  # one threshold for all: a constant column (fewer tensor operations per step)
            log_ratio = math.log(energy_threshold / self.params.energy_threshold)
            column = look.free_fall_time.new_full((state.batch_size, 1), log_ratio)
        inputs = torch.cat([assemble(look.rows, history, self.family), column], dim=1)
        return look.free_fall_time * (self.network(inputs) + log_ratio / 3.0).exp(), look

    def propose(self, state: State, history: History) -> Tensor:
        return self.propose_with_snapshot(state, history)[0]

    def propose_with_snapshot(self, state: State, history: History) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            dt, look = self.step_size(state, history)
        return dt, look.rows
