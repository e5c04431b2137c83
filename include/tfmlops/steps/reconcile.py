"""``tf_serving_reconcile``: the registry's ``@champion`` as the desired state of what is served.

A person who moves the ``champion`` alias in MLflow's UI — to roll back after an incident, or to
promote a version trained elsewhere — changes which version a model's clients should get; the
reconciler rolls out the difference with the model's usual strategy. Two looks, two costs:

- :func:`registry_intents` — the cheap look, every few seconds (the triggerer's poll): one
  registry call for a page of models (they carry their aliases and tags) compares ``champion``
  with the version the last rollout recorded as served (:data:`tfmlops.registry.MODEL_SERVED_TAG`).
  A rollout records what it served before it moves the alias, so a DAG's own promotion never
  looks like a difference.
- :func:`decide` — the exact look, before a rollout is started: what each target actually serves
  (:func:`tfmlops.deploy.reconcile.served_by`).

Nothing here starts anything. The webhook verification the receiver runs is here too
(:class:`tfmlops.webhooks.Verifier`), so that the Airflow side reaches the core through this layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tfmlops import registry
from tfmlops.deploy.endpoint import Endpoint
from tfmlops.deploy.reconcile import compare
from tfmlops.modelspec import json_overrides
from tfmlops.webhooks import DELIVERY_HEADER, MAX_BODY_BYTES, Verifier, WebhookRefused, champion_event

__all__ = ["Intent", "registry_intents", "decide", "served_version", "serving_settings", "REASON",
           "Verifier", "WebhookRefused", "champion_event", "DELIVERY_HEADER", "MAX_BODY_BYTES"]

REASON = "reconcile: champion moved in the registry"
served_version = registry.served_version


@dataclass(frozen=True)
class Intent:
    """One model: the version ``champion`` names, and the one its last rollout recorded as served."""

    model: str
    champion: int | None
    served: int | None

    @property
    def differs(self) -> bool:
        return self.champion is not None and self.champion != self.served

    def to_dict(self) -> dict:
        return asdict(self)


def serving_settings(form: dict, variable: str, raw) -> dict:
    """A model's serving settings: the rollout form's defaults ``form`` with the JSON object of its
    Variable ``variable`` (``raw``; unset: none) over them; ValueError naming what is wrong."""
    return json_overrides(form, raw, "fields", f"tf_serving_rollout's form (Variable {variable})")


def _version(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def registry_intents(tracking_uri: str, models: list[str] | tuple = (), page_size: int = 200) -> list[Intent]:
    """The intent of every watched model: those named in ``models``, or (none named) every model a
    rollout has served (it has the served tag) — models nobody deployed are not the reconciler's."""
    mlf, wanted, token, found = registry.client(tracking_uri), set(models), None, []
    while True:
        page = mlf.search_registered_models(max_results=page_size, page_token=token)
        for rm in page:
            tags = dict(rm.tags or {})
            if (rm.name in wanted) if wanted else (registry.MODEL_SERVED_TAG in tags):
                found.append(Intent(rm.name, _version((rm.aliases or {}).get(registry.CHAMPION)),
                                    _version(tags.get(registry.MODEL_SERVED_TAG))))
        token = page.token
        if not token:
            return sorted(found, key=lambda i: i.model)


def decide(tracking_uri: str, model: str, endpoints: list[Endpoint]) -> dict:
    """Whether ``model``'s targets serve its champion: ``{"model", "champion", "off" ({endpoint:
    version} of the targets that serve something else), "action", "reason"}`` with ``action``
    ``"rollout"``, ``"none"`` (all serve the champion — a second look after a rollout finds
    nothing to do) or ``"no champion"`` (the alias was deleted: nothing is taken down for that)."""
    mv = registry.alias_version(tracking_uri, model, registry.CHAMPION)
    champion = int(mv.version) if mv is not None else None
    decision = {"model": model, "champion": champion, "off": {}}
    if champion is None:
        return {**decision, "action": "no champion",
                "reason": f"{model} has no '{registry.CHAMPION}' alias; its targets keep what they serve"}
    if not endpoints:
        return {**decision, "action": "none", "reason": f"{model} has no targets"}
    off = compare(model, champion, endpoints)
    if not off:
        return {**decision, "action": "none", "reason": f"every target serves {model} version {champion}"}
    return {**decision, "off": off, "action": "rollout",
            "reason": f"{REASON}: version {champion} is champion; "
                      + ", ".join(f"{name} serves {v if v is not None else 'nothing'}" for name, v in off.items())}
