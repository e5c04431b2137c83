"""The operator of ``tf_serving_reconcile``: a thin wrapper over :mod:`tfmlops.steps.reconcile`.

A model's serving settings — its targets and rollout strategy, with any of ``tf_serving_rollout``'s
form fields — live in one place: the Airflow Variable ``tfmlops_serving_<model>`` (JSON object); a
model without one is rolled with the form's defaults (``tf_serving_default``, ``replace``).
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk.exceptions import AirflowFailException

from tfmlops_airflow.operators.base import TFMLOpsBaseOperator, optional
from tfmlops_airflow.operators.rollout import ROUTER_DETAILS
from tfmlops_airflow.params import ROLLOUT_POOL, rollout

SETTINGS_VARIABLE = "tfmlops_serving_{model}"


def serving_settings(model: str) -> dict[str, Any]:
    """``tf_serving_rollout``'s form values for ``model``: the defaults, with the model's Variable
    over them; a Variable that is not a JSON object, or names a field the form does not have, fails."""
    from airflow.sdk import Variable

    from tfmlops.steps import reconcile

    key = SETTINGS_VARIABLE.format(model=model)
    try:
        return reconcile.serving_settings({k: p.value for k, p in rollout().items()}, key,
                                          Variable.get(key, default=None))
    except ValueError as exc:
        raise AirflowFailException(str(exc)) from exc


class ReconcileServingOperator(TFMLOpsBaseOperator):
    """For each model, compare its ``champion`` alias with what its targets actually serve (the
    router's stable group for ``gray``/``ab``/``shadow``) and return the ``tf_serving_rollout``
    conf of each model that needs a rollout (the champion's version, the model's serving settings,
    the reason for the audit trail). Runs in the rollout pool, so a rollout in progress finishes
    (or rolls back) before the look is taken; a second look finds nothing to do.

    :param model_name: one model, or empty for all of ``models``. (templated)
    :param models: the models this deployment reconciles; empty: every model a rollout has served.
    """

    template_fields: Sequence[str] = ("model_name",)

    def __init__(self, *, model_name: str | None = None, models: list[str] | tuple = (), **kwargs):
        kwargs.setdefault("pool", ROLLOUT_POOL)
        kwargs.setdefault("multiple_outputs", False)
        super().__init__(**kwargs)
        self.model_name = model_name
        self.models = list(models)

    def _endpoints(self, settings: dict) -> list:
        if settings["strategy"] in ROUTER_DETAILS:  # gray, ab, shadow: the router's groups are the targets
            from tfmlops_airflow.hooks.router import TrafficRouterHook

            hook = TrafficRouterHook(settings["router"])
            return list(hook.groups()["stable"])
        return self.serving_endpoints(settings["targets"])

    def execute(self, context) -> list[dict[str, Any]]:
        from tfmlops.steps.reconcile import decide, registry_intents

        model = optional(self.model_name)
        models = [str(model)] if model else [i.model for i in registry_intents(self.tracking_uri, self.models)]
        confs = []
        for name in models:
            settings = serving_settings(name)
            endpoints = self._endpoints(settings)
            try:
                decision = decide(self.tracking_uri, name, endpoints)
            finally:
                for ep in endpoints:
                    ep.close()
            self.log.info("%s: %s (%s)", name, decision["action"], decision["reason"])
            if decision["action"] == "rollout":
                confs.append({**settings, "model_name": name, "version": str(decision["champion"]),
                              "reason": decision["reason"][:500]})
        return confs
