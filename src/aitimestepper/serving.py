"""Simulation as a service: the request schema and the MLflow pyfunc model around a checkpoint.

A request is a table with one row per system:

| column | type | meaning |
|---|---|---|
| ``masses`` | list of N floats > 0 | masses (G = 1) |
| ``positions`` | N lists of D floats (D = 2 or 3) | positions |
| ``velocities`` | N lists of D floats | velocities |
| ``duration`` | float > 0 | time to integrate (time units) |
| ``softening`` | float >= 0, optional (default 0) | Plummer softening length |
| ``max_steps`` | int >= 1, optional (default and cap 100000) | hard cap on steps |
| ``energy_threshold`` | float in (0, 1), optional (default: the model's) | the gate, and the policy's aim |
| ``host_mass`` | float > 0, optional | a point-mass host's mass: the system feels its tidal field |
| ``host_position`` | D floats, with ``host_mass`` | the host's position at time 0, relative to the system's origin |
| ``host_orbit`` | ``static`` or ``circular``, optional (default static) | the host's orbit (see below) |
| ``host_softening`` | float >= 0, optional (default 0) | softening of the host's pull |

The answer has one row per system: ``steps``, ``gate_pass_rate``, ``max_energy_error``,
``final_energy_error``, ``dt_mean``, ``dt_min``, ``dt_max``, ``reached_end``, ``failed``,
``hit_step_cap`` (stopped at ``max_steps`` before ``duration``), ``time``, ``final_positions``,
``final_velocities`` and ``non_finite``: the fields whose value was not a finite number (a system
that broke down in a close encounter), sent as null, so the answer is strict JSON. Systems are
integrated with the learned policy in batches of equal N and D (each with its own softening), with
the same leapfrog step as everywhere else. The host's field is that of
:mod:`aitimestepper.physics.external`; in it the energies and errors are those of
the conserved quantity (the energy with the field's potential, or the Jacobi integral for a host on
a circular orbit); a model trained without a ``tidal`` family refuses such rows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aitimestepper.atomic import strict_json
from aitimestepper.model import LearnedPolicy
from aitimestepper.physics.external import TidalField
from aitimestepper.physics.state import DTYPE, State
from aitimestepper.rollout import rollout

MAX_BODIES = 64
MAX_STEPS = 100_000
OUTPUT_COLUMNS = (
    "energy_threshold",
    "steps",
    "gate_pass_rate",
    "max_energy_error",
    "final_energy_error",
    "dt_mean",
    "dt_min",
    "dt_max",
    "reached_end",
    "failed",
    "hit_step_cap",
    "time",
    "final_positions",
    "final_velocities",
    "non_finite",
)


class RequestError(ValueError):
    """A malformed simulation request; the message names the row, the field and the rule."""


class SystemRequest(BaseModel):
    """One system to integrate (validated)."""

    model_config = ConfigDict(extra="forbid")

    masses: list[float] = Field(min_length=2, max_length=MAX_BODIES)
    positions: list[list[float]]
    velocities: list[list[float]]
    duration: float = Field(gt=0.0)
    softening: float = Field(0.0, ge=0.0)
    max_steps: int = Field(MAX_STEPS, ge=1, le=MAX_STEPS)
    energy_threshold: float | None = Field(None, gt=0.0, lt=1.0)
    host_mass: float | None = Field(None, gt=0.0)
    host_position: list[float] | None = None
    host_orbit: Literal["static", "circular"] = "static"
    host_softening: float = Field(0.0, ge=0.0)

    @field_validator("masses")
    @classmethod
    def _positive_masses(cls, masses: list[float]) -> list[float]:
        for body, mass in enumerate(masses):
            if not (math.isfinite(mass) and mass > 0):
                raise ValueError(f"the mass of body {body} must be finite and > 0, got {mass}")
        return masses

    @field_validator("duration", "softening", "host_mass", "host_softening")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be finite")
        return value

    @model_validator(mode="after")
    def _consistent_shapes(self) -> SystemRequest:
        count = len(self.masses)
        for name in ("positions", "velocities"):
            rows = getattr(self, name)
            if len(rows) != count:
                raise ValueError(f"{name} has {len(rows)} rows but there are {count} masses")
            dims = {len(row) for row in rows}
            if len(dims) != 1 or dims.pop() not in (2, 3):
                raise ValueError(f"{name} rows must all have 2 or 3 components")
            for body, row in enumerate(rows):
                if not all(math.isfinite(v) for v in row):
                    raise ValueError(f"{name} of body {body} must be finite, got {row}")
        if len(self.positions[0]) != len(self.velocities[0]):
            raise ValueError("positions and velocities must have the same dimension")
        if (self.host_mass is None) != (self.host_position is None):
            raise ValueError("host_mass and host_position go together: give both for a tidal field, or neither")
        if self.host_position is not None:
            dim = len(self.positions[0])
            if len(self.host_position) != dim or not all(math.isfinite(v) for v in self.host_position):
                raise ValueError(
                    f"host_position must be {dim} finite numbers (the positions' dimension), got {self.host_position}"
                )
        return self

    def field(self) -> TidalField | None:
        """The host's tidal field on this system (one row), or None.

        Raises:
            ValueError: the host at the origin without softening.
        """
        if self.host_mass is None:
            return None
        return TidalField.build(
            torch.tensor([self.host_mass], dtype=DTYPE),
            torch.tensor([self.host_position], dtype=DTYPE),
            self.host_orbit,
            self.host_softening,
        )


def parse_requests(frame: pd.DataFrame) -> list[SystemRequest]:
    """Validate every row of a request table.

    Raises:
        RequestError: listing each bad row, field and rule.
    """
    problems, requests = [], []
    for row_number, row in enumerate(frame.to_dict(orient="records")):
        values = {k: _plain(v) for k, v in row.items() if not _is_missing(v)}
        try:
            requests.append(SystemRequest.model_validate(values))
        except ValidationError as error:
            for problem in error.errors():
                field = ".".join(str(p) for p in problem["loc"]) or "row"
                problems.append(f"row {row_number}: {field}: {problem['msg'].removeprefix('Value error, ')}")
    if problems:
        raise RequestError("invalid simulation request:\n  " + "\n  ".join(problems))
    if not requests:
        raise RequestError("invalid simulation request: no systems given")
    return requests


def simulate_requests(policy: LearnedPolicy, requests: list[SystemRequest], energy_threshold: float) -> pd.DataFrame:
    """Integrate every requested system with ``policy``; one output row per request, in order.

    Each system is gated at its request's ``energy_threshold`` (default: ``energy_threshold``);
    a learned policy aims its steps at it too (one per system).
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, request in enumerate(requests):
        groups[(len(request.masses), len(request.positions[0]))].append(index)
    rows: list[dict[str, Any] | None] = [None] * len(requests)
    for indices in groups.values():
        chosen = [requests[i] for i in indices]
        thresholds = torch.tensor(
            [energy_threshold if r.energy_threshold is None else r.energy_threshold for r in chosen], dtype=DTYPE
        )
        try:
            state = State.from_arrays(
                torch.tensor([r.positions for r in chosen], dtype=DTYPE),
                torch.tensor([r.velocities for r in chosen], dtype=DTYPE),
                torch.tensor([r.masses for r in chosen], dtype=DTYPE),
                torch.tensor([r.softening for r in chosen], dtype=DTYPE),
                external=_group_field(chosen),
            )
            policy.refuse_field(state)
        except ValueError as error:  # e.g. coincident bodies: "system k" is the k-th of these rows
            raise RequestError(f"invalid simulation request (rows {indices}, in this order): {error}") from None
        result = rollout(
            state,
            policy.at_threshold(thresholds),
            torch.tensor([r.duration for r in chosen], dtype=DTYPE),
            energy_threshold=thresholds,
            max_steps=max(r.max_steps for r in chosen),
            step_caps=torch.tensor([r.max_steps for r in chosen]),
        )
        steps = result.steps.double().clamp_min(1)
        for k, index in enumerate(indices):
            rows[index] = {
                "energy_threshold": float(thresholds[k]),
                "steps": int(result.steps[k]),
                "gate_pass_rate": float(result.steps_passed[k] / steps[k]),
                "max_energy_error": float(result.max_energy_error[k]),
                "final_energy_error": float(result.final_energy_error[k]),
                "dt_mean": float(result.dt_mean[k]),
                "dt_min": float(result.dt_min[k]) if result.steps[k] > 0 else 0.0,
                "dt_max": float(result.dt_max[k]),
                "reached_end": bool(result.reached_end[k]),
                "failed": bool(result.failed[k]),
                "hit_step_cap": bool(result.hit_step_cap[k]),
                "time": float(result.final_state.time[k]),
                "final_positions": result.final_state.positions[k].tolist(),
                "final_velocities": result.final_state.velocities[k].tolist(),
            }
            found: list[str] = []
            rows[index] = {**strict_json(rows[index], found), "non_finite": found}
    # object columns keep None as None (a float column would turn it into NaN, sent as a NaN token)
    return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS), dtype=object)


