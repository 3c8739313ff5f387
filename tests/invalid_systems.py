"""Kinds of invalid initial conditions, each refused at every boundary: the initial-conditions
loader, the ``aits simulate`` command line and the served model (tests of each use this list).

Each kind is a 2-body system (a change of ``GOOD``) and what the refusal must say, per boundary:
``loader`` (the loader's message, which the command line prints) and ``served`` (the served
model's HTTP 400 body, which names the row and the field).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: a bound binary: masses 1 and 1 at distance 1, the second moving at 1 (E = -0.5)
GOOD: dict[str, Any] = {
    "masses": [1.0, 1.0],
    "positions": [[0.0, 0.0], [1.0, 0.0]],
    "velocities": [[0.0, 0.0], [0.0, 1.0]],
}


@dataclass(frozen=True)
class Invalid:
    name: str
    change: dict[str, Any]
    loader: str
    served: str
    system: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "system", {**GOOD, **self.change})


NAN, INF = float("nan"), float("inf")

KINDS = (
    Invalid("negative mass", {"masses": [1.0, -1.0]}, "the mass of body 1 must be > 0", "mass of body 1 must be"),
    Invalid("zero mass", {"masses": [0.0, 1.0]}, "the mass of body 0 must be > 0", "mass of body 0 must be"),
    Invalid("NaN mass", {"masses": [1.0, NAN]}, "masses of body 1 must be finite", "masses"),
    Invalid(
        "infinite position",
        {"positions": [[0.0, 0.0], [INF, 0.0]]},
        "positions of body 1 must be finite",
        "positions",
    ),
    Invalid(
        "NaN velocity", {"velocities": [[0.0, 0.0], [0.0, NAN]]}, "velocities of body 1 must be finite", "velocities"
    ),
    Invalid(
        "coincident bodies without softening",
        {"positions": [[0.5, 0.0], [0.5, 0.0]]},
        "bodies 0 and 1 are at the same position without softening",
        "bodies 0 and 1 are at the same position without softening",
    ),
    Invalid(
        "ragged positions",
        {"positions": [[0.0, 0.0], [1.0]]},
        "positions must be a rectangular array",
        "positions rows must all have 2 or 3 components",
    ),
    Invalid(
        "four-dimensional positions",
        {"positions": [[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], "velocities": [[0.0] * 4, [0.0, 1.0, 0.0, 0.0]]},
        "with D in {2, 3}",
        "rows must all have 2 or 3 components",
    ),
    Invalid(
        "velocities of three bodies for two masses",
        {"velocities": [[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]},
        "velocities must have the shape of positions",
        "velocities has 3 rows but there are 2 masses",
    ),
    Invalid(
        "one body",
        {"masses": [1.0], "positions": [[0.0, 0.0]], "velocities": [[0.0, 1.0]]},
        "at least 2 bodies",
        "masses",
    ),
    Invalid("negative softening", {"softening": -0.1}, "softening must be finite and >= 0", "softening"),
    Invalid(
        "velocities too large for float64",
        {"velocities": [[0.0, 0.0], [0.0, 1e300]]},
        "the energy is not finite",
        "the energy is not finite",
    ),
    Invalid(
        "forces too large for float64",
        {"masses": [1e300, 1e300], "positions": [[0.0, 0.0], [1e-20, 0.0]]},
        "the acceleration of body 0 is not finite",
        "the acceleration of body 0 is not finite",
    ),
    Invalid(
        "zero energy",
        {"positions": [[-0.5, 0.0], [0.5, 0.0]], "velocities": [[0.0, -1.0], [0.0, 1.0]]},
        "the energy is exactly 0",
        "the energy is exactly 0",
    ),
)
