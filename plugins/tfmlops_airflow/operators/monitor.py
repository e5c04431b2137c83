"""Operators of ``tf_model_monitor``: thin wrappers over :mod:`tfmlops.steps.monitor`.

Health breaches (latency, error rate) fail the task with the numbers
(:class:`ServingHealthBreached`, no retry: the next scheduled run probes again); quality and drift
breaches are returned (``retrain`` + ``reason``) for the DAG to trigger ``tf_offline_retrain``.
Nothing heavy is imported at module level.
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk.exceptions import AirflowFailException

from tfmlops_airflow.hooks import PrometheusHook, TFServingHook
from tfmlops_airflow.notifications import notify
from tfmlops_airflow.operators.base import TFMLOpsBaseOperator, checked_partitions_root, optional


class ServingHealthBreached(AirflowFailException):
    """Latency or error rate of a served version is over its threshold; the message has the numbers."""


def _thresholds(**values):
    from tfmlops.steps.monitor import Thresholds

    return Thresholds(**{k: float(v) for k, v in values.items() if optional(v) is not None})


class MonitorOperator(TFMLOpsBaseOperator):
    """A check of a served model.

    :param model_name: registered and served model name. (templated)
    """

    template_fields: Sequence[str] = ("model_name",)

    def __init__(self, *, model_name: str, **kwargs):
        super().__init__(**kwargs)
        self.model_name = model_name

    def _retrain_decision(self, context, conn_id: str, check) -> dict[str, Any]:
        """``check(endpoint)`` of a step that returns ``retrain`` and ``reason``; a missing champion
        or version (``LookupError``) fails the task with the step's message."""
        hook = TFServingHook(conn_id)
        try:
            result = check(hook.endpoint())
        except LookupError as exc:
            raise AirflowFailException(str(exc)) from exc
        finally:
            hook.close()
        if result["retrain"]:
            self.log.warning("retrain needed: %s", result["reason"])
            notify(context, "drift_alarm", model=self.model_name, version=result.get("version"),
                   reason=result["reason"], check=type(self).__name__)
        return result


class ServingHealthOperator(MonitorOperator):
    """Health of the model on every target endpoint: request rate, error rate (non-OK share) and
    latency p50/p95/p99 of the traffic it really served — over ``window_s`` from Prometheus when
    the connection ``prometheus_conn_id`` exists, else from two scrapes of each replica's metrics
    ``scrape_window_s`` apart. A replica that served the model nothing in the window is probed
    instead: every AVAILABLE version over REST and gRPC (``requests`` sequential single-row
    predicts each). Logged to the model's MLflow monitoring run with trend charts; the result
    names each endpoint's source. A breach fails the task (:class:`ServingHealthBreached`) with
    the numbers.

    :param targets: TF Serving connection ids to check. (templated)
    :param requests: probe requests per endpoint, version and API. (templated)
    :param max_p99_ms: p99 latency above this is a breach. (templated)
    :param max_error_rate: share of failed requests above this is a breach. (templated)
    :param window_s: seconds of live traffic read from Prometheus. (templated)
    :param scrape_window_s: seconds between the two scrapes without Prometheus. (templated)
    :param prometheus_conn_id: the Prometheus connection; unset or missing: scrape the replicas.
    """

    template_fields: Sequence[str] = (*MonitorOperator.template_fields, "targets", "requests", "max_p99_ms",
                                      "max_error_rate", "window_s", "scrape_window_s")

    def __init__(self, *, targets: list[str] | str = ("tf_serving_default",), requests: int | str = 50,
                 max_p99_ms: float | str = 500.0, max_error_rate: float | str = 0.01, window_s: int | str = 300,
                 scrape_window_s: float | str = 15.0, prometheus_conn_id: str | None = "prometheus_default",
                 **kwargs):
        super().__init__(**kwargs)
        self.targets = targets
        self.requests = requests
        self.max_p99_ms = max_p99_ms
        self.max_error_rate = max_error_rate
        self.window_s = window_s
        self.scrape_window_s = scrape_window_s
        self.prometheus_conn_id = prometheus_conn_id

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.monitor import check_health

        prometheus = None
        if optional(self.prometheus_conn_id) is not None and PrometheusHook.configured(self.prometheus_conn_id):
            prometheus = PrometheusHook(self.prometheus_conn_id)
        else:
            self.log.info("no connection %r: the replicas' metrics are scraped directly", self.prometheus_conn_id)
        endpoints = self.serving_endpoints(self.targets)
        try:
            result = check_health(self.tracking_uri, str(self.model_name), endpoints,
                                  _thresholds(max_p99_ms=self.max_p99_ms, max_error_rate=self.max_error_rate),
                                  int(self.requests), prometheus=prometheus, window_s=int(self.window_s),
                                  scrape_window_s=float(self.scrape_window_s))
        finally:
            for ep in endpoints:
                ep.close()
            if prometheus is not None:
                prometheus.close()
        if result["breaches"]:
            raise ServingHealthBreached(f"{self.model_name}: " + "; ".join(result["breaches"]))
        return result