def example_request(energy_threshold: float, field: bool = False) -> pd.DataFrame:
    """The input example: an equal-mass e = 0.5 binary at apocenter, for one period (2 pi), gated
    at ``energy_threshold``; and (``field``) the same binary riding a circular orbit about a host
    of 10**4 its mass whose Jacobi radius is 4 times its apocentre separation."""
    speed = math.sqrt(0.5 / 1.5) / 2.0  # each body's speed: half the relative vis-viva speed
    binary = {
        "masses": [0.5, 0.5],
        "positions": [[-0.75, 0.0], [0.75, 0.0]],
        "velocities": [[0.0, -speed], [0.0, speed]],
        "duration": 2.0 * math.pi,
        "softening": 0.0,
        "max_steps": 10_000,
        "energy_threshold": energy_threshold,
    }
    host_mass = 1e4
    distance = 4.0 * 1.5 * (3.0 * host_mass) ** (1.0 / 3.0)  # r_J = R (m / (3 M))**(1/3) = 4 x 1.5
    in_field = {**binary, "host_mass": host_mass, "host_position": [distance, 0.0], "host_orbit": "circular"}
    if not field:
        return pd.DataFrame([binary])
    return pd.DataFrame([{**binary, "host_mass": None, "host_position": None, "host_orbit": None}, in_field])


def _group_field(requests: list[SystemRequest]) -> TidalField | None:
    """The tidal fields of a batch of requests (a host of mass 0 where a row has none), or None."""
    fields = [request.field() for request in requests]
    chosen = [k for k, field in enumerate(fields) if field is not None]
    if not chosen:
        return None
    dim = len(requests[0].positions[0])
    joined = TidalField.absent(len(requests), dim)
    for k in chosen:
        joined = joined.with_rows(torch.tensor([k]), fields[k])
    return joined


def _plain(value: Any) -> Any:
    """numpy arrays and scalars from a DataFrame cell -> plain Python lists and numbers."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
