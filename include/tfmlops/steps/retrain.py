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


from tfmlops import evaluation, model_data, modelspec, registry
from tfmlops.data import DatasetError  # noqa: F401  (what validate_data raises: operators catch it)
from tfmlops.model_data import ModelData
from tfmlops.modelspec import ModelModuleError  # noqa: F401  (a broken model module: operators catch it)

log = logging.getLogger(__name__)

SMOKE_ROWS = 8
WARMUP_ROWS = 32
SERVING_ARTIFACT = "serving"


@dataclass
class DataSpec:
    """Which model and data a step works on: the same spec gives the same rows in every task.

    ``model_module`` names the model module (:mod:`tfmlops.modelspec`) and ``hyperparameters``
    the form's overrides of its ``HPARAMS``; the first task reads them into a
    :class:`~tfmlops.modelspec.ModelSpec` and later tasks get it back as ``model_spec`` (plain
    data), so the module is read once per run. :meth:`load_model_data` gives the module's splits."""

    uri: str = "mnist"
    sample_fraction: float = 1.0
    seed: int = 0
    max_overlap_fraction: float = 0.0
    s3_client: object = field(default=None, repr=False)
    model_module: str = modelspec.DEFAULT_MODULE
    hyperparameters: dict | str | None = None
    model_spec: dict | None = None

    def spec(self) -> modelspec.ModelSpec:
        if self.model_spec:
            spec = modelspec.ModelSpec.from_dict(self.model_spec)
            changed = modelspec.module_source_changed(spec)
            if changed:
                log.warning("%s", changed)
            return spec
        return modelspec.read_spec(self.model_module or modelspec.DEFAULT_MODULE, self.hyperparameters)

    def load_model_data(self, spec: modelspec.ModelSpec | None = None) -> tuple[ModelData, dict, object]:
        """The module's splits, validated: (data, report, module)."""
        spec = spec or self.spec()
        module = modelspec.import_module(spec.module)
        loaded, report = model_data.load(spec, module, self.uri, self.sample_fraction, self.seed,
                                         s3_client=self.s3_client, max_overlap_fraction=self.max_overlap_fraction)
        return loaded, report, module


def resolve(tracking_uri: str, model_name: str, version_or_alias: str | int) -> dict:
    """``"champion"`` / ``"3"`` → the registered version, its run, model URI, serving artifact, the
    model spec it was trained with (None for versions registered before specs) and the dataset it
    was trained on (``dataset_uri``, None when its run does not say)."""
    found = registry.get_version(tracking_uri, model_name, version_or_alias)
    version = int(found.version)
    spec = modelspec.ModelSpec.from_tags(found.tags or {})
    run_tags = registry.client(tracking_uri).get_run(found.run_id).data.tags
    result = {"model_name": model_name, "version": version, "run_id": found.run_id,
              "model_uri": f"models:/{model_name}/{version}",
              "serving_artifact_uri": f"runs:/{found.run_id}/{SERVING_ARTIFACT}",
              "model_spec": spec.to_dict() if spec else None, "dataset_uri": run_tags.get("dataset_uri")}
    changed = modelspec.module_source_changed(spec) if spec else None
    if changed:  # said, and recorded on the version's run, and the DAG goes on with the version as trained
        log.warning("%s", changed)
        result["module_changed"] = changed
        registry.set_tags(tracking_uri, found.run_id, {"model.module_changed": changed})
    return result


def version_spec(found) -> tuple[modelspec.ModelSpec, object]:
    """The spec a registered version (an MLflow ``ModelVersion``) was trained with (its ``model.*``
    tags; a version registered before specs is the default module's MNIST MLP) and its module. A
    module whose source changed since is said in the task's log (the DAG goes on with it)."""
    spec = modelspec.ModelSpec.from_tags(found.tags or {}) or modelspec.read_spec(modelspec.DEFAULT_MODULE)
    changed = modelspec.module_source_changed(spec)
    if changed:
        log.warning("%s", changed)
    return spec, modelspec.import_module(spec.module)


