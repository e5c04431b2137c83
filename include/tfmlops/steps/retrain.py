"""Steps of ``tf_offline_retrain`` (and the shared ones: resolve, export, register), one function
per step, like a TFX component's executor.

Each takes URIs and small configs and returns a small JSON-able dict; artifacts travel as MLflow
URIs (``runs:/...``, ``models:/...``), never in the return value. The Airflow operators in
``plugins/`` are thin wrappers around these functions; so are the tests.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tfmlops import data, evaluation, registry
from tfmlops.data import DatasetError  # noqa: F401  (what validate_data raises: operators catch it)

if TYPE_CHECKING:  # tfmlops.models imports TensorFlow: only inside the steps that train
    from tfmlops import models

log = logging.getLogger(__name__)

SMOKE_ROWS = 8
WARMUP_ROWS = 32
SERVING_ARTIFACT = "serving"


@dataclass
class DataSpec:
    """Which data a step reads: the same spec gives the same rows in every task."""

    uri: str = "mnist"
    sample_fraction: float = 1.0
    seed: int = 0
    n_features: int = 784
    num_classes: int = 10
    max_overlap_fraction: float = 0.0
    s3_client: object = field(default=None, repr=False)

    def load(self) -> tuple[data.Dataset, dict]:
        return data.load_validated(self.uri, self.n_features, self.num_classes, self.sample_fraction,
                                   self.seed, s3_client=self.s3_client,
                                   max_overlap_fraction=self.max_overlap_fraction)


def resolve(tracking_uri: str, model_name: str, version_or_alias: str | int) -> dict:
    """``"champion"`` / ``"3"`` → the registered version, its run, model URI and serving artifact."""
    found = registry.get_version(tracking_uri, model_name, version_or_alias)
    version = int(found.version)
    return {"model_name": model_name, "version": version, "run_id": found.run_id,
            "model_uri": f"models:/{model_name}/{version}",
            "serving_artifact_uri": f"runs:/{found.run_id}/{SERVING_ARTIFACT}"}


def validate_data(spec: DataSpec) -> dict:
    _, report = spec.load()
    log.info("dataset %s is valid: %d train rows, %d test rows, fingerprint %s", spec.uri,
             report["train_rows"], report["test_rows"], report["fingerprint"][:12])
    return report


def train(tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str], spec: DataSpec,
          model_config: models.ModelConfig | dict | None = None,
          train_config: models.TrainConfig | dict | None = None) -> dict:
    """Train a new model, log params, per-epoch metrics, curves and the model to a new MLflow run.
    The configs are :class:`tfmlops.models.ModelConfig` / ``TrainConfig`` or dicts of their fields
    (what an operator passes without importing TensorFlow); unset fields take the spec's shape/seed."""
    from tfmlops import models

    if not isinstance(model_config, models.ModelConfig):
        model_config = models.ModelConfig(**{"n_features": spec.n_features, "num_classes": spec.num_classes,
                                             **(model_config or {})})
    if not isinstance(train_config, models.TrainConfig):
        train_config = models.TrainConfig(**{"seed": spec.seed, **(train_config or {})})
    dataset, report = spec.load()
    run_id = registry.start_run(tracking_uri, experiment, run_name,
                                {**tags, "dataset_uri": spec.uri, "dataset_fingerprint": report["fingerprint"]})
    registry.log_params(tracking_uri, run_id, {
        **{f"model.{k}": v for k, v in model_config.to_dict().items()},
        **{f"train.{k}": v for k, v in train_config.to_dict().items()},
        "data.uri": spec.uri, "data.sample_fraction": spec.sample_fraction,
        "data.train_rows": report["train_rows"], "data.test_rows": report["test_rows"]})
    model = models.build_model(model_config)
    history = models.train(model, dataset.x_train, dataset.y_train, train_config)
    registry.log_history(tracking_uri, run_id, history)
    model_uri = registry.log_keras_model(tracking_uri, run_id, model, dataset.x_test[:SMOKE_ROWS])
    final = {k: round(v[-1], 6) for k, v in history.items()}
    log.info("trained run %s: %s; model at %s", run_id, final, model_uri)
    return {"run_id": run_id, "model_uri": model_uri, "dataset_fingerprint": report["fingerprint"],
            "final_epoch": final}


def model_metrics(model, x: np.ndarray, y: np.ndarray, num_classes: int) -> dict:
    """Accuracy, macro precision/recall/F1 and the confusion matrix of a Keras model on (x, y)."""
    from tfmlops import models

    return evaluation.classification_metrics(y, models.predict_classes(model, x), num_classes)


