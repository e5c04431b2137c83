"""Operators of ``tf_model_monitor``: thin wrappers over ``tfmlops.monitoring``.

Health breaches (latency, error rate) fail the task with the numbers
(:class:`ServingHealthBreached`, no retry: the next scheduled run probes again); quality and drift
breaches are returned (``retrain`` + ``reason``) for the DAG to trigger ``tf_offline_retrain``.
Nothing heavy is imported at module level.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from tfmlops_airflow.hooks import MLflowHook, TFServingHook, s3_client_for

alert_log = logging.getLogger("tfmlops.alerts")


class ServingHealthBreached(AirflowFailException):
    """Latency or error rate of a served version is over its threshold; the message has the numbers."""


def alert_on_failure(context) -> None:
    """``on_failure_callback``: one ERROR line per failed monitoring task (hook a notifier here)."""
    ti = context.get("ti") or context.get("task_instance")
    alert_log.error("ALERT %s.%s failed: %s", getattr(ti, "dag_id", "?"), getattr(ti, "task_id", "?"),
                    context.get("exception"))


def _targets(targets) -> list[str]:
    if isinstance(targets, str):
        targets = targets.split(",")
    return [str(t).strip() for t in targets if str(t).strip()]


def _thresholds(**values):
    from tfmlops.monitoring import Thresholds

    return Thresholds(**{k: float(v) for k, v in values.items() if v not in (None, "", "None")})


class _MonitorBase(BaseOperator):
    template_fields: Sequence[str] = ("model_name",)

    def __init__(self, *, model_name: str, mlflow_conn_id: str = "mlflow_default", **kwargs):
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.model_name = model_name
        self.mlflow_conn_id = mlflow_conn_id

    @cached_property
    def tracking_uri(self) -> str:
        return MLflowHook(self.mlflow_conn_id).tracking_uri


class ServingHealthOperator(_MonitorBase):
    """Probe every target endpoint and every AVAILABLE version of the model over REST and gRPC
    (``requests`` sequential single-row predicts each): p50/p95/p99, throughput, error rate,
    logged to the model's MLflow monitoring run with trend charts."""

    template_fields: Sequence[str] = (*_MonitorBase.template_fields, "targets", "requests", "max_p99_ms",
                                      "max_error_rate")

    def __init__(self, *, targets: list[str] | str = ("tf_serving_default",), requests: int | str = 50,
                 max_p99_ms: float | str = 500.0, max_error_rate: float | str = 0.01, **kwargs):
        super().__init__(**kwargs)
        self.targets = targets
        self.requests = requests
        self.max_p99_ms = max_p99_ms
        self.max_error_rate = max_error_rate

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.monitoring import check_health

        hooks = {t: TFServingHook(t) for t in _targets(self.targets)}
        try:
            result = check_health(self.tracking_uri, str(self.model_name), {t: h.client for t, h in hooks.items()},
                                  _thresholds(max_p99_ms=self.max_p99_ms, max_error_rate=self.max_error_rate),
                                  int(self.requests))
        finally:
            for hook in hooks.values():
                hook.client.close()
        if result["breaches"]:
            raise ServingHealthBreached(f"{self.model_name}: " + "; ".join(result["breaches"]))
        return result


class ModelQualityDriftOperator(_MonitorBase):
    """Accuracy/precision/recall/F1 (macro, per class) and the confusion matrix of the served
    ``champion`` on the newest labeled partitions, and PSI drift of input statistics and
    predictions vs the version's stored training reference. Returns ``retrain`` and ``reason``."""

    template_fields: Sequence[str] = (*_MonitorBase.template_fields, "root", "dataset", "newest", "min_accuracy",
                                      "max_input_psi", "max_prediction_psi", "reference_rows")

    def __init__(self, *, root: str, dataset: str = "mnist_stream", newest: int | str = 1,
                 min_accuracy: float | str = 0.85, max_input_psi: float | str = 0.25,
                 max_prediction_psi: float | str = 0.25, reference_rows: int | str = 2000,
                 tf_serving_conn_id: str = "tf_serving_default", aws_conn_id: str = "aws_default", **kwargs):
        super().__init__(**kwargs)
        self.root = root
        self.dataset = dataset
        self.newest = newest
        self.min_accuracy = min_accuracy
        self.max_input_psi = max_input_psi
        self.max_prediction_psi = max_prediction_psi
        self.reference_rows = reference_rows
        self.tf_serving_conn_id = tf_serving_conn_id
        self.aws_conn_id = aws_conn_id

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.monitoring import check_quality_drift

        hook = TFServingHook(self.tf_serving_conn_id)
        try:
            result = check_quality_drift(
                self.tracking_uri, str(self.model_name), hook.client, str(self.root), str(self.dataset),
                _thresholds(min_accuracy=self.min_accuracy, max_input_psi=self.max_input_psi,
                            max_prediction_psi=self.max_prediction_psi),
                newest=int(self.newest), reference_rows=int(self.reference_rows),
                s3_client=s3_client_for(str(self.root), self.aws_conn_id))
        except LookupError as exc:
            raise AirflowFailException(str(exc)) from exc
        finally:
            hook.client.close()
        if result["retrain"]:
            self.log.warning("retrain needed: %s", result["reason"])
        return result
