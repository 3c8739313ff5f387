"""The params contract: every scientific setting, validated, read from ``params.yaml``.

``Params`` is a pydantic-settings model whose only source is the YAML file (science settings
never come from the environment: DVC hashes ``params.yaml``, and a value from elsewhere would
make its cache lie about what produced an output). Infrastructure settings (tracking URI, device,
threads) live in :mod:`aitimestepper.runtime` and do come from the environment.

The model serializes to a plain JSON dict and back without loss (:meth:`Params.to_contract`,
:meth:`Params.from_contract`); checkpoints carry that dict as their config contract.
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from aitimestepper.systems.specs import FAMILY_NAMES, MixtureComponent, SuiteEntry

#: 5: the tidal-strength column of the context and the gated |E| in a field (4: the Kepler step's fine
#: scan and its cancellation)
CONTRACT_VERSION = 5
DEFAULT_PARAMS_FILE = Path("params.yaml")
#: set while :meth:`Params.from_values` validates: no other source is read
_EXPLICIT: contextvars.ContextVar[bool] = contextvars.ContextVar("explicit_params", default=False)

Probability = Annotated[float, Field(ge=0.0, lt=1.0)]


class ParamsError(ValueError):
    """Invalid params: the message names each offending key, its value and the rule."""


class Section(BaseModel):
    """A params section: unknown keys are refused, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _default_mixture() -> dict[str, Any]:
    """Every family, 2-D and 3-D, with equal weights."""
    return {name: {"family": name} for name in FAMILY_NAMES}


class FeaturesParams(Section):
    """What the learned policy looks at: candidate pairs of the current state, and past states."""

    candidate_pairs: int = Field(
        8, ge=1, le=64, description="Pairs with the smallest energy-normalised free-fall steps the network reads."
    )
    history_len: int = Field(0, ge=0, le=64, description="Past states in the context window (0: current state only).")


class ModelParams(Section):
    """The network that corrects each candidate pair's step."""

    hidden_sizes: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        (32, 32),
        min_length=1,
        max_length=8,
        description="Widths of the pair-embedding layers (the head uses the last).",
    )
    activation: Literal["tanh", "relu", "silu", "gelu"] = Field("tanh", description="Hidden-layer activation.")
    pair_temperature: float = Field(
        1.0 / 3.0, gt=0.0, le=10.0, description="Temperature of the soft minimum over pairs (1/3: errors add as dt^3)."
    )
    initial_correction: float = Field(
        0.1, gt=0.0, le=100.0, description="Step / energy-normalised free-fall step of the untrained network."
    )
    min_correction: float = Field(1e-3, gt=0.0, le=100.0, description="Smallest correction the network may output.")
    max_correction: float = Field(10.0, gt=0.0, le=1000.0, description="Largest correction the network may output.")

    @model_validator(mode="after")
    def _corrections_ordered(self) -> ModelParams:
        if not self.min_correction <= self.initial_correction <= self.max_correction:
            raise ValueError(
                f"need min_correction ({self.min_correction}) <= initial_correction "
                f"({self.initial_correction}) <= max_correction ({self.max_correction})"
            )
        return self


