"""Operators: one per TensorFlow step, each a thin wrapper over ``tfmlops.pipeline``.

Every operator takes templatable arguments (``template_fields``), builds its hooks from
connection ids, delegates to the core library inside ``execute`` (TensorFlow and MLflow are
imported there, never at DAG parse time) and returns a small JSON dict (run ids, URIs, versions,
metrics) that lands in XCom. With ``multiple_outputs`` each key is also its own XCom, so a DAG
can pass ``train.output["run_id"]`` to the next operator.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfmlops_airflow.assets import CHAMPION
from tfmlops_airflow.hooks import MLflowHook, s3_client_for

DATA_FIELDS = ("dataset_uri", "sample_fraction", "seed")


class _DatasetOperator(BaseOperator):
    """Shared arguments of the steps that read the dataset."""

    template_fields: Sequence[str] = DATA_FIELDS

    def __init__(self, *, dataset_uri: str = "mnist", sample_fraction: float | str = 1.0, seed: int | str = 0,
                 n_features: int = 784, num_classes: int = 10, aws_conn_id: str = "aws_default",
                 mlflow_conn_id: str = "mlflow_default", **kwargs):
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.dataset_uri = dataset_uri
        self.sample_fraction = sample_fraction
        self.seed = seed
        self.n_features = n_features
        self.num_classes = num_classes
        self.aws_conn_id = aws_conn_id
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def tracking_uri(self) -> str:
        return MLflowHook(self.mlflow_conn_id).tracking_uri

    def data_spec(self):
        from tfmlops.pipeline import DataSpec

        return DataSpec(uri=str(self.dataset_uri), sample_fraction=float(self.sample_fraction), seed=int(self.seed),
                        n_features=self.n_features, num_classes=self.num_classes,
                        s3_client=s3_client_for(self.dataset_uri, self.aws_conn_id))


def lineage(context) -> dict[str, str]:
    ti = context["ti"]
    return {"airflow.dag_id": ti.dag_id, "airflow.run_id": context["run_id"], "airflow.task_id": ti.task_id}


class ResolveModelVersionOperator(BaseOperator):
    """Resolve ``version`` (a number or an alias such as ``champion``) of a registered model.

    In a run triggered by the ``CHAMPION`` asset, the model and version named by the newest
    triggering event are used instead of the arguments."""

    template_fields: Sequence[str] = ("model_name", "version")

    def __init__(self, *, model_name: str, version: str | int = "champion", mlflow_conn_id: str = "mlflow_default",
                 **kwargs):
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.model_name = model_name
        self.version = version
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.pipeline import resolve

        model_name, version = self.model_name, self.version
        events = (context.get("triggering_asset_events") or {}).get(CHAMPION) or []
        if events:
            model_name, version = events[-1].extra["model_name"], events[-1].extra["version"]
            self.log.info("triggered by a new champion: %s version %s", model_name, version)
        try:
            return resolve(MLflowHook(self.mlflow_conn_id).tracking_uri, model_name, version)
        except LookupError as exc:
            raise AirflowFailException(str(exc)) from exc


class ValidateDatasetOperator(_DatasetOperator):
    """Load the dataset and run every check (shape, dtype, NaN/inf, labels, emptiness, overlap)."""

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.data import DatasetError
        from tfmlops.pipeline import validate_data

        try:
            return validate_data(self.data_spec())
        except DatasetError as exc:  # a data problem will not fix itself: no retries
            raise AirflowFailException(str(exc)) from exc


class TrainModelOperator(_DatasetOperator):
    """Train the MLP on the dataset; logs the MLflow run and model. Returns run_id and model_uri."""

    template_fields: Sequence[str] = (*DATA_FIELDS, "experiment", "epochs", "batch_size", "learning_rate",
                                      "hidden_units")

    def __init__(self, *, experiment: str, epochs: int | str = 5, batch_size: int | str = 128,
                 learning_rate: float | str = 1e-3, hidden_units: list[int] | str = (64,), **kwargs):
        super().__init__(**kwargs)
        self.experiment = experiment
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.hidden_units = hidden_units

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.models import ModelConfig, TrainConfig
        from tfmlops.pipeline import train

        spec = self.data_spec()
        return train(self.tracking_uri, self.experiment, run_name=f"{context['run_id']}", tags=lineage(context),
                     spec=spec,
                     model_config=ModelConfig(n_features=self.n_features, num_classes=self.num_classes,
                                              hidden_units=[int(u) for u in self.hidden_units]),
                     train_config=TrainConfig(epochs=int(self.epochs), batch_size=int(self.batch_size),
                                              learning_rate=float(self.learning_rate), seed=spec.seed))


class _RunModelOperator(_DatasetOperator):
    """A step on the model logged by a training run (``run_id``, ``model_uri``) and the dataset."""

    template_fields: Sequence[str] = (*DATA_FIELDS, "run_id", "model_uri")

    def __init__(self, *, run_id: str, model_uri: str, **kwargs):
        super().__init__(**kwargs)
        self.run_id = run_id
        self.model_uri = model_uri


class EvaluateModelOperator(_RunModelOperator):
    """Accuracy, macro precision/recall/F1 and the confusion matrix on the test split."""

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.pipeline import evaluate

        return evaluate(self.tracking_uri, self.run_id, self.model_uri, self.data_spec())


class ModelGateOperator(_DatasetOperator):
    """Pass a candidate only if it meets ``min_accuracy`` and is not worse than the current
    champion (re-evaluated on the same test data) by more than ``tolerance``. A rejected
    candidate skips this task and everything downstream, with the reason in the log and on the
    MLflow run; nothing is deployed."""

    template_fields: Sequence[str] = (*DATA_FIELDS, "model_name", "run_id", "accuracy", "min_accuracy", "tolerance")

    def __init__(self, *, model_name: str, run_id: str, accuracy: float | str, min_accuracy: float | str = 0.9,
                 tolerance: float | str = 0.005, **kwargs):
        super().__init__(**kwargs)
        self.model_name = model_name
        self.run_id = run_id
        self.accuracy = accuracy
        self.min_accuracy = min_accuracy
        self.tolerance = tolerance

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.pipeline import gate

        decision = gate(self.tracking_uri, self.model_name, self.run_id, float(self.accuracy), self.data_spec(),
                        float(self.min_accuracy), float(self.tolerance))
        if not decision["passed"]:
            raise AirflowSkipException(f"gate rejected the candidate: {decision['reason']}")
        return decision


class ExportSavedModelOperator(_RunModelOperator):
    """Export the serving SavedModel (``serving_default`` signature), verified by reloading it."""

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.pipeline import export

        return export(self.tracking_uri, self.run_id, self.model_uri, self.data_spec())


class RegisterModelOperator(BaseOperator):
    """Register the run's model as a new version (alias ``challenger``) with lineage tags."""

    template_fields: Sequence[str] = ("model_name", "run_id", "model_uri", "metrics", "dataset_fingerprint")

    def __init__(self, *, model_name: str, run_id: str, model_uri: str, metrics: dict | str,
                 dataset_fingerprint: str = "", mlflow_conn_id: str = "mlflow_default", **kwargs):
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.model_name = model_name
        self.run_id = run_id
        self.model_uri = model_uri
        self.metrics = metrics
        self.dataset_fingerprint = dataset_fingerprint
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.pipeline import register

        return register(MLflowHook(self.mlflow_conn_id).tracking_uri, self.model_name, self.run_id, self.model_uri,
                        dict(self.metrics), {**lineage(context), "dataset_fingerprint": self.dataset_fingerprint})
