"""Operators of ``tf_offline_retrain`` (and ``ResolveModelVersionOperator``, the first task of the
DAGs that work on a registered version): each a thin wrapper over :mod:`tfmlops.steps.retrain`.

TensorFlow and MLflow are imported inside ``execute``, never at DAG parse time. Each returns a
small JSON dict (run ids, URIs, versions, metrics) that lands in XCom.
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfmlops_airflow.assets import CHAMPION
from tfmlops_airflow.notifications import notify
from tfmlops_airflow.operators.base import (
    MODEL_FIELDS,
    ModelDataOperator,
    TFMLOpsBaseOperator,
    extra_tags,
    lineage,
    optional,
)


class ResolveModelVersionOperator(TFMLOpsBaseOperator):
    """Resolve ``version`` (a number or an alias such as ``champion``) of a registered model: its
    number, MLflow run, ``models:/`` URI and serving artifact. In a run triggered by the
    ``CHAMPION`` asset, the model and version named by the newest triggering event are used instead.

    :param model_name: registered model name. (templated)
    :param version: version number or alias. (templated)
    """

    template_fields: Sequence[str] = ("model_name", "version")

    def __init__(self, *, model_name: str, version: str | int = "champion", **kwargs):
        super().__init__(**kwargs)
        self.model_name = model_name
        self.version = version

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.retrain import resolve

        model_name, version = self.model_name, self.version
        events = (context.get("triggering_asset_events") or {}).get(CHAMPION) or []
        if events:
            model_name, version = events[-1].extra["model_name"], events[-1].extra["version"]
            self.log.info("triggered by a new champion: %s version %s", model_name, version)
        try:
            return resolve(self.tracking_uri, model_name, version)
        except LookupError as exc:
            raise AirflowFailException(str(exc)) from exc


class ValidateDatasetOperator(ModelDataOperator):
    """Read the model module (every name of the contract checked) and load its data with every check
    (features against ``INPUTS``: names, dtypes, shapes; NaN/inf, labels, empty splits, overlap).
    A broken module or bad dataset fails the task without retry, naming the module or file and the
    problem. Returns the data report and ``model_spec``, which the later tasks take."""

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.retrain import DatasetError, ModelModuleError, validate_data

        try:
            return validate_data(self.data_spec())
        except (DatasetError, ModelModuleError) as exc:  # will not fix itself: no retries
            raise AirflowFailException(str(exc)) from exc


class TrainModelOperator(ModelDataOperator):
    """Train the model module's model on its data; logs the MLflow run (params, spec, per-epoch
    metrics, curves) and the model. Returns run_id, model_uri and the model spec.

    :param experiment: MLflow experiment of the run. (templated)
    :param lineage_tags: more lineage for the run's tags, e.g. the search it comes from. (templated)
    :param dataset_profile: the dataset's profile from the validation task, logged with the run as
        ``data/profile.json`` (the baseline of drift). (templated)
    """

    template_fields: Sequence[str] = (*MODEL_FIELDS, "experiment", "lineage_tags", "dataset_profile")

    def __init__(self, *, experiment: str, lineage_tags: dict | None = None, dataset_profile: dict | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.experiment = experiment
        self.lineage_tags = lineage_tags
        self.dataset_profile = dataset_profile

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.retrain import ModelModuleError, train

        tags = {**lineage(context), **extra_tags(self.lineage_tags)}
        try:
            return train(self.tracking_uri, self.experiment, run_name=f"{context['run_id']}", tags=tags,
                         spec=self.data_spec(), profile=optional(self.dataset_profile))
        except ModelModuleError as exc:  # the module's code or hyperparameters: a retry gives the same
            raise AirflowFailException(str(exc)) from exc


class TrainedModelOperator(ModelDataOperator):
    """A step on the model logged by a training run, with the dataset.

    :param run_id: the training run. (templated)
    :param model_uri: the model logged by it. (templated)
    """

    template_fields: Sequence[str] = (*MODEL_FIELDS, "run_id", "model_uri")

    def __init__(self, *, run_id: str, model_uri: str, **kwargs):
        super().__init__(**kwargs)
        self.run_id = run_id
        self.model_uri = model_uri


class EvaluateModelOperator(TrainedModelOperator):
    """The task's metrics on the test split, logged to the run with the task's plots (multiclass:
    accuracy, macro P/R/F1, confusion matrix; binary: AUC, accuracy, precision/recall, ROC curve;
    regression: RMSE, MAE, R², residuals)."""

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.retrain import evaluate

        return evaluate(self.tracking_uri, self.run_id, self.model_uri, self.data_spec())


class ModelGateOperator(ModelDataOperator):
    """Pass a candidate only if its gate metric reaches the threshold and is not worse than the
    current champion's (re-evaluated on the same test data) by more than ``tolerance``, in the
    metric's own unit (RMSE: lower is better). Unset values take the module's ``GATE``. A rejected
    candidate skips this task and everything downstream, with the reason in the log and on the
    MLflow run; nothing is deployed.

    :param model_name: registered model whose ``champion`` is the reference. (templated)
    :param run_id: the candidate's training run. (templated)
    :param metrics: the candidate's test metrics (the evaluation's result). (templated)
    :param gate_metric: accuracy, f1_macro, auc, rmse, mae or r2 (by task); empty: the module's. (templated)
    :param gate_threshold: value the candidate must reach; empty: the module's. (templated)
    :param tolerance: how much worse than the champion it may be; empty: the module's. (templated)
    """

    template_fields: Sequence[str] = (*MODEL_FIELDS, "model_name", "run_id", "metrics", "gate_metric",
                                      "gate_threshold", "tolerance")

    def __init__(self, *, model_name: str, run_id: str, metrics: dict | str, gate_metric: str | None = None,
                 gate_threshold: float | str | None = None, tolerance: float | str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model_name = model_name
        self.run_id = run_id
        self.metrics = metrics
        self.gate_metric = gate_metric
        self.gate_threshold = gate_threshold
        self.tolerance = tolerance

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.retrain import ModelModuleError, gate_against_champion

        try:
            decision = gate_against_champion(self.tracking_uri, self.model_name, self.run_id, dict(self.metrics),
                                             self.data_spec(), threshold=optional(self.gate_threshold),
                                             tolerance=optional(self.tolerance), metric=optional(self.gate_metric))
        except ModelModuleError as exc:  # e.g. a gate metric the task has not
            raise AirflowFailException(str(exc)) from exc
        if not decision["passed"]:
            notify(context, "gate_rejected", model=self.model_name, reason=decision["reason"], mlflow_run=self.run_id)
            raise AirflowSkipException(f"gate rejected the candidate: {decision['reason']}")
        return decision


class ExportSavedModelOperator(TrainedModelOperator):
    """Export the serving SavedModel of the run's model with the signatures its spec gives
    (``serving_default`` on the named inputs; ``classification`` or ``regression`` on
    ``tf.Example``), verified by reloading it, and log it to the run under ``serving/``."""

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.retrain import export

        return export(self.tracking_uri, self.run_id, self.model_uri, self.data_spec())


class RegisterModelOperator(TFMLOpsBaseOperator):
    """Register the run's model as a new version (alias ``challenger``) with lineage tags.

    :param model_name: registered model name. (templated)
    :param run_id: the training run. (templated)
    :param model_uri: the model logged by it. (templated)
    :param metrics: test metrics, tagged on the version. (templated)
    :param dataset_fingerprint: fingerprint of the training data (lineage). (templated)
    :param model_spec: the model spec the run trained with (tagged on the version). (templated)
    :param lineage_tags: more lineage for the version's tags, e.g. the search it comes from. (templated)
    """

    template_fields: Sequence[str] = ("model_name", "run_id", "model_uri", "metrics", "dataset_fingerprint",
                                      "model_spec", "lineage_tags")

    def __init__(self, *, model_name: str, run_id: str, model_uri: str, metrics: dict | str,
                 dataset_fingerprint: str = "", model_spec: dict | None = None, lineage_tags: dict | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.model_spec = model_spec
        self.lineage_tags = lineage_tags
        self.model_name = model_name
        self.run_id = run_id
        self.model_uri = model_uri
        self.metrics = metrics
        self.dataset_fingerprint = dataset_fingerprint

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.retrain import register

        extra = extra_tags(self.lineage_tags)
        return register(self.tracking_uri, self.model_name, self.run_id, self.model_uri, dict(self.metrics),
                        {**lineage(context), "dataset_fingerprint": self.dataset_fingerprint, **extra},
                        model_spec=optional(self.model_spec))