class TrainingParams(Section):
    """The two-phase, energy-gated training routine."""

    steps_per_epoch: int = Field(1, ge=1, le=100_000, description="Accepted Part 1 steps per system per epoch.")
    num_systems: int = Field(
        64, ge=1, le=65_536, description="Systems followed in parallel in Part 1, shared among the mixture's families."
    )
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate of the first epoch.")
    learning_rate_final: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Learning rate of the last epoch, reached on a cosine schedule; null: constant learning_rate.",
    )
    loss: Literal["band", "quantile"] = Field(
        "quantile",
        description="band: push each error into [band_lower, band_upper] x threshold; quantile: the largest steps "
        "of which quantile_pass_rate pass (a pinball loss in log error).",
    )
    quantile_pass_rate: float = Field(
        0.999, gt=0.5, lt=1.0, description="Share of steps the quantile loss aims to pass (training.loss = quantile)."
    )
    quantile_gate: float = Field(
        0.92,
        gt=0.0,
        le=1.0,
        description="The quantile loss puts its pass_rate quantile at this fraction of the threshold: a margin for "
        "states unlike the training ones.",
    )
    band_lower: float = Field(
        0.5, gt=0.0, lt=1.0, description="Lower edge of the loss band, as a fraction of energy_threshold."
    )
    band_upper: float = Field(
        0.85, gt=0.0, le=1.0, description="Upper edge of the loss band, as a fraction of energy_threshold."
    )
    below_band_weight: float = Field(
        0.1, gt=0.0, le=1.0, description="Weight of the dt-too-small loss term relative to the dt-too-large term."
    )
    failure_weight: float = Field(
        0.0, ge=0.0, le=1000.0, description="Slope of the extra loss on a step over the threshold, per unit log excess."
    )
    threshold_factor_min: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Training thresholds are drawn log-uniformly per system from [min, max] x energy_threshold.",
    )
    threshold_factor_max: float = Field(
        1.0, ge=1.0, le=100.0, description="Upper end of the training thresholds, as a factor of energy_threshold."
    )
    replay_batch_size: int = Field(512, ge=1, le=1_000_000, description="Part 2 minibatch size.")
    replay_steps: int = Field(200, ge=1, le=1_000_000, description="Cap on Part 2 iterations per epoch.")
    replay_min_steps: int = Field(
        20,
        ge=1,
        le=1_000_000,
        description="Part 2 iterations run even when minibatches already pass (keeps dt pushed up).",
    )
    replay_capacity: int = Field(65_536, ge=1, le=10_000_000, description="Replay buffer size (oldest states dropped).")
    max_retrain_steps: int | None = Field(
        None,
        ge=1,
        description="Optional cap on Part 1 optimizer steps per epoch; null: no cap (stuck systems are re-drawn).",
    )
    max_retries_per_state: int = Field(
        50, ge=1, le=100_000, description="A Part 1 system rejected this many times on one state is re-drawn (counted)."
    )
    time_budget: float = Field(
        2.0, gt=0.0, le=1e4, description="Time scales (periods, crossing times) a Part 1 system is followed."
    )
    grad_clip: float = Field(1.0, gt=0.0, description="Gradient-norm clip of every optimizer step.")
    validation_systems: int = Field(
        4, ge=1, le=1000, description="Validation systems per mixture family and dimension (model selection)."
    )
    validation_duration: float = Field(
        1.0, gt=0.0, le=100.0, description="Time scales each validation system is integrated for."
    )
    validate_every: int = Field(
        1, ge=1, le=10_000, description="Epochs between validations (the last is always validated)."
    )
    selection_start: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description=(
            "Fraction of the epochs after which validated snapshots compete to be kept "
            "(the last epoch always competes)."
        ),
    )
    checkpoint_every: int = Field(1, ge=1, description="Epochs between checkpoints.")

    @model_validator(mode="after")
    def _band_ordered(self) -> TrainingParams:
        if not self.band_lower < self.band_upper:
            raise ValueError(f"band_lower ({self.band_lower}) must be < band_upper ({self.band_upper})")
        if self.learning_rate_final is not None and self.learning_rate_final > self.learning_rate:
            raise ValueError(
                f"learning_rate_final ({self.learning_rate_final}) must be <= learning_rate ({self.learning_rate})"
            )
        if self.replay_min_steps > self.replay_steps:
            raise ValueError(
                f"replay_min_steps ({self.replay_min_steps}) must be <= replay_steps ({self.replay_steps})"
            )
        return self


#: the most frames a movie holds (its file grows with them)
MAX_MOVIE_FRAMES = 600


