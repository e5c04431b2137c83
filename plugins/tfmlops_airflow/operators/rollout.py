"""Operators of ``tf_serving_rollout`` (and the rollout task of the retraining DAGs): thin wrappers
over :mod:`tfmlops.steps.rollout`.

Targets are TF Serving connection ids (:meth:`TFServingHook.endpoint`), or ``docker:<fleet>`` for
the ``tensorflow/serving`` containers of a docker SDK fleet. ``s3://`` models roots and holdouts
use ``aws_conn_id``. Both operators run in the ``tf_serving_rollout`` pool (1 slot) unless told
otherwise, so rollouts of every DAG queue behind each other. Nothing heavy is imported at module level.
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk.exceptions import AirflowFailException

from tfmlops_airflow.assets import CHAMPION
from tfmlops_airflow.operators.base import TFMLOpsBaseOperator, number_or_none, optional
from tfmlops_airflow.params import ROLLOUT_POOL


class ServingRolloutFailed(AirflowFailException):
    """The new version was rolled back (a check failed or it did not load); retrying will not help."""


class ServingVersionOperator(TFMLOpsBaseOperator):
    """A registered version to put on TF Serving targets.

    :param model_name: registered model name = served model name. (templated)
    :param version: version number or alias. (templated)
    :param targets: TF Serving connection ids or ``docker:<fleet>``, rolled one at a time. (templated)
    """

    template_fields: Sequence[str] = ("model_name", "version", "targets")

    def __init__(self, *, model_name: str, version: str | int, targets: list[str] | str = ("tf_serving_default",),
                 **kwargs):
        kwargs.setdefault("pool", ROLLOUT_POOL)
        super().__init__(**kwargs)
        self.model_name = model_name
        self.version = version
        self.targets = targets

    def models_root_s3_client(self, endpoints):
        s3_roots = [ep.models_root for ep in endpoints if str(ep.models_root).startswith("s3://")]
        return self.s3_client_for(s3_roots[0]) if s3_roots else None


class PublishServingVersionOperator(ServingVersionOperator):
    """Pin every target to the versions it serves (so a ``latest`` policy cannot pick the new
    version up before its turn), then publish the version's SavedModel into every target's models
    root (local: temp dir + rename; S3: saved_model.pb last + completion marker). A re-run is a
    no-op (content hash)."""

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.rollout import publish_registered

        endpoints = self.serving_endpoints(self.targets, publishing=True)
        try:
            return publish_registered(self.tracking_uri, self.model_name, self.version, endpoints,
                                      s3_client=self.models_root_s3_client(endpoints), on_event=self.log.info)
        finally:
            for ep in endpoints:
                ep.close()


class ServingRolloutOperator(ServingVersionOperator):
    """Roll the version out endpoint by endpoint (``replace`` or ``canary`` with checks), promote
    or roll back, retire beyond ``keep`` versions, and record the outcome in MLflow (aliases
    ``champion``/``challenger``/``previous``, ``serving.*`` tags). A rollback fails the task with
    the reason (no retry); another rollout holding an endpoint past ``timeout_s`` fails it with
    a normal retry.

    :param strategy: ``replace``, ``canary``, ``gray`` (live traffic shifted step by step through
        the router of ``router_conn_id`` to its canary replica group, judged from the replicas'
        metrics; ``targets`` are then the router's groups) or ``shadow`` (the router's mirrored live
        requests replayed to its canary group at 0 % share, judged on agreement with the
        champion's answers, latency and errors). (templated)
    :param holdout_uri: canary accuracy check: ``.npz`` with x/y, local or ``s3://``; unset = no check. (templated)
    :param min_accuracy: accuracy the canary must reach on the holdout. (templated)
    :param latency_budget_ms: p99 of single-row REST predicts on the canary label. (templated)
    :param keep: version directories kept in the base path (referenced ones are always kept). (templated)
    :param timeout_s: how long a load, an unload or another rollout's lock may take. (templated)
    :param announce_champion: emit an event on the ``CHAMPION`` asset naming the model and version
        on promotion (the retraining DAGs; it schedules ``tf_optimize_export``).
    :param router_conn_id: ``gray``, ``shadow``: the traffic router connection (:class:`TrafficRouterHook`).
    :param gray_steps: ``gray``: the canary group's shares of live traffic, in %, ending at 100. (templated)
    :param gray_window_s: ``gray``: how long each share is held and watched. (templated)
    :param max_error_rate_increase: ``gray``: canary error rate − stable error rate allowed. (templated)
    :param max_p99_increase_ms: ``gray``: canary p99 − stable p99 allowed, in ms. (templated)
    :param shadow_window_s: ``shadow``: how long mirrored live requests are replayed to the
        challenger on the router's canary group (share 0 %). (templated)
    :param shadow_min_agreement: ``shadow``: top-1 agreement with the champion needed. (templated)
    :param shadow_min_compared: ``shadow``: fewer compared requests → hold. (templated)
    ``shadow`` also uses ``max_error_rate_increase`` and ``max_p99_increase_ms``; a hold fails the
    task with the reason, as a gray rollback does (the canary group is back on the old version).
    """

    template_fields: Sequence[str] = (*ServingVersionOperator.template_fields, "strategy", "holdout_uri",
                                      "min_accuracy", "latency_budget_ms", "keep", "timeout_s", "gray_steps",
                                      "router_conn_id", "gray_window_s", "max_error_rate_increase",
                                      "max_p99_increase_ms", "shadow_window_s", "shadow_min_agreement",
                                      "shadow_min_compared")

    def __init__(self, *, strategy: str = "replace", holdout_uri: str | None = None,
                 min_accuracy: float | str | None = None, latency_budget_ms: float | str | None = None,
                 keep: int | str = 2, timeout_s: float | str = 180, announce_champion: bool = False,
                 router_conn_id: str = "tf_serving_router", gray_steps: list | str = (5, 25, 50, 100),
                 gray_window_s: float | str = 60, max_error_rate_increase: float | str = 0.01,
                 max_p99_increase_ms: float | str = 25, shadow_window_s: float | str = 60,
                 shadow_min_agreement: float | str = 0.99, shadow_min_compared: int | str = 50, **kwargs):
        if announce_champion:
            kwargs.setdefault("outlets", [CHAMPION])
        super().__init__(**kwargs)
        self.strategy = strategy
        self.holdout_uri = holdout_uri
        self.min_accuracy = min_accuracy
        self.latency_budget_ms = latency_budget_ms
        self.keep = keep
        self.timeout_s = timeout_s
        self.router_conn_id = router_conn_id
        self.gray_steps = gray_steps
        self.gray_window_s = gray_window_s
        self.max_error_rate_increase = max_error_rate_increase
        self.max_p99_increase_ms = max_p99_increase_ms
        self.shadow_window_s = shadow_window_s
        self.shadow_min_agreement = shadow_min_agreement
        self.shadow_min_compared = shadow_min_compared

    def _through_router(self, release, *args, **kwargs) -> dict[str, Any]:
        """``release(tracking_uri, model, version, router, groups, *args, **kwargs)`` with the
        router connection's router and replica groups (gray, shadow)."""
        from tfmlops_airflow.hooks.router import TrafficRouterHook

        hook = TrafficRouterHook(self.router_conn_id)
        try:
            groups = hook.groups()
            endpoints = [ep for eps in groups.values() for ep in eps]
            args = tuple(a(hook) if callable(a) else a for a in args)
            return release(self.tracking_uri, self.model_name, self.version, hook.router(), groups, *args,
                           timeout_s=float(self.timeout_s), s3_client=self.models_root_s3_client(endpoints),
                           on_event=self.log.info, **kwargs)
        finally:
            hook.close()

    def _gray(self) -> dict[str, Any]:
        from tfmlops.steps.rollout import GrayThresholds, gray_release_registered

        steps = self.gray_steps
        if isinstance(steps, str):
            steps = [s for s in steps.replace("[", " ").replace("]", " ").replace(",", " ").split() if s]
        return self._through_router(
            gray_release_registered, steps=[float(s) for s in steps], window_s=float(self.gray_window_s),
            thresholds=GrayThresholds(max_error_rate_increase=float(self.max_error_rate_increase),
                                      max_p99_increase_ms=float(self.max_p99_increase_ms)))

    def _shadow(self) -> dict[str, Any]:
        from tfmlops.steps.rollout import ShadowThresholds, shadow_release_registered

        thresholds = ShadowThresholds(min_agreement=float(self.shadow_min_agreement),
                                      min_compared=int(float(self.shadow_min_compared)),
                                      max_error_rate_increase=float(self.max_error_rate_increase),
                                      max_p99_increase_ms=float(self.max_p99_increase_ms))
        return self._through_router(shadow_release_registered, lambda hook: hook.mirror_sink_url(),
                                    window_s=float(self.shadow_window_s), thresholds=thresholds)

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.rollout import CanaryChecks, load_canary_holdout, rollout_registered

        if self.strategy in ("gray", "shadow"):
            result = self._gray() if self.strategy == "gray" else self._shadow()
            if result["outcome"] != "promoted":
                what = "rolled back" if self.strategy == "gray" else "held"
                raise ServingRolloutFailed(f"{self.model_name} version {result['version']} {what} "
                                           f"({self.strategy}): {result['reason']}")
            if CHAMPION in self.outlets:
                context["outlet_events"][CHAMPION].extra = {"model_name": self.model_name,
                                                            "version": result["version"]}
            detail = "steps" if self.strategy == "gray" else "report"
            return {k: result[k] for k in ("model", "version", "strategy", "outcome", "endpoints", detail,
                                           "aliases", "seconds")}

        checks = CanaryChecks(min_accuracy=number_or_none(self.min_accuracy),
                              latency_budget_ms=number_or_none(self.latency_budget_ms))
        holdout = optional(self.holdout_uri)
        if holdout is not None:
            checks.holdout_x, checks.holdout_y = load_canary_holdout(str(holdout), self.s3_client_for(holdout))
        endpoints = self.serving_endpoints(self.targets, publishing=True)
        try:
            result = rollout_registered(self.tracking_uri, self.model_name, self.version, endpoints,
                                        str(self.strategy), checks, int(self.keep), float(self.timeout_s),
                                        s3_client=self.models_root_s3_client(endpoints), on_event=self.log.info)
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
