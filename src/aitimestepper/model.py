"""The learned time-step policy: a network shared over pairs corrects each candidate pair's
energy-normalised free-fall step; a soft minimum over the pairs gives the system's step.

For B systems, each with K candidate pairs (:func:`aitimestepper.features.look`):

    log dt = softmin_T over k of [log step_k + g(pair_k, system)] + kepler + (1/3) log eps

with step_k the pair's energy-normalised free-fall step, eps the energy threshold (leapfrog's
one-step error grows as dt**3), kepler the Kepler step of the context (log over the smallest
step_k eps**(1/3): the step at which the candidates' exact two-body errors and the leading order
of the rest reach the gate; the network corrects it where the rest or the perturbations of the
candidates matter, reading the quintic step among the context) and g a small
network shared over pairs (DeepSets): an embedding of each pair's features and the system
context, the mean of the embeddings over the candidates, and a head reading both. T = 1/3 makes
the soft minimum add the pairs' errors as dt**3 does. For a binary (one pair) this is a network of
the pair's state times its Kepler step (the greedy oracle's step, to the bisections' precision);
it reads log(eps / eps_0) (eps_0 the params' ``energy_threshold``)
to correct the dt**3 law where it is not exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from aitimestepper.config import Params
from aitimestepper.features import (
    KEPLER_COLUMN,
    PAIR_FEATURES,
    ROW_WIDTH,
    PairLook,
    context_dim,
    history_row,
    look,
    system_context,
)
from aitimestepper.history import History
from aitimestepper.physics.state import DTYPE, State
from aitimestepper.policies import TimeStepPolicy

#: the network's own precision. The physics, the features and dt are float64; the network only maps
#: O(1) standardized inputs to O(1) log corrections, where float32's 7 digits are ample, and float32
#: tanh and matrix products cost about half their float64 versions on a CPU.
NETWORK_DTYPE = torch.float32

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}
#: standardized inputs are clipped to +-INPUT_CLIP (NaN to 0): an extreme state (a feature of
#: +-inf) must give a finite step, which the gate can then refuse
INPUT_CLIP = 100.0


class PairNet(nn.Module):
    """g: per-candidate log corrections (B, K) from pair features (B, K, F) and context (B, C):
    a head reading each pair's embedding and their mean, plus a linear path from the inputs.

    Inputs are standardized in float64 with constants stored as buffers (they travel in the
    ``state_dict``); the layers compute in ``NETWORK_DTYPE``; the output, float64 again, is
    clamped to [log min_correction, log max_correction]. The head starts at zero weights and a
    bias of log initial_correction, so an untrained policy takes initial_correction times the
    energy-normalised free-fall step.
    """

    def __init__(
        self,
        context_dim: int,
        hidden_sizes: tuple[int, ...],
        activation: str,
        initial_correction: float,
        min_correction: float,
        max_correction: float,
    ) -> None:
        super().__init__()
        act = _ACTIVATIONS[activation]
        layers: list[nn.Module] = []
        width = PAIR_FEATURES + context_dim
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden, dtype=NETWORK_DTYPE), act()]
            width = hidden
        self.embed = nn.Sequential(*layers)
        output = nn.Linear(width, 1, dtype=NETWORK_DTYPE)
        nn.init.zeros_(output.weight)
        nn.init.constant_(output.bias, math.log(initial_correction))
        self.head = nn.Sequential(nn.Linear(2 * width, width, dtype=NETWORK_DTYPE), act(), output)
        # a linear path from the inputs, so that linear rules (a controller's update from the last
        # step's error, say) are exact rather than approximated by saturating layers
        self.skip = nn.Linear(PAIR_FEATURES + context_dim, 1, dtype=NETWORK_DTYPE)
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)
        self.register_buffer("pair_mean", torch.zeros(PAIR_FEATURES, dtype=DTYPE))
        self.register_buffer("pair_scale", torch.ones(PAIR_FEATURES, dtype=DTYPE))
        self.register_buffer("context_mean", torch.zeros(context_dim, dtype=DTYPE))
        self.register_buffer("context_scale", torch.ones(context_dim, dtype=DTYPE))
        self.log_min, self.log_max = math.log(min_correction), math.log(max_correction)

    def set_normalization(self, pair_features: Tensor, context: Tensor) -> None:
        """Standardize inputs with the mean and spread of (S, F) pair features and (S', C)
        contexts; constant columns (e.g. zero padding) get scale 1."""
        for mean, scale, values in (
            (self.pair_mean, self.pair_scale, pair_features),
            (self.context_mean, self.context_scale, context),
        ):
            mean.copy_(values.mean(dim=0))
            spread = values.std(dim=0)
            scale.copy_(torch.where(spread > 1e-8, spread, torch.ones_like(spread)))

    def forward(self, pair_features: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, K, F) and (B, C) float64 inputs, optional (B, K) bool mask of real candidates ->
        (B, K) float64 log corrections (padded candidates: anything, to be masked by the caller)."""
        pairs = _standardized(pair_features, self.pair_mean, self.pair_scale)
        system = _standardized(context, self.context_mean, self.context_scale)
        count = pairs.shape[1]
        inputs = torch.cat([pairs, system.unsqueeze(1).expand(-1, count, -1)], dim=2)
        embedded = self.embed(inputs)
        if mask is None:
            pooled = embedded.mean(dim=1)
        else:
            weights = mask.to(NETWORK_DTYPE).unsqueeze(2)
            pooled = (embedded * weights).sum(dim=1) / weights.sum(dim=1)
        head_input = torch.cat([embedded, pooled.unsqueeze(1).expand(-1, count, -1)], dim=2)
        corrections = self.head(head_input) + self.skip(inputs)
        return corrections.squeeze(-1).to(DTYPE).clamp(self.log_min, self.log_max)


def _standardized(values: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    standard = ((values - mean) / scale).nan_to_num(nan=0.0, posinf=INPUT_CLIP, neginf=-INPUT_CLIP)
    return standard.clamp(-INPUT_CLIP, INPUT_CLIP).to(NETWORK_DTYPE)


def build_network(params: Params) -> PairNet:
    """The network described by ``params`` (its architecture part of the config contract)."""
    model = params.model
    return PairNet(
        context_dim=network_context_dim(params),
        hidden_sizes=tuple(model.hidden_sizes),
        activation=model.activation,
        initial_correction=model.initial_correction,
        min_correction=model.min_correction,
        max_correction=model.max_correction,
    )


def network_context_dim(params: Params) -> int:
    """The context the network reads: the look's, the history window's, and log(eps / eps_0)."""
    return context_dim(params.features.history_len) + 1


class LearnedPolicy(TimeStepPolicy):
    """The network as a time-step policy aimed at an energy threshold eps (see the module doc).

    ``energy_threshold`` is a float for every system or a (B,) tensor, one per system.
    """

    name = "learned"

    def __init__(self, network: PairNet, params: Params, energy_threshold: float | Tensor | None = None) -> None:
        self.network = network
        self.params = params
        self.history_len = params.features.history_len
        self.candidates = params.features.candidate_pairs
        self.temperature = params.model.pair_temperature
        self.energy_threshold = params.energy_threshold if energy_threshold is None else energy_threshold

    def at_threshold(self, energy_threshold: float | Tensor) -> LearnedPolicy:
        """The same network aimed at another threshold: a float, or (B,) one per system."""
        return LearnedPolicy(self.network, self.params, energy_threshold)

    def new_history(self, state: State) -> History:
        return History.empty(state.batch_size, self.history_len, ROW_WIDTH)

    def look(self, state: State) -> PairLook:
        """The policy's one pairwise look at ``state``.

        Raises:
            ValueError: ``state`` feels a tidal field and the network never saw one (see
                :meth:`refuse_field`).
        """
        self.refuse_field(state)
        return look(state, self.candidates)

    def refuse_field(self, state: State) -> None:
        """Raise ValueError if ``state`` feels a tidal field and this network was trained without
        systems in one: its tidal-strength feature was 0 on every training state, so it has no
        answer for a field (the features represent one; the training did not)."""
        if state.external is None or self.params.trained_in_field or not bool(state.external.present.any()):
            return
        raise ValueError(
            "this model was trained without systems in a tidal field (its training mixture has no 'tidal' family), "
            "so it cannot judge the field's strength: retrain with a 'tidal' family in params.yaml 'systems', or "
            "simulate systems in a field with a classical policy or the oracle"
        )

    def step_size(
        self, state: State, history: History, energy_threshold: Tensor | None = None
    ) -> tuple[Tensor, PairLook]:
        """(B,) time steps, differentiable with respect to the network's parameters, and the
        look at ``state`` they were computed from (its rows go into ``history`` after the step).

        Args:
            state: B systems.
            history: their windows of past rows.
            energy_threshold: optional (B,) float64 threshold per system; default: the policy's.
        """
        seen = self.look(state)
        return self.steps_from_looks([seen], [history], energy_threshold)[0], seen

    def steps_from_looks(
        self, looks: list[PairLook], histories: list[History], energy_threshold: Tensor | float | None = None
    ) -> list[Tensor]:
        """Time steps of several batches of systems (e.g. of different body counts) in one
        network call: (B_g,) per batch g. ``energy_threshold``: one float, or one value per system
        of all batches in order (sum B_g,)."""
        if energy_threshold is None:
            energy_threshold = self.energy_threshold
        sizes = [seen.log_step.shape[0] for seen in looks]
        total = sum(sizes)
        reference = self.params.energy_threshold
        if isinstance(energy_threshold, Tensor):
            log_threshold = energy_threshold.log()
        else:
            log_threshold = looks[0].log_step.new_full((total,), math.log(energy_threshold))
        contexts = [
            system_context(seen, history, part)
            for seen, history, part in zip(looks, histories, log_threshold.split(sizes), strict=True)
        ]
        context = torch.cat([torch.cat(contexts), (log_threshold - math.log(reference)).unsqueeze(1)], dim=1)
        width = max(seen.log_step.shape[1] for seen in looks)
        if len(looks) == 1:
            log_step, pair_features, mask = looks[0].log_step, looks[0].pair_features, None
        else:
            log_step = torch.cat([_pad(seen.log_step, width, math.inf) for seen in looks])
            pair_features = torch.cat([_pad(seen.pair_features, width, 0.0) for seen in looks])
            mask = log_step.isfinite()
        corrected = log_step + self.network(pair_features, context, mask)
        temperature = self.temperature
        reference = context[:, KEPLER_COLUMN]
        log_dt = -temperature * torch.logsumexp(-corrected / temperature, dim=1) + reference + log_threshold / 3.0
        return list(log_dt.exp().split(sizes))

    def propose(self, state: State, history: History) -> Tensor:
        return self.propose_with_look(state, history)[0]

    def propose_with_look(self, state: State, history: History) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            dt, seen = self.step_size(state, history)
        return dt, seen.rows

    def remember(self, history: History, seen: Tensor | None, dt: Tensor, error: Tensor, moved: Tensor) -> History:
        if history.length == 0 or seen is None:
            return history
        return history.push_where(moved, history_row(seen, dt, error, self.energy_threshold))


def _pad(values: Tensor, width: int, fill: float) -> Tensor:
    """(B, K, ...) -> (B, width, ...) padded with ``fill`` along the candidate axis."""
    missing = width - values.shape[1]
    if missing == 0:
        return values
    padding = values.new_full((values.shape[0], missing, *values.shape[2:]), fill)
    return torch.cat([values, padding], dim=1)