class MovieParams(Section):
    """Movies of simulated systems (:mod:`aitimestepper.movies`): animated GIFs."""

    systems: int = Field(1, ge=0, le=64, description="Movies of the first this many systems of each group (0: none).")
    frames: int = Field(120, ge=2, le=MAX_MOVIE_FRAMES, description="Frames per movie, uniform in time.")
    fps: int = Field(15, ge=1, le=50, description="Frames per second of playback.")


class SimulationParams(Section):
    """The simulation stage: which policy integrates which systems for how long."""

    policy: Literal["learned", "fixed", "free_fall", "energy_free_fall", "prs23", "energy_feedback", "oracle"] = Field(
        "learned", description="Time-step policy ('learned' reads the trained checkpoint)."
    )
    fixed_dt: float = Field(1e-3, gt=0.0, description="Step of the 'fixed' policy (time units).")
    eta: float = Field(0.05, gt=0.0, le=10.0, description="Free-fall policy factor: dt = eta * min free-fall time.")
    systems: SuiteEntry = Field(
        default_factory=lambda: {"family": "hierarchical_triple", "dims": (3,), "systems": 4, "duration": 10.0},
        description="The simulated systems: a family spec with systems per dimension and duration (time scales).",
    )
    max_steps: int = Field(200_000, ge=1, description="Hard cap on steps per system.")
    movie: MovieParams = Field(default_factory=MovieParams, description="Movies of the simulated systems.")


def _default_suite() -> dict[str, Any]:
    return {
        "binaries": {"family": "binary", "eccentricity": (0.3, 0.99), "systems": 8, "duration": 10.0},
        "hierarchical_triples": {"family": "hierarchical_triple", "systems": 4, "duration": 10.0},
        "democratic_triples": {
            "family": "democratic_triple",
            "softening": (0.01, 0.05),
            "systems": 4,
            "duration": 10.0,
        },
        "democratic_triples_unsoftened": {
            "family": "democratic_triple",
            "softening": (0.0, 0.0),
            "systems": 4,
            "duration": 5.0,
        },
        "planetary": {"family": "planetary", "systems": 4, "duration": 10.0},
        "plummer": {"family": "plummer", "systems": 4, "duration": 2.0},
        "tidal": {"family": "tidal", "systems": 4, "duration": 5.0},
    }


class EvaluationParams(Section):
    """The held-out evaluation suite."""

    seed: int = Field(10_000, ge=0, description="Seed of the held-out systems (disjoint from training seeds).")
    extra_thresholds: tuple[Annotated[float, Field(gt=0.0, lt=1.0)], ...] = Field(
        (1e-4,), max_length=4, description="Thresholds evaluated besides energy_threshold."
    )
    suite: dict[str, SuiteEntry] = Field(
        default_factory=_default_suite, min_length=1, description="Held-out families: name -> spec, systems, duration."
    )
    scaled_copies: tuple[tuple[Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]], ...] = Field(
        ((10.0, 100.0), (0.01, 100.0)),
        max_length=4,
        description="(length, mass) factors of the scaled copies that test scale transfer.",
    )
    controller_targets: tuple[Annotated[float, Field(gt=0.0, le=1.0)], ...] = Field(
        (0.3, 0.5, 0.7, 0.85, 0.95),
        min_length=1,
        description="Energy-feedback controller targets tried when tuning it.",
    )
    tuning_systems: int = Field(
        4, ge=1, le=10_000, description="Systems per dimension the classical rules are tuned on (training seed)."
    )
    tuning_duration: float = Field(1.0, gt=0.0, le=1e4, description="Time scales of each tuning run.")


