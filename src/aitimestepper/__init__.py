"""aitimestepper: a learned time-stepper for gravitational N-body simulation.

The public surface: the params contract, the batched float64 physics, features and the
time-step policies. Everything else is reached through its module.
"""

from aitimestepper.config import Params, ParamsError, load_params
from aitimestepper.features import compute_features, feature_dim
from aitimestepper.history import History
from aitimestepper.physics import State, leapfrog_step, relative_energy_error
from aitimestepper.policies import FixedStep, FreeFall, Oracle, TimeStepPolicy, make_policy

__all__ = [
    "FixedStep",
    "FreeFall",
    "History",
    "Oracle",
    "Params",
    "ParamsError",
    "State",
    "TimeStepPolicy",
    "compute_features",
    "feature_dim",
    "leapfrog_step",
    "load_params",
    "make_policy",
    "relative_energy_error",
]