def validate_data(spec: DataSpec) -> dict:
    """Read the model module (the contract checked) and load and check its data — a streamed
    dataset is read through once, every batch checked — and profile every split (the baseline the
    training run logs). Returns the data report with its ``profile`` and the ``model_spec`` every
    later task of the run takes."""
    model_spec = spec.spec()
    loaded, report, module = spec.load_model_data(model_spec)
    # the built model's side of the contract (inputs, output width, tf_keras) is checked here too,
    # so that a broken module fails the first task, not the training after it
    modelspec.build_model(model_spec, module, model_data.sample_features(loaded.train,
                                                                         int(model_spec.hparams["adapt_rows"])))
    profile = {**model_data.profile(model_spec, loaded, seed=spec.seed), "fingerprint": report["fingerprint"]}
    if report.get("streamed"):
        rows = {name: found["rows"] for name, found in profile["splits"].items()}
        report.update({"train_rows": rows["train"] + (rows["validation"] if report["validation_carved"] else 0),
                       "validation_rows": rows["validation"], "test_rows": rows["test"]})
        if model_spec.task != "regression":
            report["train_class_counts"] = [a + b for a, b in zip(profile["splits"]["train"]["label"]["counts"],
                                                                  profile["splits"]["validation"]["label"]["counts"])]
    log.info("dataset %s is valid for %s (%s): %d train, %d validation%s, %d test rows%s, fingerprint %s", spec.uri,
             model_spec.module, model_spec.task, report["train_rows"], report["validation_rows"],
             " (carved from train)" if report["validation_carved"] else "", report["test_rows"],
             _streamed_from(report) if report.get("streamed") else "",
             report["fingerprint"][:12])
    return {**report, "profile": profile, "model_spec": model_spec.to_dict()}


def _streamed_from(report: dict) -> str:
    if "shards" in report:
        return f" (streamed from {sum(report['shards'].values())} shards)"
    return f" (streamed from load_data's {report['format']})"


def _with_overrides(spec: modelspec.ModelSpec, *configs) -> modelspec.ModelSpec:
    """``spec`` with hyperparameters set by code (tests, benchmarks): dicts or ``tfmlops.models``
    config objects, checked against the known names like the form's."""
    overrides = {}
    for config in configs:
        if config is None:
            continue
        overrides.update(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    overrides = {k: v for k, v in overrides.items() if k not in ("n_features", "num_classes")}  # ModelConfig's
    if not overrides:
        return spec
    hparams = modelspec.merge_hparams(spec.module, spec.hparams, overrides)
    return modelspec.ModelSpec(**{**spec.__dict__, "hparams": hparams})


def train(tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str], spec: DataSpec,
          model_config: dict | None = None, train_config: dict | None = None, profile: dict | None = None) -> dict:
    """Train the model module's model on its train split (validation split for the per-epoch
    ``val_*`` figures); log params, the spec (tags), per-epoch metrics as they come, curves, the
    model and the dataset's ``profile`` (from :func:`validate_data`; with a streamed dataset's
    manifest) to a new MLflow run. ``model_config`` / ``train_config`` override hyperparameters."""
    from tfmlops import trainer

    model_spec = _with_overrides(spec.spec(), model_config, train_config)
    loaded, report, module = spec.load_model_data(model_spec)
    run_id = registry.start_run(tracking_uri, experiment, run_name,
                                {**tags, **model_spec.to_tags(), "dataset_uri": spec.uri,
                                 "dataset_fingerprint": report["fingerprint"]})
    registry.log_params(tracking_uri, run_id, {
        **{f"hparams.{k}": v for k, v in model_spec.hparams.items()},
        "model.module": model_spec.module, "model.task": model_spec.task,
        "data.uri": spec.uri, "data.sample_fraction": spec.sample_fraction, **_row_params(loaded, profile)})
    if profile:
        registry.log_dict(tracking_uri, run_id, profile, "data/profile.json")
    if isinstance(loaded, model_data.StreamedData):
        registry.log_dict(tracking_uri, run_id, loaded.manifest, "data/manifest.json")
    def on_epoch(epoch: int, logs: dict) -> None:  # MLflow's curves grow while the task runs
        registry.log_metrics(tracking_uri, run_id, logs, step=epoch)

    model, history = trainer.train_model(model_spec, module, loaded, on_epoch=on_epoch)
    registry.log_history(tracking_uri, run_id, history, metrics=False)
    model_uri = registry.log_keras_model(tracking_uri, run_id, model, loaded.test.head(SMOKE_ROWS).features)
    final = {k: round(v[-1], 6) for k, v in history.items() if v}
    log.info("trained run %s: %s; model at %s", run_id, final, model_uri)
    return {"run_id": run_id, "model_uri": model_uri, "dataset_fingerprint": report["fingerprint"],
            "final_epoch": final, "model_spec": model_spec.to_dict()}


