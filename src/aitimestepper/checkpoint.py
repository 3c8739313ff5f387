"""Self-describing checkpoints: weights plus the config contract that rebuilds the policy.

Every checkpoint is a dict of tensors and plain values, written atomically and loadable with
``torch.load(weights_only=True)``:
    ``format``: ``"aitimestepper.checkpoint"``; ``contract``: :meth:`Params.model_contract` output;
    ``dtype``: the precision of the physics and features (float64) and of the network's layers
    (float32); ``model_state``: the network's ``state_dict`` (normalization constants included as
    buffers, float64); ``normalization``: the same constants as lists;
    ``epoch``; ``validation``: metrics of the snapshot. Training checkpoints add
    ``optimizer_state``, ``rng_state``, ``buffer``, ``collector``, ``best`` and ``history``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from aitimestepper.atomic import write_atomic
from aitimestepper.config import Params, ParamsError
from aitimestepper.model import NETWORK_DTYPE, LearnedPolicy, PairNet, build_network

CHECKPOINT_FORMAT = "aitimestepper.checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, another format, or inconsistent."""


def model_payload(network: PairNet, params: Params, epoch: int, validation: dict[str, float]) -> dict[str, Any]:
    """The part of a checkpoint that rebuilds the policy."""
    return {
        "format": CHECKPOINT_FORMAT,
        "contract": params.model_contract(),
        "dtype": {"physics_and_features": "float64", "network_layers": str(NETWORK_DTYPE).removeprefix("torch.")},
        "model_state": {k: v.detach().clone() for k, v in network.state_dict().items()},
        "normalization": {
            name: getattr(network, name).tolist()
            for name in ("pair_mean", "pair_scale", "context_mean", "context_scale")
        },
        "epoch": epoch,
        "validation": dict(validation),
    }


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (temporary file, then rename), through a file object: torch
    then names the archive's inner folder ``archive`` instead of after the (randomly named)
    temporary file, so the same payload gives the same bytes."""

    def write(temporary: Path) -> None:
        with temporary.open("wb") as handle:
            torch.save(payload, handle)

    write_atomic(Path(path), write)


def checkpoint_digest(path: Path) -> str:
    """The SHA-256 of a checkpoint file's bytes (hex): identifies the model a training wrote, a
    registry version holds and an evaluation judged (checkpoints are byte-reproducible)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``) and check its format.

    Raises:
        CheckpointError: missing or unreadable file, or not an aitimestepper checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt files
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an aitimestepper checkpoint (format {CHECKPOINT_FORMAT!r})")
    return payload


def policy_from_payload(payload: dict[str, Any], source: str = "checkpoint") -> LearnedPolicy:
    """Rebuild the learned policy from a checkpoint dict alone.

    Raises:
        CheckpointError: unknown contract version, invalid settings, or weights whose names or
            shapes do not match the network the contract describes.
    """
    try:
        params = Params.from_contract(payload["contract"])
    except (ParamsError, KeyError, TypeError) as error:
        raise CheckpointError(f"{source}: bad config contract: {error}") from error
    network = build_network(params)
    try:
        network.load_state_dict(payload["model_state"])
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(f"{source}: weights do not match the network of its contract: {error}") from error
    network.eval()
    return LearnedPolicy(network, params)


def load_policy(path: Path) -> LearnedPolicy:
    """The learned policy stored in the checkpoint at ``path``."""
    return policy_from_payload(read_checkpoint(path), source=str(path))