def evaluate(tracking_uri: str, run_id: str, model_uri: str, spec: DataSpec) -> dict:
    """Accuracy, macro precision/recall/F1 on the test split, logged as ``test_*`` with the matrix."""
    dataset, _ = spec.load()
    metrics = model_metrics(registry.load_keras_model(tracking_uri, model_uri), dataset.x_test, dataset.y_test,
                            spec.num_classes)
    matrix = metrics.pop("confusion_matrix")
    registry.log_metrics(tracking_uri, run_id, {f"test_{k}": v for k, v in metrics.items()})
    registry.log_confusion_matrix(tracking_uri, run_id, matrix)
    log.info("evaluation of run %s: %s", run_id, metrics)
    return metrics


def gate_against_champion(tracking_uri: str, model_name: str, run_id: str, candidate_accuracy: float,
                          spec: DataSpec, min_accuracy: float, tolerance: float) -> dict:
    """Compare the candidate with the thresholds and with the current champion, both on this
    run's test data. The decision and its reason are logged on the run."""
    champion = registry.alias_version(tracking_uri, model_name, registry.CHAMPION)
    champion_accuracy = None
    if champion is not None:
        dataset, _ = spec.load()
        champion_model = registry.load_keras_model(tracking_uri, f"models:/{model_name}@{registry.CHAMPION}")
        champion_accuracy = model_metrics(champion_model, dataset.x_test, dataset.y_test, spec.num_classes)["accuracy"]
        registry.log_metrics(tracking_uri, run_id, {"champion_test_accuracy": champion_accuracy})
    decision = evaluation.accuracy_gate(candidate_accuracy, min_accuracy, champion_accuracy, tolerance)
    registry.set_tags(tracking_uri, run_id, {"gate": "passed" if decision.passed else "rejected",
                                             "gate_reason": decision.reason,
                                             # the candidate's parent in the model card's lineage
                                             **({"gate.champion_version": champion.version} if champion else {})})
    result = {**decision.to_dict(), "candidate_accuracy": candidate_accuracy, "champion_accuracy": champion_accuracy,
              "champion_version": int(champion.version) if champion is not None else None}
    log.info("gate: %s", result)
    return result


def export(tracking_uri: str, run_id: str, model_uri: str, spec: DataSpec) -> dict:
    """Export the run's model as the serving SavedModel (+ smoke batch from the test split, warmup
    requests from training rows)."""
    dataset, _ = spec.load()
    return export_model(tracking_uri, run_id, registry.load_keras_model(tracking_uri, model_uri),
                        dataset.x_test[:SMOKE_ROWS], dataset.x_train[:WARMUP_ROWS])


def export_model(tracking_uri: str, run_id: str, model, smoke_inputs: np.ndarray, warmup_inputs: np.ndarray) -> dict:
    """Export ``model`` as the serving SavedModel, reloaded and checked on ``smoke_inputs``, with
    warmup requests from ``warmup_inputs``, and log it to the run under ``serving/`` (what a rollout
    publishes)."""
    from tfmlops.export import export_saved_model

    with tempfile.TemporaryDirectory() as tmp:
        result = export_saved_model(model, Path(tmp) / SERVING_ARTIFACT, smoke_inputs, warmup_inputs)
        artifact_uri = registry.log_files(tracking_uri, run_id, result["path"], SERVING_ARTIFACT)
    registry.log_metrics(tracking_uri, run_id, {"export_max_abs_diff": result["max_abs_diff"]})
    return {"serving_artifact_uri": artifact_uri, "max_abs_diff": result["max_abs_diff"]}


def register(tracking_uri: str, model_name: str, run_id: str, model_uri: str, metrics: dict,
             lineage: dict[str, str]) -> dict:
    """Register the run's model as a new version, tagged with its lineage, aliased ``challenger``."""
    tags = {**lineage, **{f"test_{k}": round(v, 6) for k, v in metrics.items()}}
    version = registry.register(tracking_uri, model_name, model_uri, run_id, tags,
                                description=f"test accuracy {metrics.get('accuracy', float('nan')):.4f}")
    registry.set_alias(tracking_uri, model_name, registry.CHALLENGER, version)
    log.info("registered %s version %d (alias %s)", model_name, version, registry.CHALLENGER)
    return {"model_name": model_name, "version": version}


def download_serving_artifact(tracking_uri: str, serving_artifact_uri: str, dst: Path) -> tuple[Path, dict]:
    """Fetch ``serving/`` of a run: returns the SavedModel directory and the smoke batch."""
    local = registry.download(tracking_uri, serving_artifact_uri, dst)
    return local / "saved_model", json.loads((local / "smoke.json").read_text())
