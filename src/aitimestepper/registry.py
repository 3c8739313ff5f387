"""The MLflow model registry: register trained models, record evaluations, promote a champion.

New versions get the alias ``candidate``. ``promote`` moves ``champion`` to a version only if
that version's evaluation is not worse than the current champion's: a worst-family pass rate at
least as high (rates at or above :data:`PASS_RATE_TARGET` count as equal) and a cost relative to
the oracle (geometric mean over the families) no higher. Evaluations are stored as version tags
(``evaluation.*``), taken from an evaluation report once :func:`judged_version` has checked, by
the checkpoint's SHA-256, that the report judged that very version.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from aitimestepper import tracking
from aitimestepper.atomic import write_json

CANDIDATE, CHAMPION = "candidate", "champion"
ALIAS_ATTEMPTS = PROMOTION_ATTEMPTS = 5
PASS_RATE_TARGET = 0.999
EVALUATION_TAGS = ("worst_family_pass_rate", "cost_ratio_to_oracle")


class RegistryError(ValueError):
    """A registry request that cannot be carried out; the message says why."""


def register_trained(train_run: Path, name: str, output: Path) -> dict[str, Any]:
    """Register the model logged by a training run (``models/train_run.json``) under ``name``,
    give it the ``candidate`` alias and a ``model_sha256`` tag, and write ``output`` (name,
    version, URIs, run id, checkpoint SHA-256)."""
    record = json.loads(Path(train_run).read_text())
    if not record.get("model_uri"):
        raise RegistryError(f"{train_run} names no logged model: train with tracking enabled first")
    tracking.configure()
    try:
        version = mlflow.register_model(record["model_uri"], name)
    except MlflowException as error:
        raise RegistryError(f"cannot register {record['model_uri']} in {tracking.tracking_uri()}: {error}") from None
    client = MlflowClient()
    set_alias(client, name, CANDIDATE, version.version)
    if record.get("model_sha256"):
        client.set_model_version_tag(name, version.version, "model_sha256", record["model_sha256"])
    registered = {
        "name": name,
        "version": int(version.version),
        "uri": f"models:/{name}/{version.version}",
        "alias": CANDIDATE,
        "alias_uri": f"models:/{name}@{CANDIDATE}",
        "run_id": record.get("run_id"),
        "model_sha256": record.get("model_sha256"),
    }
    write_json(output, registered)
    return registered


def set_alias(client: MlflowClient, name: str, alias: str, version: str | int) -> None:
    """Point ``alias`` of model ``name`` at ``version``, retrying a write that collided with
    another process creating the same alias (on PostgreSQL a unique-key violation; parallel
    queued experiments register at once).

    Raises:
        RegistryError: still failing after :data:`ALIAS_ATTEMPTS` attempts.
    """
    for attempt in range(1, ALIAS_ATTEMPTS + 1):
        try:
            client.set_registered_model_alias(name, alias, str(version))
            return
        except MlflowException as error:
            failure = error
            time.sleep(0.1 * attempt)
    raise RegistryError(
        f"cannot set {name!r}@{alias} in {tracking.tracking_uri()} in {ALIAS_ATTEMPTS} attempts: {failure}"
    )


def record_evaluation(name: str, version: int, metrics: dict[str, float]) -> None:
    """Store evaluation metrics on a model version as ``evaluation.<key>`` tags.

    Raises:
        RegistryError: no such model version.
    """
    tracking.configure()
    client = MlflowClient()
    try:
        client.get_model_version(name, str(version))
    except MlflowException as error:
        raise RegistryError(f"no version {version} of {name!r} in {tracking.tracking_uri()}: {error}") from None
    for key in EVALUATION_TAGS:
        client.set_model_version_tag(name, str(version), f"evaluation.{key}", repr(float(metrics[key])))


def judged_version(registered: Path, evaluation: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """The registry record ``registered`` (``models/registered.json``) and the headline of the
    evaluation report ``evaluation`` (``metrics/evaluate.json``), once checked to be of the
    same checkpoint (by SHA-256). Reads files only; the caller records the headline.

    Raises:
        RegistryError: a missing file, a report without a headline, or a report of another
            checkpoint than the registered one.
    """
    record, report = (_read_json(Path(path)) for path in (registered, evaluation))
    judged, held = report.get("model_sha256"), record.get("model_sha256")
    if "headline" not in report or not judged:
        raise RegistryError(f"{evaluation} has no headline or model_sha256: run `aits evaluate` again")
    if judged != held:
        raise RegistryError(
            f"{evaluation} judged the checkpoint with SHA-256 {judged}, but version {record['version']} of "
            f"{record['name']!r} ({registered}) holds {held}: evaluate the registered model"
        )
    return record, report["headline"]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RegistryError(f"{path} does not exist: run the pipeline's earlier stages first (dvc repro)")
    return json.loads(path.read_text())


def promote(name: str, version: int | None = None, *, force: bool = False) -> dict[str, Any]:
    """Move ``champion`` to ``version`` (default: the ``candidate``) unless it is worse.

    Promotions may run at once (a queued sweep's promote stages): if the alias changes between the
    decision and the write, the decision is taken again against the new champion (up to
    :data:`PROMOTION_ATTEMPTS` times). Two candidates decided at the same instant are last-writer-wins.

    Returns:
        The decision: promoted (bool), version, previous champion, reason.

    Raises:
        RegistryError: unknown model or version, or a version that has not been evaluated.
    """
    tracking.configure()
    client = MlflowClient()
    try:
        chosen = (
            client.get_model_version(name, str(version))
            if version is not None
            else client.get_model_version_by_alias(name, CANDIDATE)
        )
    except MlflowException as error:
        raise RegistryError(f"no such model version of {name!r} in {tracking.tracking_uri()}: {error}") from None
    candidate = _evaluation(chosen)
    for attempt in range(1, PROMOTION_ATTEMPTS + 1):
        decision = _decision(client, chosen, candidate, force)
        if not decision["promoted"]:
            return decision
        try:
            client.set_registered_model_alias(name, CHAMPION, chosen.version)
            return decision
        except MlflowException as error:
            # another promotion created the alias between our read and our write (on PostgreSQL a
            # unique-key violation): decide again, against the champion it set
            failure = error
            time.sleep(0.1 * attempt)
    raise RegistryError(
        f"cannot set {name!r}@{CHAMPION} in {tracking.tracking_uri()} in {PROMOTION_ATTEMPTS} attempts: {failure}"
    )


def _decision(client: MlflowClient, chosen, candidate: dict[str, float], force: bool) -> dict[str, Any]:
    """Whether ``chosen`` (evaluated as ``candidate``) should be the champion, judged against the
    current champion."""
    name = chosen.name
    try:
        champion_version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion_version = None
    decision = {"name": name, "version": int(chosen.version), "candidate": candidate}
    if champion_version is None:
        promoted, reason = True, "no champion yet"
    elif champion_version.version == chosen.version:
        promoted, reason = True, "already champion"
    elif not _evaluated(champion_version):
        promoted, reason = True, f"the champion (version {champion_version.version}) has no evaluation of this kind"
    else:
        champion = _evaluation(champion_version)
        decision["champion"] = {"version": int(champion_version.version), **champion}
        not_worse = _pass_score(candidate) >= _pass_score(champion) and (
            candidate["cost_ratio_to_oracle"] <= champion["cost_ratio_to_oracle"]
        )
        promoted = not_worse or force
        reason = "not worse than the champion" if not_worse else ("forced" if force else "worse than the champion")
    return {**decision, "promoted": promoted, "reason": reason}


def _evaluated(version) -> bool:
    return all(f"evaluation.{key}" in (version.tags or {}) for key in EVALUATION_TAGS)


def _evaluation(version) -> dict[str, float]:
    tags = version.tags or {}
    missing = [key for key in EVALUATION_TAGS if f"evaluation.{key}" not in tags]
    if missing:
        raise RegistryError(
            f"version {version.version} of {version.name!r} has no evaluation ({missing}); run evaluate first"
        )
    return {key: float(tags[f"evaluation.{key}"]) for key in EVALUATION_TAGS}


def _pass_score(evaluation: dict[str, float]) -> float:
    return min(evaluation["worst_family_pass_rate"], PASS_RATE_TARGET)
