"""Operators of ``tf_offline_retrain`` (and ``ResolveModelVersionOperator``, the first task of the
DAGs that work on a registered version): each a thin wrapper over :mod:`tfmlops.steps.retrain`.

TensorFlow and MLflow are imported inside ``execute``, never at DAG parse time. Each returns a
small JSON dict (run ids, URIs, versions, metrics) that lands in XCom.
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfmlops_airflow.assets import CHAMPION
from tfmlops_airflow.operators.base import DATA_FIELDS, DatasetOperator, TFMLOpsBaseOperator, lineage


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


class ValidateDatasetOperator(DatasetOperator):
    """Load the dataset and run every check (shape, dtype, NaN/inf, labels, emptiness, overlap).
    A bad dataset fails the task without retry, naming the file and the problem."""

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.retrain import DatasetError, validate_data

        try:
            return validate_data(self.data_spec())
        except DatasetError as exc:  # a data problem will not fix itself: no retries
            raise AirflowFailException(str(exc)) from exc


class TrainModelOperator(DatasetOperator):
    """Train the MLP on the dataset; logs the MLflow run and model. Returns run_id and model_uri.

    :param experiment: MLflow experiment of the run. (templated)
    :param epochs: training epochs. (templated)
    :param batch_size: training batch size. (templated)
    :param learning_rate: Adam learning rate. (templated)
    :param hidden_units: sizes of the hidden layers. (templated)
    """

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
        from tfmlops.steps.retrain import train

        spec = self.data_spec()
        return train(self.tracking_uri, self.experiment, run_name=f"{context['run_id']}", tags=lineage(context),
                     spec=spec, model_config={"hidden_units": [int(u) for u in self.hidden_units]},
                     train_config={"epochs": int(self.epochs), "batch_size": int(self.batch_size),
                                   "learning_rate": float(self.learning_rate)})


class TrainedModelOperator(DatasetOperator):
    """A step on the model logged by a training run, with the dataset.

    :param run_id: the training run. (templated)
    :param model_uri: the model logged by it. (templated)
    """

    template_fields: Sequence[str] = (*DATA_FIELDS, "run_id", "model_uri")

    def __init__(self, *, run_id: str, model_uri: str, **kwargs):
        super().__init__(**kwargs)
        self.run_id = run_id
        self.model_uri = model_uri


class EvaluateModelOperator(TrainedModelOperator):
    """Accuracy, macro precision/recall/F1 and the confusion matrix on the test split, logged to the run."""

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.retrain import evaluate

        return evaluate(self.tracking_uri, self.run_id, self.model_uri, self.data_spec())


class ModelGateOperator(DatasetOperator):
    """Pass a candidate only if it meets ``min_accuracy`` and is not worse than the current
    champion (re-evaluated on the same test data) by more than ``tolerance``. A rejected
    candidate skips this task and everything downstream, with the reason in the log and on the
    MLflow run; nothing is deployed.

    :param model_name: registered model whose ``champion`` is the reference. (templated)
    :param run_id: the candidate's training run. (templated)
    :param accuracy: the candidate's test accuracy. (templated)
    :param min_accuracy: accuracy the candidate must reach. (templated)
    :param tolerance: how much worse than the champion it may be. (templated)
    """

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
        from tfmlops.steps.retrain import gate_against_champion

        decision = gate_against_champion(self.tracking_uri, self.model_name, self.run_id, float(self.accuracy),
                                         self.data_spec(), float(self.min_accuracy), float(self.tolerance))
        if not decision["passed"]:
            raise AirflowSkipException(f"gate rejected the candidate: {decision['reason']}")
        return decision


class ExportSavedModelOperator(TrainedModelOperator):
    """Export the serving SavedModel (``serving_default`` signature) of the run's model, verified by
    reloading it, and log it to the run under ``serving/``."""

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
    """

    template_fields: Sequence[str] = ("model_name", "run_id", "model_uri", "metrics", "dataset_fingerprint")

    def __init__(self, *, model_name: str, run_id: str, model_uri: str, metrics: dict | str,
                 dataset_fingerprint: str = "", **kwargs):
        super().__init__(**kwargs)
        self.model_name = model_name
        self.run_id = run_id
        self.model_uri = model_uri
        self.metrics = metrics
        self.dataset_fingerprint = dataset_fingerprint

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.retrain import register

        return register(self.tracking_uri, self.model_name, self.run_id, self.model_uri, dict(self.metrics),
                        {**lineage(context), "dataset_fingerprint": self.dataset_fingerprint})