def _row_params(loaded, profile: dict | None) -> dict:
    """The splits' row counts (a streamed dataset's from its profile; its shard counts either way)."""
    if isinstance(loaded, model_data.StreamedData):
        rows = {name: found["rows"] for name, found in (profile or {}).get("splits", {}).items()}
        return {**{f"data.{name}_rows": n for name, n in rows.items()},
                **{f"data.{name}_shards": len(split.layout.splits[name]) for name in model_data.SPLITS
                   if isinstance(split := getattr(loaded, name), model_data.ShardSplit)}}
    return {f"data.{name}_rows": len(getattr(loaded, name)) for name in model_data.SPLITS}


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in evaluation.PLOT_KEYS}


def evaluate(tracking_uri: str, run_id: str, model_uri: str, spec: DataSpec) -> dict:
    """The task's metrics on the test split (multiclass: accuracy, macro P/R/F1 + confusion matrix;
    binary: AUC, accuracy, precision/recall at 0.5 + ROC curve; regression: RMSE, MAE, R² +
    residual plot), logged as ``test_*`` with the plots."""
    from tfmlops import trainer

    model_spec = spec.spec()
    loaded, _, _ = spec.load_model_data(model_spec)
    model = registry.load_keras_model(tracking_uri, model_uri)
    labels, outputs = trainer.labels_and_outputs(model_spec, model, loaded.test)
    metrics = evaluation.task_metrics(model_spec.task, labels, outputs, model_spec.num_classes)
    scalars = _scalars(metrics)
    registry.log_metrics(tracking_uri, run_id, {f"test_{k}": v for k, v in scalars.items()})
    registry.log_evaluation_plots(tracking_uri, run_id, model_spec.task, metrics, labels, outputs,
                                  model_spec.class_names)
    log.info("evaluation of run %s (%s): %s", run_id, model_spec.task, scalars)
    return scalars


def _champion_spec_problem(champion, candidate: modelspec.ModelSpec) -> str | None:
    """Why the champion cannot be compared with (or replaced by) the candidate, if it cannot."""
    old = modelspec.ModelSpec.from_tags(champion.tags or {})
    if old is None:
        old = modelspec.read_spec(modelspec.DEFAULT_MODULE)  # versions from before specs: the MNIST MLP
    if old.task != candidate.task:
        return f"the champion (version {champion.version}) is a {old.task} model, the candidate a {candidate.task} one"
    if old.inputs != candidate.inputs:
        return (f"the champion (version {champion.version}) takes inputs {old.to_dict()['inputs']}, the candidate "
                f"{candidate.to_dict()['inputs']}: its clients would break (register it under a new model name)")
    if old.task != "regression" and old.class_names != candidate.class_names:
        return f"the champion's classes {old.class_names} differ from the candidate's {candidate.class_names}"
    return None


