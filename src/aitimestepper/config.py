"""The params contract: every scientific setting, validated, read from ``params.yaml``.

``Params`` is a pydantic-settings model whose only source is the YAML file (science settings
never come from the environment: DVC hashes ``params.yaml``, and a value from elsewhere would
make its cache lie about what produced an output). Infrastructure settings (tracking URI, device,
threads) live in :mod:`aitimestepper.runtime` and do come from the environment.

The model serializes to a plain JSON dict and back without loss (:meth:`Params.to_contract`,
:meth:`Params.from_contract`); checkpoints carry that dict as their config contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from aitimestepper.features import feature_dim

CONTRACT_VERSION = 2
DEFAULT_PARAMS_FILE = Path("params.yaml")

Probability = Annotated[float, Field(ge=0.0, lt=1.0)]


class ParamsError(ValueError):
    """Invalid params: the message names each offending key, its value and the rule."""


class Section(BaseModel):
    """A params section: unknown keys are refused, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class PhysicsParams(Section):
    """Physical model shared by every stage."""

    dim: Literal[2, 3] = Field(2, description="Spatial dimension D of every system.")
    softening: float = Field(0.0, ge=0.0, description="Plummer softening length eps (length units).")


class InitialConditionsParams(Section):
    """How training systems are drawn."""

    kind: Literal["binary", "cluster", "file"] = Field("binary", description="Family of systems to draw.")
    num_bodies: int = Field(2, ge=2, le=64, description="Bodies per system N (2 for binaries, >= 3 for clusters).")
    eccentricity_min: Probability = Field(0.5, description="Smallest binary eccentricity, in [0, 1).")
    eccentricity_max: Probability = Field(0.995, description="Largest binary eccentricity, in [0, 1).")
    eccentricity_sampling: Literal["uniform", "log_one_minus_e"] = Field(
        "log_one_minus_e", description="Draw e uniformly, or 1 - e log-uniformly (eccentric orbits well covered)."
    )
    semi_major_axis_min: float = Field(0.8, gt=0.0, description="Smallest binary semi-major axis a.")
    semi_major_axis_max: float = Field(1.2, gt=0.0, description="Largest binary semi-major axis a.")
    mass_ratio_min: float = Field(
        1.0, gt=0.0, le=1.0, description="Smallest mass ratio q = m2/m1 (cluster: mass spread)."
    )
    mass_ratio_max: float = Field(1.0, gt=0.0, le=1.0, description="Largest mass ratio q = m2/m1, in (0, 1].")
    total_mass: float = Field(1.0, gt=0.0, description="Total mass of every system (mass units, G = 1).")
    start_phase: Literal["pericenter", "apocenter", "random", "random_true_anomaly"] = Field(
        "random_true_anomaly", description="Where binaries start: fixed, uniform in time, or uniform in true anomaly."
    )
    file: str | None = Field(None, description="JSON/NPZ initial-conditions file; required when kind is 'file'.")

    @model_validator(mode="after")
    def _consistent(self) -> InitialConditionsParams:
        if self.eccentricity_min > self.eccentricity_max:
            raise ValueError(
                f"eccentricity_min ({self.eccentricity_min}) must be <= eccentricity_max ({self.eccentricity_max})"
            )
        if self.semi_major_axis_min > self.semi_major_axis_max:
            raise ValueError(
                f"semi_major_axis_min ({self.semi_major_axis_min}) must be <= "
                f"semi_major_axis_max ({self.semi_major_axis_max})"
            )
        if self.mass_ratio_min > self.mass_ratio_max:
            raise ValueError(
                f"mass_ratio_min ({self.mass_ratio_min}) must be <= mass_ratio_max ({self.mass_ratio_max})"
            )
        if self.kind == "binary" and self.num_bodies != 2:
            raise ValueError(f"num_bodies must be 2 when kind is 'binary', got {self.num_bodies}")
        if self.kind == "cluster" and self.num_bodies < 3:
            raise ValueError(f"num_bodies must be >= 3 when kind is 'cluster', got {self.num_bodies}")
        if self.kind == "file" and not self.file:
            raise ValueError("file must name an initial-conditions file when kind is 'file'")
        return self


class FeaturesParams(Section):
    """Model inputs: which dimensionless features, over how many past states."""

    family: Literal["basic", "rich", "delta_mag"] = Field("basic", description="Feature family.")
    history_len: int = Field(2, ge=0, le=64, description="Past states in the feature window (0: current state only).")


