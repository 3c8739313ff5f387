"""The learned policy as an MLflow pyfunc model that runs simulations (see :mod:`serving`)."""

from __future__ import annotations

import warnings
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import ColSpec, Schema

CHECKPOINT_ARTIFACT = "checkpoint"
OPTIONAL_INPUTS = (
    "softening",
    "max_steps",
    "energy_threshold",
    "host_mass",
    "host_position",
    "host_orbit",
    "host_softening",
)


class SimulationModel(PythonModel):
    """Rebuilds the policy from its checkpoint artifact (the config contract travels inside)
    and answers simulation requests."""

    def load_context(self, context) -> None:
        from aitimestepper.checkpoint import load_policy
        from aitimestepper.runtime import Runtime

        Runtime().apply()  # the command line's numerics and threads, in the serving process too
        self.policy = load_policy(Path(context.artifacts[CHECKPOINT_ARTIFACT]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Integrate each requested system; malformed requests raise an HTTP-400 error."""
        from aitimestepper.serving import RequestError, parse_requests, simulate_requests

        try:
            requests = parse_requests(pd.DataFrame(model_input))
            return simulate_requests(self.policy, requests, self.policy.params.energy_threshold)
        except RequestError as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None


def pip_requirements() -> list[str]:
    """The package's own pinned runtime requirements (its code travels with the model). Stated,
    not inferred: mlflow's inference loads the model in a subprocess (about 40 s) and misses torch
    and numba, which the model imports lazily."""
    return [requirement for requirement in metadata.requires("aitimestepper") if "extra ==" not in requirement]


def log_simulation_model(checkpoint: Path, name: str = "model", registered_model_name: str | None = None):
    """Log the checkpoint as a pyfunc model in the active run, with the package's code and
    requirements, a signature and an input example. Returns mlflow's ``ModelInfo``."""
    import aitimestepper
    from aitimestepper.checkpoint import load_policy
    from aitimestepper.serving import example_request, parse_requests, simulate_requests

    policy = load_policy(checkpoint)
    example = example_request(policy.params.energy_threshold, field=policy.params.trained_in_field)
    output = simulate_requests(policy, parse_requests(example), policy.params.energy_threshold)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=SimulationModel(),
        artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
        code_paths=[str(Path(aitimestepper.__file__).parent)],
        pip_requirements=pip_requirements(),
        signature=_signature(example, output.infer_objects()),
        input_example=example,
        registered_model_name=registered_model_name,
    )


def _signature(example: pd.DataFrame, output: pd.DataFrame) -> ModelSignature:
    """The inferred signature, with the optional request columns marked optional."""
    with warnings.catch_warnings():  # "integer columns cannot represent missing values": max_steps is optional
        warnings.simplefilter("ignore", UserWarning)
        inferred = infer_signature(example, output)
    inputs = [
        ColSpec(spec.type, spec.name, required=spec.name not in OPTIONAL_INPUTS) for spec in inferred.inputs.inputs
    ]
    return ModelSignature(inputs=Schema(inputs), outputs=inferred.outputs)
