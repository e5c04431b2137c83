"""``ServingApprovalTrigger``: the wait of a serving approval, in the triggerer.

Airflow's human-in-the-loop step (``HITLTrigger``: the response a person gives in the UI or REST
API, the timeout that takes the default) plus the one thing a plain approval cannot know: the
registry moving on. The ``champion`` alias is read at every poke; once it no longer names the
version it named when the approval was asked for, a person has chosen another version in the
registry (the newest intent) and the approval is **withdrawn**: answered ``Reject`` with a note
saying so (the UI then shows it answered), and the event says ``withdrawn``.

A person's answer through the API resumes the task directly (Airflow 3.3 resumes a deferred
human-in-the-loop task from the response handler); this trigger is then cancelled.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from airflow.providers.standard.triggers.hitl import HITLTrigger
from airflow.triggers.base import TriggerEvent

REJECT = "Reject"


class ServingApprovalTrigger(HITLTrigger):
    """:param model_name: the registered model.
    :param champion: the version ``champion`` named when the approval was asked for (None: none).
    :param mlflow_conn_id: MLflow connection.
    Other parameters: ``HITLTrigger``'s."""

    def __init__(self, *, model_name: str, champion: int | None, mlflow_conn_id: str = "mlflow_default", **kwargs):
        super().__init__(**kwargs)
        self.model_name = model_name
        self.champion = None if champion is None else int(champion)
        self.mlflow_conn_id = mlflow_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, fields = super().serialize()
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {**fields, "model_name": self.model_name, "champion": self.champion,
                 "mlflow_conn_id": self.mlflow_conn_id})

    def _champion_now(self) -> int | None:
        from tfmlops.steps.rollout import champion_version
        from tfmlops_airflow.hooks import MLflowHook

        return champion_version(MLflowHook(self.mlflow_conn_id).tracking_uri, self.model_name)

    async def _withdrawn(self) -> TriggerEvent | None:
        """The withdrawal event once ``champion`` moved; None while it has not (or the registry
        does not answer: looked at again at the next poke)."""
        from asgiref.sync import sync_to_async
        from airflow.sdk.execution_time.hitl import update_hitl_detail_response

        try:
            now = await sync_to_async(self._champion_now)()
        except Exception as exc:  # noqa: BLE001 - a registry that does not answer is asked again
            self.log.warning("registry not read (%s: %s)", type(exc).__name__, exc)
            return None
        if now == self.champion:
            return None
        note = (f"champion moved to version {now} in the registry" if now is not None
                else "champion removed in the registry")
        answer = await sync_to_async(update_hitl_detail_response)(
            ti_id=self.ti_id, chosen_options=[REJECT], params_input={**self.params.dump(), "note": note})
        self.log.info("[HITL] approval withdrawn: %s", note)
        return TriggerEvent({"chosen_options": [REJECT], "params_input": {"note": note},
                             "responded_at": answer.responded_at, "responded_by_user": None, "timedout": False,
                             "withdrawn": True})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.sdk.timezone import utcnow

        while True:
            if self.timeout_datetime and self.timeout_datetime < utcnow():
                yield await self._handle_timeout()
                return
            event = await self._handle_response() or await self._withdrawn()
            if event:
                yield event
                return
            await asyncio.sleep(self.poke_interval)