class ModelParams(Section):
    """The network that maps features to a time step."""

    hidden_sizes: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        (64, 64), min_length=1, max_length=8, description="Widths of the hidden layers."
    )
    activation: Literal["tanh", "relu", "silu", "gelu"] = Field("tanh", description="Hidden-layer activation.")
    initial_dt_fraction: float = Field(
        0.005, gt=0.0, le=1.0, description="dt / free-fall time of the untrained network."
    )
    min_dt_fraction: float = Field(
        1e-6, gt=0.0, le=1.0, description="Smallest dt / free-fall time the network may output."
    )
    max_dt_fraction: float = Field(
        1.0, gt=0.0, le=10.0, description="Largest dt / free-fall time the network may output."
    )

    @model_validator(mode="after")
    def _fractions_ordered(self) -> ModelParams:
        if not self.min_dt_fraction <= self.initial_dt_fraction <= self.max_dt_fraction:
            raise ValueError(
                f"need min_dt_fraction ({self.min_dt_fraction}) <= initial_dt_fraction "
                f"({self.initial_dt_fraction}) <= max_dt_fraction ({self.max_dt_fraction})"
            )
        return self


class TrainingParams(Section):
    """The two-phase, energy-gated training routine."""

    steps_per_epoch: int = Field(1, ge=1, le=100_000, description="Accepted Part 1 steps per system per epoch.")
    num_orbits: int = Field(64, ge=1, le=65_536, description="Systems collected in parallel in Part 1.")
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate of the first epoch.")
    learning_rate_final: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Learning rate of the last epoch, reached on a cosine schedule; null: constant learning_rate.",
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
        None, ge=1, description="Optional cap on Part 1 optimizer steps per epoch; null: retry until accepted."
    )
    orbit_budget: float = Field(
        2.0, gt=0.0, le=1e4, description="Periods a Part 1 system is followed before it is re-drawn."
    )
    grad_clip: float = Field(1.0, gt=0.0, description="Gradient-norm clip of every optimizer step.")
    validation_periods: float = Field(1.0, gt=0.0, le=100.0, description="Periods of each validation orbit.")
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


class SimulationParams(Section):
    """The simulation stage: which policy integrates which systems for how long."""

    policy: Literal["learned", "fixed", "free_fall", "oracle"] = Field(
        "learned", description="Time-step policy ('learned' reads the trained checkpoint)."
    )
    fixed_dt: float = Field(1e-3, gt=0.0, description="Step of the 'fixed' policy (time units).")
    eta: float = Field(0.05, gt=0.0, le=10.0, description="Free-fall policy factor: dt = eta * min free-fall time.")
    num_systems: int = Field(6, ge=1, le=100_000, description="Systems simulated together.")
    eccentricities: tuple[Probability, ...] = Field(
        (0.5, 0.9, 0.99), min_length=1, description="Eccentricities of the simulated binaries (cycled)."
    )
    start_phase: Literal["pericenter", "apocenter", "random"] = Field(
        "apocenter", description="Start phase of the binaries."
    )
    duration_periods: float = Field(10.0, gt=0.0, le=1e6, description="Simulated time in orbital periods.")
    max_steps: int = Field(200_000, ge=1, description="Hard cap on steps per system.")


class EvaluationParams(Section):
    """The held-out evaluation suite."""

    seed: int = Field(10_000, ge=0, description="Seed of the held-out systems (disjoint from training seeds).")
    duration_periods: float = Field(10.0, gt=0.0, le=1e6, description="Simulated time per system in orbital periods.")
    extra_thresholds: tuple[Annotated[float, Field(gt=0.0, lt=1.0)], ...] = Field(
        (1e-4,), max_length=4, description="Thresholds evaluated besides energy_threshold."
    )
    three_body_systems: int = Field(10, ge=0, le=1000, description="Softened three-body systems (0: none).")
    three_body_crossing_times: float = Field(10.0, gt=0.0, le=1e4, description="Duration of the three-body runs.")
    three_body_softening: float = Field(0.01, ge=0.0, description="Plummer softening of the three-body systems.")
    controller_target: float = Field(
        0.5, gt=0.0, le=1.0, description="Energy-feedback controller's target error / threshold."
    )
    tuning_systems: int = Field(
        8, ge=1, le=10_000, description="Training-like systems the classical rules are tuned on."
    )
    tuning_periods: float = Field(
        1.0, gt=0.0, le=1e4, description="Periods (three-body: crossing times) of each tuning run."
    )
    fixed_dt_periods: float = Field(
        1.0, gt=0.0, le=1e6, description="Periods run by the fixed-dt rule (its cost per orbit does not depend on it)."
    )


