"""Operators of the ``tf_serving_rollout`` DAG: thin wrappers over ``tfmlops.serving.rollout``.

Targets are TF Serving connection ids (``TFServingHook``: host, REST port, ``extra.grpc_port``,
``models_root``, ``model_config_file``, ``server_models_root``), or ``docker:<fleet>`` for the
``tensorflow/serving`` containers of a docker SDK fleet (``tfmlops.serving.fleet``). ``s3://``
models roots use the ``aws_default`` connection. Nothing heavy is imported at module level.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from tfmlops_airflow.assets import CHAMPION
from tfmlops_airflow.hooks import MLflowHook, TFServingHook, s3_client_for


class ServingRolloutFailed(AirflowFailException):
    """The new version was rolled back (a check failed or it did not load); retrying will not help."""


def _targets(targets) -> list[str]:
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",")]
    return [str(t) for t in targets if str(t).strip()]


def endpoints_for(targets, timeout: float = 60.0) -> list:
    """``Endpoint`` objects for connection ids and ``docker:<fleet>`` targets, in order."""
    from tfmlops.serving.rollout import Endpoint

    endpoints = []
    for target in _targets(targets):
        if target.startswith("docker:"):
            from tfmlops.serving.fleet import DockerFleet

            endpoints.extend(DockerFleet.from_env(target.removeprefix("docker:")).endpoints())
            continue
        hook = TFServingHook(target, timeout=timeout)
        conn = hook.connection
        endpoints.append(Endpoint(name=target, host=conn.host or "127.0.0.1", rest_port=int(conn.port or 8501),
                                  grpc_port=int(hook.extra.get("grpc_port", 8500)), models_root=hook.models_root,
                                  server_models_root=hook.extra.get("server_models_root"),
                                  model_config_file=hook.model_config_file, timeout=timeout))
    if not endpoints:
        raise AirflowFailException(f"no serving endpoints in targets {targets!r}")
    return endpoints


class _RolloutBase(BaseOperator):
    template_fields: Sequence[str] = ("model_name", "version", "targets")

    def __init__(self, *, model_name: str, version: str | int, targets: list[str] | str = ("tf_serving_default",),
                 mlflow_conn_id: str = "mlflow_default", aws_conn_id: str = "aws_default", **kwargs):
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.model_name = model_name
        self.version = version
        self.targets = targets
        self.mlflow_conn_id = mlflow_conn_id
        self.aws_conn_id = aws_conn_id

    @cached_property
    def tracking_uri(self) -> str:
        return MLflowHook(self.mlflow_conn_id).tracking_uri

    def s3_client(self, endpoints):
        s3_roots = [ep.models_root for ep in endpoints if str(ep.models_root).startswith("s3://")]
        return s3_client_for(s3_roots[0], self.aws_conn_id) if s3_roots else None


class PublishServingVersionOperator(_RolloutBase):
    """Pin every target to the versions it serves (so a ``latest`` policy cannot pick the new
    version up before its turn), then publish the version's SavedModel into every target's models
    root (local: temp dir + rename; S3: saved_model.pb last + completion marker). A re-run is a
    no-op (content hash)."""

    def execute(self, context) -> dict[str, Any]:
        import tempfile

        from tfmlops.serving.rollout import Rollout, fetch_candidate

        endpoints = endpoints_for(self.targets)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cand = fetch_candidate(self.tracking_uri, self.model_name, self.version, tmp)
                published = Rollout(cand, endpoints, s3_client=self.s3_client(endpoints),
                                    on_event=self.log.info).pin_and_publish()
        finally:
            for ep in endpoints:
                ep.close()
        return {"model_name": self.model_name, "version": cand.version, "published": published}


class ServingRolloutOperator(_RolloutBase):
    """Roll the version out endpoint by endpoint (``replace`` or ``canary`` with checks), promote
    or roll back, retire beyond ``keep`` versions, and record the outcome in MLflow (aliases
    ``champion``/``challenger``/``previous``, ``serving.*`` tags). A rollback fails the task with
    the reason (no retry); another rollout holding an endpoint past ``timeout_s`` fails it with
    a normal retry. With ``announce_champion`` (the retraining DAGs), a promotion emits an
    event on the ``CHAMPION`` asset naming the model and version (it schedules
    ``tf_optimize_export``); ``tf_serving_rollout``'s daily reconciliation does not."""

    template_fields: Sequence[str] = (*_RolloutBase.template_fields, "strategy", "holdout_uri", "min_accuracy",
                                      "latency_budget_ms", "keep", "timeout_s")

    def __init__(self, *, strategy: str = "replace", holdout_uri: str | None = None,
                 min_accuracy: float | str | None = None, latency_budget_ms: float | str | None = None,
                 keep: int | str = 2, timeout_s: float | str = 180, announce_champion: bool = False, **kwargs):
        if announce_champion:
            kwargs.setdefault("outlets", [CHAMPION])
        super().__init__(**kwargs)
        self.strategy = strategy
        self.holdout_uri = holdout_uri
        self.min_accuracy = min_accuracy
        self.latency_budget_ms = latency_budget_ms
        self.keep = keep
        self.timeout_s = timeout_s

    @staticmethod
    def _number(value):
        return None if value in (None, "", "None") else float(value)

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.serving.rollout import CanaryChecks, load_holdout, rollout_registered

        endpoints = endpoints_for(self.targets)
        s3 = self.s3_client(endpoints)
        checks = CanaryChecks(min_accuracy=self._number(self.min_accuracy),
                              latency_budget_ms=self._number(self.latency_budget_ms))
        if self.holdout_uri:
            checks.holdout_x, checks.holdout_y = load_holdout(
                str(self.holdout_uri), s3_client_for(str(self.holdout_uri), self.aws_conn_id))
        try:
            result = rollout_registered(self.tracking_uri, self.model_name, self.version, endpoints,
                                        str(self.strategy), checks, int(self.keep), float(self.timeout_s),
                                        s3_client=s3, on_event=self.log.info)
        finally:
            for ep in endpoints:
                ep.close()
        if result["outcome"] != "promoted":
            raise ServingRolloutFailed(f"{self.model_name} version {result['version']} rolled back on "
                                       f"{result['rolled_back']}: {result['reason']}")
        if CHAMPION in self.outlets:
            context["outlet_events"][CHAMPION].extra = {"model_name": self.model_name, "version": result["version"]}
        return {k: result[k] for k in ("model", "version", "strategy", "outcome", "endpoints", "old_versions",
                                       "checks", "published", "retired", "aliases", "seconds")}
