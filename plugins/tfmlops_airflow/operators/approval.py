"""``ServingApprovalOperator``: a person approves a held release before it is promoted.

Airflow 3.3's human-in-the-loop step (``HITLOperator``: **Approve** / **Reject** and a note, on the
task's *Required actions* in the UI or ``PATCH /api/v2/hitlDetails/...``), asked only when the
rollout task before it returned ``awaiting_approval`` (``approval=before_promote``); otherwise it
skips, and so does the conclusion after it. Its page shows the candidate's gate figures, its live
numbers at each step so far and links to its model card, MLflow version and run. It waits in the
triggerer (:class:`~tfmlops_airflow.triggers.approval.ServingApprovalTrigger`): no answer within
``response_timeout_h`` takes the default, **Reject**; ``champion`` moved in the registry meanwhile
withdraws it. The decision — ``approved``, ``rejected``, ``timed out`` or ``withdrawn``, who, the
note — is the task's result, which :class:`~tfmlops_airflow.operators.rollout.ConcludeRolloutOperator`
acts on. It runs in the rollout pool, which counts deferred tasks: no other rollout touches the
router while a person decides.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Sequence

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfmlops_airflow.hooks import MLflowHook
from tfmlops_airflow.notifications import mlflow_ui_url, notify
from tfmlops_airflow.operators.base import id_list, optional
from tfmlops_airflow.operators.rollout import AWAITING_APPROVAL
from tfmlops_airflow.params import ROLLOUT_POOL

APPROVE, REJECT = "Approve", "Reject"


class ServingApprovalOperator(HITLOperator):
    """Ask a person to approve the promotion of a held release.

    :param model_name: the registered model. (templated)
    :param version: the held version. (templated)
    :param rollout: the rollout task's result (its ``outcome`` says whether anything is held). (templated)
    :param approvers: Airflow user ids who may answer (``assigned_users``); empty: whoever may
        answer the DAG's required actions (the auth manager decides). (templated)
    :param response_timeout_h: hours to wait; then the default, Reject. (templated)
    :param mlflow_conn_id: MLflow connection.
    :param poke_interval: seconds between two looks at the answer and the registry.
    """

    template_fields: Sequence[str] = ("model_name", "version", "rollout", "approvers", "response_timeout_h")

    def __init__(self, *, model_name: str, version: str | int, rollout: dict | str, approvers: list | str = (),
                 response_timeout_h: float | str = 24, mlflow_conn_id: str = "mlflow_default",
                 poke_interval: float = 5.0, **kwargs):
        kwargs.setdefault("pool", ROLLOUT_POOL)
        # the DAG's params come merged in (source "dag"); the form a person fills in is the note alone
        given = kwargs.pop("params", None) or {}
        merged = {k: given.get_param(k) if isinstance(given, ParamsDict) else given[k] for k in given}
        merged["note"] = Param(None, type=["null", "string"], maxLength=2000, title="Note",
                               description="Why (optional; kept on the version).", source="task")
        super().__init__(subject="Promote the held version?", options=[APPROVE, REJECT], defaults=[REJECT],
                         multiple=False, params=ParamsDict(merged), **kwargs)
        self.model_name = model_name
        self.version = version
        self.rollout = rollout
        self.approvers = approvers
        self.response_timeout_h = response_timeout_h
        self.mlflow_conn_id = mlflow_conn_id
        self.poke_interval = poke_interval

    def execute(self, context) -> None:
        from airflow.sdk.execution_time.hitl import upsert_hitl_detail
        from airflow.sdk.timezone import utcnow

        from tfmlops.steps.rollout import approval_request
        from tfmlops_airflow.triggers.approval import ServingApprovalTrigger

        held = dict(self.rollout or {})
        if held.get("outcome") != AWAITING_APPROVAL:
            raise AirflowSkipException(f"nothing awaits approval (rollout outcome {held.get('outcome')!r})")
        try:
            hours = float(self.response_timeout_h)
        except (TypeError, ValueError):
            hours = -1.0
        if not hours > 0:
            raise AirflowFailException(f"response_timeout_h must be a positive number of hours, got "
                                       f"{self.response_timeout_h!r}")
        self.response_timeout = timedelta(hours=hours)
        self.assigned_users = [{"id": u, "name": u} for u in id_list(self.approvers)] or None
        try:
            link = self.generate_link_to_ui_from_context(context=context)
        except ValueError:  # no [api] base_url: no link (the task's page has the form anyway)
            link = None
        request = approval_request(MLflowHook(self.mlflow_conn_id).tracking_uri, str(self.model_name),
                                   int(self.version), held, mlflow_ui_url(self.mlflow_conn_id),
                                   {"This approval in Airflow": link} if link else None)
        self.subject, self.body = request["subject"], request["body"]
        upsert_hitl_detail(ti_id=context["task_instance"].id, options=self.options, subject=self.subject,
                           body=self.body, defaults=self.defaults, multiple=self.multiple,
                           params=self.serialized_params, assigned_users=self.assigned_users)
        notify(context, "approval_requested", model=self.model_name, version=self.version,
               reason=f"holds {held.get('held_share_pct')} % of the traffic until approved (timeout {hours:g} h: "
                      "rolled back)", approve_at=link)
        self.defer(trigger=ServingApprovalTrigger(
            ti_id=context["task_instance"].id, options=self.options, defaults=self.defaults,
            params=self.serialized_params, multiple=self.multiple, timeout_datetime=utcnow() + self.response_timeout,
            poke_interval=self.poke_interval, model_name=str(self.model_name), champion=request["champion"],
            mlflow_conn_id=self.mlflow_conn_id), method_name="execute_complete")

    def execute_complete(self, context, event: dict[str, Any]) -> dict[str, Any]:
        """The decision: ``approved`` (bool), ``decision``, ``by``, ``note``, ``at``."""
        if "error" in event:  # e.g. a note the form refused; with a default, a timeout is not an error
            raise AirflowFailException(f"approval of {self.model_name} version {self.version}: {event['error']}")
        chosen = (event.get("chosen_options") or [REJECT])[0]
        by = (event.get("responded_by_user") or {}).get("name")
        if event.get("withdrawn"):
            decision = "withdrawn"
        elif event.get("timedout"):
            decision = "timed out"
        else:
            decision = "approved" if chosen == APPROVE else "rejected"
        note = str((event.get("params_input") or {}).get("note") or "")
        at = event.get("responded_at")
        result = {"approved": decision == "approved", "decision": decision, "by": by, "note": note,
                  "at": at.isoformat() if hasattr(at, "isoformat") else optional(at)}
        self.log.info("%s version %s: %s", self.model_name, self.version, result)
        return result