class TrackingParams(Section):
    """Names under which runs and models are tracked (the store location is infrastructure)."""

    experiment_name: str = Field("aitimestepper", min_length=1, description="MLflow experiment name.")
    registered_model_name: str = Field("aitimestepper", min_length=1, description="MLflow registered model name.")


class Params(BaseSettings):
    """Every scientific setting of the project (the config contract)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, yaml_file=DEFAULT_PARAMS_FILE, validate_default=True)

    energy_threshold: float = Field(
        2e-4, gt=0.0, lt=1.0, description="Largest relative energy error |E1-E0|/|E0| a step may make."
    )
    epochs: int = Field(20, ge=1, le=1_000_000, description="Training epochs (Part 1 + Part 2 each).")
    seed: int = Field(0, ge=0, description="Seed of every random draw in training.")
    physics: PhysicsParams = Field(default_factory=PhysicsParams, description="Physical model.")
    initial_conditions: InitialConditionsParams = Field(
        default_factory=InitialConditionsParams, description="Training systems."
    )
    features: FeaturesParams = Field(default_factory=FeaturesParams, description="Model inputs.")
    model: ModelParams = Field(default_factory=ModelParams, description="Network architecture.")
    training: TrainingParams = Field(default_factory=TrainingParams, description="Training routine.")
    simulation: SimulationParams = Field(default_factory=SimulationParams, description="Simulation stage.")
    evaluation: EvaluationParams = Field(default_factory=EvaluationParams, description="Evaluation stage.")
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
        """Explicit arguments first, then ``params.yaml``; never the environment."""
        return init_settings, YamlConfigSettingsSource(settings_cls)

    @model_validator(mode="after")
    def _training_thresholds_below_one(self) -> Params:
        largest = self.energy_threshold * self.training.threshold_factor_max
        if not largest < 1.0:
            raise ValueError(
                f"energy_threshold x training.threshold_factor_max = {largest:g} must be < 1 (a relative energy error)"
            )
        return self

    @property
    def feature_dim(self) -> int:
        """Length of the feature vector these settings produce."""
        return feature_dim(self.features.family, self.features.history_len)

    def to_contract(self) -> dict[str, Any]:
        """Plain JSON-compatible dict: every setting plus ``contract_version`` and ``feature_dim``."""
        return {"contract_version": CONTRACT_VERSION, "feature_dim": self.feature_dim, **self.model_dump(mode="json")}

    @classmethod
    def from_contract(cls, contract: dict[str, Any]) -> Params:
        """Rebuild settings from :meth:`to_contract` output, refusing unknown versions.

        Raises:
            ParamsError: unknown ``contract_version``, invalid settings, or a recorded
                ``feature_dim`` that these settings do not reproduce.
        """
        values = dict(contract)
        version = values.pop("contract_version", None)
        if version != CONTRACT_VERSION:
            raise ParamsError(
                f"config contract version {version!r} is not supported (this code reads version {CONTRACT_VERSION})"
            )
        recorded_dim = values.pop("feature_dim", None)
        params = _validated(lambda: cls.model_validate(values))
        if recorded_dim != params.feature_dim:
            raise ParamsError(
                f"contract records feature_dim {recorded_dim!r} but its settings give {params.feature_dim}"
            )
        return params


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
    return _validated(lambda: Params.model_validate(values), source=path)


def _validated(build, source: Path | None = None) -> Params:
    try:
        return build()
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, source)) from None


def format_validation_error(error: ValidationError, source: Path | None = None) -> str:
    """One line per problem: ``key = value: rule``."""
    where = f" in {source}" if source else ""
    lines = [f"invalid params{where}:"]
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        value = problem.get("input")
        rule = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            rule = "unknown key (not a setting of this section)"
        shown = "(missing)" if problem["type"] == "missing" else repr(value)
        if isinstance(value, dict) and problem["type"] != "extra_forbidden":
            shown = "(section)"
        lines.append(f"  {key} = {shown}: {rule}")
    return "\n".join(lines)