class HostParams(Section):
    """A point-mass host whose tidal field every simulated system feels
    (:mod:`aitimestepper.physics.external`; G = 1, the systems' own units)."""

    host_mass: float = Field(gt=0.0, allow_inf_nan=False, description="The host's mass M (mass units).")
    host_position: tuple[float, ...] = Field(
        min_length=2,
        max_length=3,
        description="R at time 0 relative to each system's centre (D components, the systems' dimension).",
    )
    orbit: Literal["static", "circular"] = Field(
        "static", description="static: R fixed; circular: R turns at Omega = sqrt(M / |R|**3) in the x-y plane."
    )
    softening: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="Softening of the host's pull (length).")

    @model_validator(mode="after")
    def _valid_host(self) -> HostParams:
        import torch

        from aitimestepper.physics.external import TidalField

        TidalField.build(torch.tensor(self.host_mass), torch.tensor(self.host_position), self.orbit, self.softening)
        return self


class PhysicsParams(Section):
    """Physics beyond the bodies' mutual gravity, for the simulate stage."""

    external: HostParams | None = Field(
        None, description="A host's tidal field on every system of simulation.systems (null: none)."
    )


class TrackingParams(Section):
    """Names under which runs and models are tracked (the store location is infrastructure)."""

    experiment_name: str = Field("aitimestepper", min_length=1, description="MLflow experiment name.")
    registered_model_name: str = Field("aitimestepper", min_length=1, description="MLflow registered model name.")


#: the settings a trained model is a function of, and all its checkpoint records: simulation,
#: evaluation and tracking belong to the stages that use a model (the train stage's DVC params)
MODEL_SETTINGS = ("energy_threshold", "epochs", "seed", "systems", "features", "model", "training")


class Params(BaseSettings):
    """Every scientific setting of the project (the config contract)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, validate_default=True)

    energy_threshold: float = Field(
        2e-4, gt=0.0, lt=1.0, description="Largest relative energy error |E1-E0|/|E0| a step may make."
    )
    epochs: int = Field(20, ge=1, le=1_000_000, description="Training epochs (Part 1 + Part 2 each).")
    seed: int = Field(0, ge=0, description="Seed of every random draw in training.")
    systems: dict[str, MixtureComponent] = Field(
        default_factory=_default_mixture,
        min_length=1,
        description="The training mixture: name -> family spec with its weight (2-D and 3-D by default).",
    )
    features: FeaturesParams = Field(default_factory=FeaturesParams, description="Model inputs.")
    model: ModelParams = Field(default_factory=ModelParams, description="Network architecture.")
    training: TrainingParams = Field(default_factory=TrainingParams, description="Training routine.")
    simulation: SimulationParams = Field(default_factory=SimulationParams, description="Simulation stage.")
    evaluation: EvaluationParams = Field(default_factory=EvaluationParams, description="Evaluation stage.")
    physics: PhysicsParams = Field(default_factory=PhysicsParams, description="External fields (simulate stage).")
    tracking: TrackingParams = Field(default_factory=TrackingParams, description="Tracking names.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit arguments first, then ``params.yaml``; never the environment. Values validated
        through :meth:`from_values` (a params file, a contract) are read alone: settings sources are
        merged key by key, and a mixture or suite must not gain the families of another file."""
        if _EXPLICIT.get():
            return (init_settings,)
        return init_settings, YamlConfigSettingsSource(settings_cls, yaml_file=DEFAULT_PARAMS_FILE)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Params:
        """Validate ``values`` alone (unset keys take their defaults, nothing else is read).

        Raises:
            pydantic.ValidationError: invalid settings.
        """
        token = _EXPLICIT.set(True)
        try:
            return cls(**values)
        finally:
            _EXPLICIT.reset(token)

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        largest = self.energy_threshold * self.training.threshold_factor_max
        if not largest < 1.0:
            raise ValueError(
                f"energy_threshold x training.threshold_factor_max = {largest:g} must be < 1 (a relative energy error)"
            )
        if not any(component.weight > 0 for component in self.systems.values()):
            raise ValueError(f"systems: at least one family needs a weight > 0, got {list(self.systems)} all at 0")
        host = self.physics.external
        simulated = self.simulation.systems
        if host is not None and set(simulated.dims) != {len(host.host_position)}:
            raise ValueError(
                f"physics.external.host_position has {len(host.host_position)} components, so simulation.systems.dims "
                f"must be [{len(host.host_position)}], got {list(simulated.dims)}"
            )
        if host is not None and simulated.family == "tidal":
            raise ValueError(
                "physics.external and simulation.systems.family = tidal both set a field: the tidal family's systems "
                "bring their own hosts (set physics.external to null, or simulate another family)"
            )
        return self

    @property
    def trained_in_field(self) -> bool:
        """Whether the training mixture holds systems in a tidal field (a ``tidal`` family with a
        weight > 0): a model trained on it can step systems in a field."""
        return any(component.family == "tidal" and component.weight > 0 for component in self.systems.values())

    def to_contract(self) -> dict[str, Any]:
        """Plain JSON-compatible dict: every setting plus ``contract_version``."""
        return {"contract_version": CONTRACT_VERSION, **self.model_dump(mode="json")}

    def model_contract(self) -> dict[str, Any]:
        """The config contract of a model trained with these settings (what its checkpoint
        carries): :data:`MODEL_SETTINGS` plus ``contract_version``; :meth:`from_contract` gives
        the other sections their defaults."""
        return {"contract_version": CONTRACT_VERSION, **self.model_dump(mode="json", include=set(MODEL_SETTINGS))}

    @classmethod
    def from_contract(cls, contract: dict[str, Any]) -> Params:
        """Rebuild settings from :meth:`to_contract` output, refusing unknown versions.

        Raises:
            ParamsError: unknown ``contract_version`` or invalid settings.
        """
        values = dict(contract)
        version = values.pop("contract_version", None)
        if version != CONTRACT_VERSION:
            raise ParamsError(
                f"config contract version {version!r} is not supported (this code reads version {CONTRACT_VERSION}); "
                f"retrain the model with this code"
            )
        return _validated(lambda: cls.from_values(values))