def gate_against_champion(tracking_uri: str, model_name: str, run_id: str, candidate: float | dict, spec: DataSpec,
                          threshold: float | None = None, tolerance: float | None = None,
                          metric: str | None = None) -> dict:
    """Compare the candidate's gate metric (the form's ``metric`` or the module's ``GATE``) with the
    threshold and with the current champion's, both on this run's test data; ``candidate`` is the
    metric's value or the evaluation's metrics. The decision and its reason are logged on the run."""
    from tfmlops import trainer

    model_spec = spec.spec()
    gate = modelspec.resolve_gate(model_spec, metric, threshold, tolerance)
    name = gate["metric"]
    value = float(candidate[name] if isinstance(candidate, dict) else candidate)
    champion = registry.alias_version(tracking_uri, model_name, registry.CHAMPION)
    champion_value = None
    problem = _champion_spec_problem(champion, model_spec) if champion is not None else None
    if problem:
        decision = evaluation.GateDecision(False, f"not comparable with the champion: {problem}")
    else:
        if champion is not None:
            loaded, _, _ = spec.load_model_data(model_spec)
            champion_model = registry.load_keras_model(tracking_uri, f"models:/{model_name}@{registry.CHAMPION}")
            champion_value = float(trainer.metrics(model_spec, champion_model, loaded.test)[name])
            registry.log_metrics(tracking_uri, run_id, {f"champion_test_{name}": champion_value})
        decision = evaluation.metric_gate(name, value, gate["threshold"], champion_value, gate["tolerance"],
                                          gate["higher_is_better"])
    registry.set_tags(tracking_uri, run_id, {"gate": "passed" if decision.passed else "rejected",
                                             "gate_reason": decision.reason, "gate.metric": name,
                                             "gate.threshold": gate["threshold"], "gate.tolerance": gate["tolerance"],
                                             # the candidate's parent in the model card's lineage
                                             **({"gate.champion_version": champion.version} if champion else {})})
    result = {**decision.to_dict(), "metric": name, "threshold": gate["threshold"], "tolerance": gate["tolerance"],
              "candidate": value, "champion": champion_value,
              "champion_version": int(champion.version) if champion is not None else None}
    if name == "accuracy":  # the names the model card and earlier runs read
        result.update({"candidate_accuracy": value, "champion_accuracy": champion_value})
    log.info("gate: %s", result)
    return result


def export(tracking_uri: str, run_id: str, model_uri: str, spec: DataSpec) -> dict:
    """Export the run's model as the serving SavedModel with the signatures its spec gives (smoke
    batch and warmup requests from the module's test split)."""
    model_spec = spec.spec()
    loaded, _, _ = spec.load_model_data(model_spec)
    return export_model(tracking_uri, run_id, registry.load_keras_model(tracking_uri, model_uri),
                        loaded.test.head(SMOKE_ROWS).features, loaded.test.head(WARMUP_ROWS).features, model_spec)


def export_model(tracking_uri: str, run_id: str, model, smoke_inputs, warmup_inputs,
                 model_spec: modelspec.ModelSpec | None = None) -> dict:
    """Export ``model`` as the serving SavedModel, reloaded and checked on ``smoke_inputs``, with
    warmup requests from ``warmup_inputs``, and log it to the run under ``serving/`` (what a rollout
    publishes)."""
    from tfmlops.export import export_saved_model

    with tempfile.TemporaryDirectory() as tmp:
        result = export_saved_model(model, Path(tmp) / SERVING_ARTIFACT, smoke_inputs, warmup_inputs, spec=model_spec)
        artifact_uri = registry.log_files(tracking_uri, run_id, result["path"], SERVING_ARTIFACT)
    registry.log_metrics(tracking_uri, run_id, {"export_max_abs_diff": result["max_abs_diff"]})
    return {"serving_artifact_uri": artifact_uri, "max_abs_diff": result["max_abs_diff"]}


def register(tracking_uri: str, model_name: str, run_id: str, model_uri: str, metrics: dict,
             lineage: dict[str, str], model_spec: dict | None = None) -> dict:
    """Register the run's model as a new version, tagged with its lineage, its model spec (module,
    source hash, task, inputs, label, classes, hyperparameters) and test metrics, aliased ``challenger``."""
    spec = modelspec.ModelSpec.from_dict(model_spec) if model_spec else None
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    tags = {**lineage, **(spec.to_tags() if spec else {}), **{f"test_{k}": round(v, 6) for k, v in scalars.items()}}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in scalars.items() if k in modelspec.METRICS) or "no test metrics"
    what = f"{spec.task} model from {spec.module}; " if spec else ""
    version = registry.register(tracking_uri, model_name, model_uri, run_id, tags, description=f"{what}test {shown}")
    registry.set_alias(tracking_uri, model_name, registry.CHALLENGER, version)
    log.info("registered %s version %d (alias %s)", model_name, version, registry.CHALLENGER)
    return {"model_name": model_name, "version": version}


def download_serving_artifact(tracking_uri: str, serving_artifact_uri: str, dst: Path) -> tuple[Path, dict]:
    """Fetch ``serving/`` of a run: returns the SavedModel directory and the smoke batch."""
    local = registry.download(tracking_uri, serving_artifact_uri, dst)
    return local / "saved_model", json.loads((local / "smoke.json").read_text())
