"""The offline retraining steps, one function per step (like a TFX component's executor).

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

import numpy as np

from tfmlops import data, evaluation, registry

log = logging.getLogger(__name__)

SMOKE_ROWS = 8
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
          model_config=None, train_config=None) -> dict:
    """Train a new model, log params, per-epoch metrics, curves and the model to a new MLflow run."""
    from tfmlops import models

    model_config = model_config or models.ModelConfig(n_features=spec.n_features, num_classes=spec.num_classes)
    train_config = train_config or models.TrainConfig(seed=spec.seed)
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


def _test_metrics(model, dataset: data.Dataset, num_classes: int) -> dict:
    from tfmlops import models

    return evaluation.classification_metrics(dataset.y_test, models.predict_classes(model, dataset.x_test),
                                             num_classes)


def evaluate(tracking_uri: str, run_id: str, model_uri: str, spec: DataSpec) -> dict:
    """Accuracy, macro precision/recall/F1 on the test split, logged as ``test_*`` with the matrix."""
    dataset, _ = spec.load()
    metrics = _test_metrics(registry.load_keras_model(tracking_uri, model_uri), dataset, spec.num_classes)
    matrix = metrics.pop("confusion_matrix")
    registry.log_metrics(tracking_uri, run_id, {f"test_{k}": v for k, v in metrics.items()})
    registry.log_confusion_matrix(tracking_uri, run_id, matrix)
    log.info("evaluation of run %s: %s", run_id, metrics)
    return metrics


def gate(tracking_uri: str, model_name: str, run_id: str, candidate_accuracy: float, spec: DataSpec,
         min_accuracy: float, tolerance: float) -> dict:
    """Compare the candidate with the thresholds and with the current champion, both on this
    run's test data. The decision and its reason are logged on the run."""
    champion = registry.alias_version(tracking_uri, model_name, registry.CHAMPION)
    champion_accuracy = None
    if champion is not None:
        dataset, _ = spec.load()
        champion_model = registry.load_keras_model(tracking_uri, f"models:/{model_name}@{registry.CHAMPION}")
        champion_accuracy = _test_metrics(champion_model, dataset, spec.num_classes)["accuracy"]
        registry.log_metrics(tracking_uri, run_id, {"champion_test_accuracy": champion_accuracy})
    decision = evaluation.gate(candidate_accuracy, min_accuracy, champion_accuracy, tolerance)
    registry.set_tags(tracking_uri, run_id, {"gate": "passed" if decision.passed else "rejected",
                                             "gate_reason": decision.reason})
    result = {**decision.to_dict(), "candidate_accuracy": candidate_accuracy, "champion_accuracy": champion_accuracy,
              "champion_version": int(champion.version) if champion is not None else None}
    log.info("gate: %s", result)
    return result


def export(tracking_uri: str, run_id: str, model_uri: str, spec: DataSpec) -> dict:
    """Export the serving SavedModel (+ smoke batch) and log it to the run under ``serving/``."""
    from tfmlops.export import export_saved_model

    dataset, _ = spec.load()
    model = registry.load_keras_model(tracking_uri, model_uri)
    with tempfile.TemporaryDirectory() as tmp:
        result = export_saved_model(model, Path(tmp) / SERVING_ARTIFACT, dataset.x_test[:SMOKE_ROWS])
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


class SmokeTestError(RuntimeError):
    """The served version's predictions differ from the exported model's."""


def smoke_check(served: np.ndarray, smoke: dict, where: str) -> float:
    expected = np.asarray(smoke["expected"], dtype=np.float32)
    served = np.asarray(served, dtype=np.float32)
    if served.shape != expected.shape:
        raise SmokeTestError(f"{where}: predictions have shape {served.shape}, expected {expected.shape}")
    max_diff = float(np.max(np.abs(served - expected)))
    if max_diff > smoke["tolerance"]:
        raise SmokeTestError(f"{where}: predictions differ from the exported model by {max_diff:.3g} "
                             f"(tolerance {smoke['tolerance']:g})")
    return max_diff


def download_serving_artifact(tracking_uri: str, serving_artifact_uri: str, dst: Path) -> tuple[Path, dict]:
    """Fetch ``serving/`` of a run: returns the SavedModel directory and the smoke batch."""
    local = registry.download(tracking_uri, serving_artifact_uri, dst)
    return local / "saved_model", json.loads((local / "smoke.json").read_text())


def promote(tracking_uri: str, model_name: str, version: int) -> dict:
    previous = registry.alias_version(tracking_uri, model_name, registry.CHAMPION)
    if previous is not None and int(previous.version) != version:
        registry.set_alias(tracking_uri, model_name, "previous", int(previous.version))
    registry.set_alias(tracking_uri, model_name, registry.CHAMPION, version)
    log.info("%s version %d is now %s", model_name, version, registry.CHAMPION)
    return {"model_name": model_name, "champion": version,
            "previous": int(previous.version) if previous is not None else None}


def deploy(tracking_uri: str, serving_client, model_name: str, version: int, serving_artifact_uri: str,
           models_root: str, model_config_file: str | None, server_models_root: str | None = None,
           timeout_s: float = 180.0) -> dict:
    """Publish the exported SavedModel as serving version ``version``, make sure the server's
    config lists the model (file + HandleReloadConfigRequest), wait until the version is
    AVAILABLE and check its REST predictions against the exported model's."""
    from tfmlops.serving.publish import ensure_model_config, publish_version

    with tempfile.TemporaryDirectory() as tmp:
        saved_model, smoke = download_serving_artifact(tracking_uri, serving_artifact_uri, Path(tmp))
        published = publish_version(saved_model, models_root, model_name, version)
    log.info("published %s", published)
    if model_config_file:
        base_path = f"{(server_models_root or models_root).rstrip('/')}/{model_name}"
        config, changed = ensure_model_config(model_config_file, model_name, base_path)
        if changed:
            serving_client.reload_config(config)
            log.info("added %s (base path %s) to %s and reloaded the server config", model_name, base_path,
                     model_config_file)
    serving_client.wait_until_available(model_name, version, timeout_s=timeout_s)
    served = serving_client.predict_rest(model_name, smoke["instances"], version=version,
                                         signature_name=smoke["signature_name"])
    max_diff = smoke_check(served, smoke, f"{model_name} version {version}")
    log.info("%s version %d is AVAILABLE and answers like the exported model (max diff %.3g)",
             model_name, version, max_diff)
    return {"model_name": model_name, "version": version, "path": published["path"],
            "content_hash": published["content_hash"], "smoke_max_abs_diff": max_diff}