class ModelQualityDriftOperator(MonitorOperator):
    """Quality of the served ``champion`` on the newest labeled partitions (read by its model module)
    by task — accuracy, macro and per-class precision/recall/F1 and the confusion matrix; AUC;
    RMSE/MAE/R² — and PSI drift per named input (numeric, categorical, text, image statistics, or
    the module's ``DRIFT_STATISTICS``) and of the served outputs vs the version's stored training
    profile, the features that moved most named. Returns ``retrain`` and ``reason``.

    :param root: partitions root, a local folder or ``s3://bucket/prefix``, inside an allowed root
        (:func:`~tfmlops_airflow.operators.base.allowed_partitions_roots`). (templated)
    :param dataset: dataset name, the folder under the root. (templated)
    :param newest: how many of the newest partitions to use. (templated)
    :param gate_metric: the metric the champion is judged by (one its task has); empty: its model
        module's ``GATE`` metric. (templated)
    :param gate_threshold: the metric under this (over it for rmse/mae) asks for a retrain; empty: the
        module's ``GATE`` threshold (none: no quality verdict). (templated)
    :param max_input_psi: PSI of any input statistic above this asks for a retrain. (templated)
    :param max_prediction_psi: PSI of the served outputs' distribution above this asks for a retrain. (templated)
    :param reference_rows: training rows sampled when a version's drift profile is first built. (templated)
    :param tf_serving_conn_id: the TF Serving connection whose champion is evaluated.
    """

    template_fields: Sequence[str] = (*MonitorOperator.template_fields, "root", "dataset", "newest", "gate_metric",
                                      "gate_threshold", "max_input_psi", "max_prediction_psi", "reference_rows")

    def __init__(self, *, root: str, dataset: str = "mnist_stream", newest: int | str = 1,
                 gate_metric: str | None = None, gate_threshold: float | str | None = None,
                 max_input_psi: float | str = 0.25,
                 max_prediction_psi: float | str = 0.25, reference_rows: int | str = 2000,
                 tf_serving_conn_id: str = "tf_serving_default", **kwargs):
        super().__init__(**kwargs)
        self.root = root
        self.dataset = dataset
        self.newest = newest
        self.gate_metric = gate_metric
        self.gate_threshold = gate_threshold
        self.max_input_psi = max_input_psi
        self.max_prediction_psi = max_prediction_psi
        self.reference_rows = reference_rows
        self.tf_serving_conn_id = tf_serving_conn_id

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.monitor import check_quality_drift

        root = checked_partitions_root(self.root)
        thresholds = _thresholds(gate_threshold=self.gate_threshold, max_input_psi=self.max_input_psi,
                                 max_prediction_psi=self.max_prediction_psi)
        thresholds.gate_metric = optional(self.gate_metric)
        return self._retrain_decision(context, self.tf_serving_conn_id, lambda endpoint: check_quality_drift(
            self.tracking_uri, str(self.model_name), endpoint, root, str(self.dataset), thresholds,
            newest=int(self.newest), reference_rows=int(self.reference_rows), s3_client=self.s3_client_for(root)))


class LiveDriftOperator(MonitorOperator):
    """PSI drift of what users sent to the served ``champion`` — the model server's sampled request
    logs of the last ``window_s`` — against the version's training reference. Fewer than
    ``min_rows`` logged rows: no verdict. Returns ``retrain`` and ``reason``.

    :param log_prefix: the request logs' ``filename_prefix`` (local; the model's ``logging_config``). (templated)
    :param window_s: how far back the logs are read. (templated)
    :param min_rows: fewest logged rows for a verdict. (templated)
    :param max_input_psi: PSI of any input statistic above this asks for a retrain. (templated)
    :param max_prediction_psi: PSI of the predicted classes above this asks for a retrain. (templated)
    :param reference_rows: training rows sampled when a version's drift reference is first built. (templated)
    :param tf_serving_conn_id: the TF Serving connection (builds the reference when there is none).
    """

    template_fields: Sequence[str] = (*MonitorOperator.template_fields, "log_prefix", "window_s", "min_rows",
                                      "max_input_psi", "max_prediction_psi", "reference_rows")

    def __init__(self, *, log_prefix: str, window_s: float | str = 3600, min_rows: int | str = 100,
                 max_input_psi: float | str = 0.25, max_prediction_psi: float | str = 0.25,
                 reference_rows: int | str = 2000, tf_serving_conn_id: str = "tf_serving_default", **kwargs):
        super().__init__(**kwargs)
        self.log_prefix = log_prefix
        self.window_s = window_s
        self.min_rows = min_rows
        self.max_input_psi = max_input_psi
        self.max_prediction_psi = max_prediction_psi
        self.reference_rows = reference_rows
        self.tf_serving_conn_id = tf_serving_conn_id

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.monitor import check_live_drift

        thresholds = _thresholds(max_input_psi=self.max_input_psi, max_prediction_psi=self.max_prediction_psi)
        return self._retrain_decision(context, self.tf_serving_conn_id, lambda endpoint: check_live_drift(
            self.tracking_uri, str(self.model_name), endpoint, str(self.log_prefix), thresholds,
            window_s=float(self.window_s), min_rows=int(self.min_rows), reference_rows=int(self.reference_rows)))

