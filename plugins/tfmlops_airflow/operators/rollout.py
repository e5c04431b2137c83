"""Operators of ``tf_serving_rollout`` (and the rollout task of the retraining DAGs): thin wrappers
over :mod:`tfmlops.steps.rollout`.

Targets are TF Serving connection ids (:meth:`TFServingHook.endpoint`), or ``docker:<fleet>`` for
the ``tensorflow/serving`` containers of a docker SDK fleet. ``s3://`` models roots and holdouts
use ``aws_conn_id``. Both operators run in the ``tf_serving_rollout`` pool (1 slot) unless told
otherwise, so rollouts of every DAG queue behind each other. Nothing heavy is imported at module level.
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfmlops_airflow.assets import CHAMPION
from tfmlops_airflow.notifications import notify
from tfmlops_airflow.operators.base import TFMLOpsBaseOperator, number_or_none, optional
from tfmlops_airflow.params import ROLLOUT_POOL


# the strategies that go through the traffic router, and what their task returns besides the outcome
ROUTER_DETAILS = {"gray": ("steps",), "ab": ("decision", "variants", "test"), "shadow": ("report",)}
APPROVALS = ("none", "before_promote", "before_rollout")
AWAITING_APPROVAL = "awaiting_approval"  # tfmlops.deploy.progressive's (not imported at parse time)


class ServingRolloutFailed(AirflowFailException):
    """The new version was rolled back (a check failed or it did not load); retrying will not help."""


class ABTestNotWon(AirflowSkipException):
    """An A/B test ended without a significant win of the challenger (champion better, or no
    significant difference): the champion stays, nothing is broken — the task is skipped with the numbers."""


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
        metrics and logged predictions; ``targets`` are then the router's groups), ``ab`` (a fixed
        share to the canary group for one window, decided on labeled feedback: promoted only on a
        significant win, the task skipped when the test is not won, failed when the challenger
        breaks) or ``shadow`` (the router's mirrored live requests replayed to its canary group at
        0 % share, judged on agreement with the champion's answers, latency and errors; a hold
        fails the task). (templated)
    :param holdout_uri: canary holdout check: ``.npz`` with x/y (or ``y`` and an array per input name), local
        or ``s3://``; unset = no check. (templated)
    :param min_accuracy: accuracy a classifier's canary must reach on the holdout. (templated)
    :param max_rmse: RMSE a regressor's canary may have on the holdout, in the label's unit. (templated)
    :param latency_budget_ms: p99 of single-row REST predicts on the canary label. (templated)
    :param keep: version directories kept in the base path (referenced ones are always kept). (templated)
    :param timeout_s: how long a load, an unload or another rollout's lock may take. (templated)
    :param announce_champion: emit an event on the ``CHAMPION`` asset naming the model and version
        on promotion (the retraining DAGs; it schedules ``tf_optimize_export``).
    :param router_conn_id: ``gray``, ``ab``, ``shadow``: the traffic router connection (:class:`TrafficRouterHook`).
    :param gray_steps: ``gray``: the canary group's shares of live traffic, in %, ending at 100. (templated)
    :param gray_window_s: ``gray``: how long each share is held and watched. (templated)
    :param max_error_rate_increase: ``gray``/``ab``/``shadow``: canary error rate − stable error rate
        allowed. (templated)
    :param max_p99_increase_ms: ``gray``/``ab``/``shadow``: canary p99 − stable p99 allowed, in ms. (templated)
    :param max_prediction_tvd: ``gray``: distance allowed between the groups' predicted classes. (templated)
    :param ab_share_pct: ``ab``: share of live requests to the challenger, in %. (templated)
    :param ab_window_s: ``ab``: how long the split is held. (templated)
    :param ab_alpha: ``ab``: significance level of the accuracy test. (templated)
    :param ab_min_samples: ``ab``: labeled rows each variant needs. (templated)
    :param ab_labels_uri: ``ab``: local folder or file of JSON-lines labels for request ids. (templated)
    :param ab_labels_wait_s: ``ab``: how long to wait for labels after the window. (templated)
    :param shadow_window_s: ``shadow``: how long mirrored live requests are replayed to the
        challenger on the router's canary group (share 0 %). (templated)
    :param shadow_min_agreement: ``shadow``: top-1 agreement with the champion needed. (templated)
    :param shadow_min_compared: ``shadow``: fewer compared requests → hold. (templated)
    :param reason: why this rollout runs, for the model's audit trail (``rollout``; the reconciler
        passes ``reconcile: …`` for an alias moved in the registry). (templated)
    :param approval: ``none``; ``before_promote`` (``gray``, ``ab``, ``shadow``): a candidate that
        would be promoted holds (gray: the last step's share under 100 %; ab, shadow: the canary
        group at 0 %) and the task returns ``awaiting_approval``; a
        :class:`~tfmlops_airflow.operators.approval.ServingApprovalOperator` asks a person and
        :class:`ConcludeRolloutOperator` promotes or rolls back; or ``before_rollout`` (any
        strategy): the rollout runs only when ``decision`` approves it. (templated)
    :param decision: ``before_rollout``: the approval task's result before this one (approved →
        rolled out; rejected, timed out or withdrawn → kept on the version, the task skipped). (templated)
    """

    template_fields: Sequence[str] = (*ServingVersionOperator.template_fields, "strategy", "holdout_uri",
                                      "min_accuracy", "max_rmse", "latency_budget_ms", "keep", "timeout_s",
                                      "gray_steps",
                                      "router_conn_id", "gray_window_s", "max_error_rate_increase",
                                      "max_p99_increase_ms", "max_prediction_tvd", "ab_share_pct", "ab_window_s",
                                      "ab_alpha", "ab_min_samples", "ab_labels_uri", "ab_labels_wait_s",
                                      "shadow_window_s", "shadow_min_agreement", "shadow_min_compared", "reason",
                                      "approval", "decision")

    def __init__(self, *, strategy: str = "replace", holdout_uri: str | None = None,
                 min_accuracy: float | str | None = None, max_rmse: float | str | None = None,
                 latency_budget_ms: float | str | None = None,
                 keep: int | str = 2, timeout_s: float | str = 180, announce_champion: bool = False,
                 router_conn_id: str = "tf_serving_router", gray_steps: list | str = (5, 25, 50, 100),
                 gray_window_s: float | str = 60, max_error_rate_increase: float | str = 0.01,
                 max_p99_increase_ms: float | str = 25, max_prediction_tvd: float | str = 0.1,
                 ab_share_pct: float | str = 50, ab_window_s: float | str = 600, ab_alpha: float | str = 0.05,
                 ab_min_samples: int | str = 200, ab_labels_uri: str | None = None,
                 ab_labels_wait_s: float | str = 0, shadow_window_s: float | str = 60,
                 shadow_min_agreement: float | str = 0.99, shadow_min_compared: int | str = 50,
                 reason: str = "rollout", approval: str = "none", decision: dict | str | None = None, **kwargs):
        if announce_champion:
            kwargs.setdefault("outlets", [CHAMPION])
        super().__init__(**kwargs)
        self.strategy = strategy
        self.holdout_uri = holdout_uri
        self.min_accuracy = min_accuracy
        self.max_rmse = max_rmse
        self.latency_budget_ms = latency_budget_ms
        self.keep = keep
        self.timeout_s = timeout_s
        self.router_conn_id = router_conn_id
        self.gray_steps = gray_steps
        self.gray_window_s = gray_window_s
        self.max_error_rate_increase = max_error_rate_increase
        self.max_p99_increase_ms = max_p99_increase_ms
        self.max_prediction_tvd = max_prediction_tvd
        self.ab_share_pct = ab_share_pct
        self.ab_window_s = ab_window_s
        self.ab_alpha = ab_alpha
        self.ab_min_samples = ab_min_samples
        self.ab_labels_uri = ab_labels_uri
        self.ab_labels_wait_s = ab_labels_wait_s
        self.shadow_window_s = shadow_window_s
        self.shadow_min_agreement = shadow_min_agreement
        self.shadow_min_compared = shadow_min_compared
        self.reason = reason
        self.approval = approval
        self.decision = decision
        self.audit: dict = {}

    def _settings(self, make, **kwargs):
        """``make(**kwargs)`` (thresholds, settings); a value it refuses fails the task (no retry)."""
        try:
            return make(**kwargs)
        except (TypeError, ValueError) as exc:
            raise AirflowFailException(f"{self.strategy} settings: {exc}") from exc

    def _gray_thresholds(self):
        from tfmlops.steps.rollout import GrayThresholds

        return self._settings(GrayThresholds, max_error_rate_increase=float(self.max_error_rate_increase),
                              max_p99_increase_ms=float(self.max_p99_increase_ms),
                              max_prediction_tvd=float(self.max_prediction_tvd))

    def _through_router(self, step, *, mirror_sink: bool = False, mirror_logs: bool = False,
                        **kwargs) -> dict[str, Any]:
        """``step(tracking_uri, model, version, router, groups, ...)`` with the router connection's
        router and replica groups (gray, ab, shadow; ``mirror_sink``: and its mirror sink's URL as
        ``sink_url``; ``mirror_logs``: and, when the connection names them, the mirror's request
        logs as ``log_prefixes``); settings the release refuses fail the task (no retry)."""
        from tfmlops_airflow.hooks.router import TrafficRouterHook

        hook = TrafficRouterHook(self.router_conn_id)
        try:
            groups = hook.groups()
            endpoints = [ep for eps in groups.values() for ep in eps]
            try:
                if mirror_sink:
                    kwargs["sink_url"] = hook.mirror_sink_url()
                if mirror_logs:
                    kwargs["log_prefixes"] = hook.mirror_log_prefixes()
                return step(self.tracking_uri, self.model_name, self.version, hook.router(), groups,
                            timeout_s=float(self.timeout_s), s3_client=self.models_root_s3_client(endpoints),
                            on_event=self.log.info, audit=self.audit, **kwargs)
            except ValueError as exc:  # settings the release refuses (steps, shares, no request logs/sink, labels)
                raise AirflowFailException(f"{self.strategy}: {exc}") from exc
        finally:
            hook.close()

    def _gray(self) -> dict[str, Any]:
        from tfmlops.steps.rollout import gray_release_registered

        steps = self.gray_steps
        if isinstance(steps, str):
            steps = [s for s in steps.replace("[", " ").replace("]", " ").replace(",", " ").split() if s]
        return self._through_router(gray_release_registered, mirror_logs=True, steps=[float(s) for s in steps],
                                    window_s=float(self.gray_window_s), thresholds=self._gray_thresholds(),
                                    hold_for_approval=self._holds())

    def _holds(self) -> bool:
        return self.approval == "before_promote"

    def _ab(self) -> dict[str, Any]:
        from tfmlops.steps.rollout import ABSettings, ab_test_registered

        labels = optional(self.ab_labels_uri)
        if labels is None:
            raise AirflowFailException("strategy ab needs ab_labels_uri: the labels of the users' request ids")
        settings = self._settings(ABSettings, share_pct=float(self.ab_share_pct), alpha=float(self.ab_alpha),
                                  min_samples=int(self.ab_min_samples), labels_wait_s=float(self.ab_labels_wait_s))
        return self._through_router(ab_test_registered, mirror_logs=True, labels=str(labels), settings=settings,
                                    window_s=float(self.ab_window_s), thresholds=self._gray_thresholds(),
                                    hold_for_approval=self._holds())

    def _shadow(self) -> dict[str, Any]:
        from tfmlops.steps.rollout import ShadowThresholds, shadow_release_registered

        thresholds = self._settings(ShadowThresholds, min_agreement=float(self.shadow_min_agreement),
                                    min_compared=int(float(self.shadow_min_compared)),
                                    max_error_rate_increase=float(self.max_error_rate_increase),
                                    max_p99_increase_ms=float(self.max_p99_increase_ms))
        return self._through_router(shadow_release_registered, mirror_sink=True,
                                    window_s=float(self.shadow_window_s), thresholds=thresholds,
                                    hold_for_approval=self._holds())

    def _announce(self, context, result) -> None:
        """A promotion: the champion's asset event, and the ``promotion`` notification."""
        if CHAMPION in self.outlets:
            context["outlet_events"][CHAMPION].extra = {"model_name": self.model_name, "version": result["version"]}
        notify(context, "promotion", model=self.model_name, version=result["version"], reason=self.audit["reason"],
               strategy=self.strategy, endpoints=", ".join(map(str, result.get("endpoints") or ())) or None)

    def _rolled_back(self, context, exc: Exception, version, reason: str) -> Exception:
        """``exc``, once the ``rollback`` notification is sent (the failure sends no second one)."""
        notify(context, "rollback", model=self.model_name, version=version, reason=reason, strategy=self.strategy)
        exc.tfmlops_notified = True
        return exc

    def _router_release(self, context) -> dict[str, Any]:
        """gray, ab or shadow: a rollback (gray) or hold (shadow), or a challenger that broke (ab),
        fails the task; an A/B test not won skips it; a promotion announces the champion."""
        result = {"gray": self._gray, "ab": self._ab, "shadow": self._shadow}[self.strategy]()
        what = f"{self.model_name} version {result['version']}"
        if result["outcome"] == AWAITING_APPROVAL:  # the approval task asks; the conclude task finishes
            self.log.info("%s holds %s %% of the traffic awaiting approval", what, result["held_share_pct"])
            return {k: result[k] for k in ("model", "version", "strategy", "outcome", "held_share_pct",
                                           "canary_old", *ROUTER_DETAILS[self.strategy], "reason", "seconds")}
        if self.strategy == "ab":
            what += f" A/B {result['decision']}: {result['reason']}"
            if result["challenger_failed"]:
                raise self._rolled_back(context, ServingRolloutFailed(what), result["version"], result["reason"])
            if result["outcome"] != "promoted":
                raise self._rolled_back(context, ABTestNotWon(what), result["version"],
                                        f"A/B {result['decision']}: {result['reason']}")
        elif result["outcome"] != "promoted":
            raise self._rolled_back(context, ServingRolloutFailed(
                f"{what} {'rolled back' if self.strategy == 'gray' else 'held'} ({self.strategy}): {result['reason']}"),
                result["version"], result["reason"])
        self._announce(context, result)
        return {k: result[k] for k in ("model", "version", "strategy", "outcome", "endpoints",
                                       *ROUTER_DETAILS[self.strategy], "aliases", "seconds")}

    def _approved_before_rollout(self) -> None:
        """``before_rollout``: go on only when the person approved; otherwise their decision goes on
        the version and the task is skipped (nothing was touched)."""
        from tfmlops.steps.rollout import decision_reason, record_decision

        decision = dict(self.decision or {})
        if not decision:
            raise AirflowFailException("approval before_rollout: no decision reached this task (the approval "
                                       "task before it must run first)")
        if not decision.get("approved"):
            record_decision(self.tracking_uri, str(self.model_name), int(self.version), decision)
            raise AirflowSkipException(f"{self.model_name} version {self.version} not rolled out: "
                                       f"{decision_reason(decision)}")

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.rollout import CanaryChecks, load_canary_holdout, rollout_registered

        # the model's audit trail names the run that changed what is served, and why
        self.audit = {"reason": str(optional(self.reason) or "rollout"),
                      "run": f"{context['ti'].dag_id}/{context['run_id']}"}
        self.approval = str(optional(self.approval) or "none")
        if self.approval not in APPROVALS:
            raise AirflowFailException(f"approval must be one of {', '.join(APPROVALS)}, got {self.approval!r}")
        if self.approval == "before_promote" and self.strategy not in ROUTER_DETAILS:
            raise AirflowFailException(
                f"approval before_promote holds a release through the router ({', '.join(ROUTER_DETAILS)}); "
                f"a {self.strategy} rollout is approved before it starts: approval before_rollout")
        if self.approval == "before_rollout":
            self._approved_before_rollout()
        if self.strategy in ROUTER_DETAILS:
            return self._router_release(context)

        checks = CanaryChecks(min_accuracy=number_or_none(self.min_accuracy), max_rmse=number_or_none(self.max_rmse),
                              latency_budget_ms=number_or_none(self.latency_budget_ms))
        holdout = optional(self.holdout_uri)
        if holdout is not None:
            checks.holdout_x, checks.holdout_y = load_canary_holdout(str(holdout), self.s3_client_for(holdout))
        endpoints = self.serving_endpoints(self.targets, publishing=True)
        try:
            result = rollout_registered(self.tracking_uri, self.model_name, self.version, endpoints,
                                        str(self.strategy), checks, int(self.keep), float(self.timeout_s),
                                        s3_client=self.models_root_s3_client(endpoints), on_event=self.log.info,
                                        audit=self.audit)
        finally:
            for ep in endpoints:
                ep.close()
        if result["outcome"] != "promoted":
            raise self._rolled_back(context, ServingRolloutFailed(
                f"{self.model_name} version {result['version']} rolled back on {result['rolled_back']}: "
                f"{result['reason']}"), result["version"], result["reason"])
        self._announce(context, result)
        return {k: result[k] for k in ("model", "version", "strategy", "outcome", "endpoints", "old_versions",
                                       "checks", "published", "retired", "aliases", "seconds")}