def load_params(path: Path | str = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate a params file.

    Raises:
        ParamsError: the file is missing or not a YAML mapping, or a setting is invalid; the
            message names every offending key, its value and the rule.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {path} does not exist")
    try:
        values = YamlConfigSettingsSource(Params, yaml_file=path)()
    except Exception as error:  # yaml.YAMLError and friends: report, do not traceback
        raise ParamsError(f"params file {path} is not valid YAML: {error}") from error
    return _validated(lambda: Params.from_values(values), source=path)


def _validated(build, source: Path | None = None) -> Params:
    try:
        return build()
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, source)) from None


def _without_family_tags(location: tuple) -> list:
    """The location of a problem without the family name pydantic inserts for a family spec
    (``systems.binary.binary.eccentricity`` -> ``systems.binary.eccentricity``)."""
    parts = list(location)
    for index in range(len(parts) - 1, 0, -1):
        in_mapping = index >= 2 and parts[index - 2] in ("systems", "suite")
        in_field = parts[index - 1] == "systems" and index >= 2 and parts[index - 2] == "simulation"
        if parts[index] in FAMILY_NAMES and (in_mapping or in_field):
            del parts[index]
    return parts


def format_validation_error(error: ValidationError, source: Path | None = None) -> str:
    """One line per problem: ``key = value: rule``."""
    where = f" in {source}" if source else ""
    lines = [f"invalid params{where}:"]
    for problem in error.errors():
        key = ".".join(str(part) for part in _without_family_tags(problem["loc"])) or "(top level)"
        value = problem.get("input")
        rule = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            rule = "unknown key (not a setting of this section)"
        shown = "(missing)" if problem["type"] == "missing" else repr(value)
        if isinstance(value, dict) and problem["type"] != "extra_forbidden":
            shown = "(section)"
        if problem["type"] == "union_tag_invalid":  # an unknown family name
            key, shown = f"{key}.family", repr(problem["ctx"]["tag"])
        lines.append(f"  {key} = {shown}: {rule}")
    return "\n".join(lines)
