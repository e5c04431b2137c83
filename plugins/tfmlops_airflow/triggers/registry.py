"""``ChampionMovedTrigger``: the MLflow registry polled from the triggerer, for the asset that
schedules ``tf_serving_reconcile`` (an ``AssetWatcher``: event-driven scheduling).

Every ``poll_s`` seconds it lists the watched models with one registry call
(:func:`tfmlops.deploy.reconcile.registry_intents`: each model's ``champion`` alias and the version
its last rollout recorded as served) and fires one event per model whose champion differs —
once per (champion, served) pair, so a rollout in progress (minutes) is not asked for again at
every poll; the pair is fired again after ``refire_s`` when nothing changed (a lost run). The
pairs already fired are kept in the asset's state store (Airflow 3.3) where the triggerer gives
one, so a restarted triggerer does not fire them twice. A registry that does not answer is
logged and polled again; the trigger never ends by itself.

Polling is what makes a moved alias served within a minute even when MLflow's webhook (which
:mod:`tfmlops_airflow.webhooks` receives, to act at once) is lost: MLflow gives up on a delivery
after three tries.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

STATE_KEY = "fired"


class ChampionMovedTrigger(BaseEventTrigger):
    """:param mlflow_conn_id: MLflow connection.
    :param models: the models to watch; empty: every model a rollout has served.
    :param poll_s: seconds between two looks at the registry.
    :param refire_s: a difference already fired is fired again after this long."""

    def __init__(self, mlflow_conn_id: str = "mlflow_default", models: list[str] | tuple = (),
                 poll_s: float = 15.0, refire_s: float = 3600.0):
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id
        self.models = list(models)
        self.poll_s = float(poll_s)
        self.refire_s = float(refire_s)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"mlflow_conn_id": self.mlflow_conn_id, "models": self.models, "poll_s": self.poll_s,
                 "refire_s": self.refire_s})

    def _intents(self) -> list:
        from tfmlops.steps.reconcile import registry_intents
        from tfmlops_airflow.hooks import MLflowHook

        return registry_intents(MLflowHook(self.mlflow_conn_id).tracking_uri, self.models)

    async def _state(self, fired: dict | None = None) -> dict:
        """The pairs fired so far (read), or ``fired`` written; in memory without a state store."""
        store = getattr(self, "asset_state_store", None)
        if store is None:
            return fired if fired is not None else {}
        try:
            if fired is None:
                return json.loads(await store.aget(STATE_KEY) or "{}")
            await store.aset(STATE_KEY, json.dumps(fired))
        except Exception as exc:  # noqa: BLE001 - an optimisation: without it a restart may fire once more
            self.log.warning("asset state store unavailable (%s); keeping the fired pairs in memory", exc)
        return fired if fired is not None else {}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from asgiref.sync import sync_to_async

        fired = await self._state()
        while True:
            try:
                intents = await sync_to_async(self._intents)()
            except Exception as exc:  # noqa: BLE001 - a registry that does not answer may answer at the next poll
                self.log.warning("registry not read (%s: %s); next look in %.0fs", type(exc).__name__, exc, self.poll_s)
                intents = []
            changed = False
            for intent in intents:
                pair = f"{intent.champion}<-{intent.served}"
                if not intent.differs:
                    changed |= fired.pop(intent.model, None) is not None
                    continue
                last = fired.get(intent.model)
                if last and last[0] == pair and time.time() - last[1] < self.refire_s:
                    continue
                fired[intent.model] = [pair, time.time()]
                await self._state(fired)
                self.log.info("%s: champion is version %s, version %s is served: reconcile", intent.model,
                              intent.champion, intent.served)
                yield TriggerEvent({**intent.to_dict(), "source": "registry poll"})
            if changed:
                await self._state(fired)
            await asyncio.sleep(self.poll_s)