class ConcludeRolloutOperator(ServingRolloutOperator):
    """End a release that awaited approval, as the person decided: ``approved`` → the candidate
    takes all traffic (onto the router's stable group) and becomes ``champion``, with the
    ``promotion`` notification; ``rejected``, ``timed out`` or ``withdrawn`` → rolled back (share
    0 %, the canary group back on what it served), the reason naming the decision, who took it and
    the note, with the ``rollback`` notification. Either way the decision is kept on the version
    (``serving.approval``) and the model's audit trail. A rejection is an outcome, not a failure:
    the task succeeds; a promotion that fails (the stable group) is rolled back and fails it.
    Skipped when nothing awaited approval (the approval task skipped).

    :param rollout: the rollout task's ``awaiting_approval`` result. (templated)
    :param decision: the approval task's result. (templated)
    Other parameters: :class:`ServingRolloutOperator`'s (the router, timeout, reason).
    """

    template_fields: Sequence[str] = (*ServingRolloutOperator.template_fields, "rollout")

    def __init__(self, *, rollout: dict | str, decision: dict | str, **kwargs):
        super().__init__(decision=decision, **kwargs)
        self.rollout = rollout

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.steps.rollout import conclude_registered

        held, decision = dict(self.rollout or {}), dict(self.decision or {})
        if held.get("outcome") != AWAITING_APPROVAL or not decision:
            raise AirflowSkipException("nothing awaited approval")
        self.audit = {"reason": f"{optional(self.reason) or 'rollout'}, {decision.get('decision')}"
                                + (f" by {decision['by']}" if decision.get("by") else ""),
                      "run": f"{context['ti'].dag_id}/{context['run_id']}"}
        self.strategy = held.get("strategy", self.strategy)  # what was held is what is concluded
        result = self._through_router(conclude_registered, decision=decision, strategy=self.strategy,
                                      canary_old=[int(v) for v in held.get("canary_old") or []])
        if result["outcome"] == "promoted":
            self._announce(context, result)
        elif decision.get("approved"):
            raise self._rolled_back(context, ServingRolloutFailed(
                f"{self.model_name} version {result['version']} approved, then rolled back: {result['reason']}"),
                result["version"], result["reason"])
        else:
            notify(context, "rollback", model=self.model_name, version=result["version"], reason=result["reason"],
                   strategy=self.strategy)
        return {k: result.get(k) for k in ("model", "version", "strategy", "outcome", "reason", "endpoints",
                                           "aliases", "seconds")} | {"decision": decision}
