"""aitimestepper: a learned time-stepper for gravitational N-body simulation.

The public surface: the params contract, the batched float64 physics, the policy's look at a
state and the time-step policies. Everything else is reached through its module.
"""

from aitimestepper.config import Params, ParamsError, load_params
from aitimestepper.features import PairLook, look
from aitimestepper.history import History
from aitimestepper.physics import State, leapfrog_step, relative_energy_error
from aitimestepper.policies import (
    PRS23,
    EnergyFeedback,
    EnergyFreeFall,
    FixedStep,
    FreeFall,
    Oracle,
    TimeStepPolicy,
    make_policy,
)

__all__ = [
    "PRS23",
    "EnergyFeedback",
    "EnergyFreeFall",
    "FixedStep",
    "FreeFall",
    "History",
    "Oracle",
    "PairLook",
    "Params",
    "ParamsError",
    "State",
    "TimeStepPolicy",
    "leapfrog_step",
    "load_params",
    "look",
    "make_policy",
    "relative_energy_error",
]
