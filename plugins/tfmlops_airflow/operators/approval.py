"""``ServingApprovalOperator``: a person approves a held release before it is promoted, or a
version before it is rolled out.

Airflow 3.3's human-in-the-loop step (``HITLOperator``: **Approve** / **Reject** and a note, on the
task's *Required actions* in the UI or ``PATCH /api/v2/hitlDetails/...``). At the stage
``before_promote`` it is asked only when the rollout task before it returned ``awaiting_approval``
(``approval=before_promote``); at ``before_rollout``, only when the form says
``approval=before_rollout`` (then the rollout after it acts on the answer); otherwise it skips,
and so does the conclusion after it. Its page shows the candidate's gate figures, the held
release's live numbers so far and links to its model card, MLflow version and run. It waits in the
triggerer (:class:`~tfmlops_airflow.triggers.approval.ServingApprovalTrigger`): no answer within
``response_timeout_h`` takes the default, **Reject**; ``champion`` moved in the registry meanwhile
withdraws it. The decision — ``approved``, ``rejected``, ``timed out`` or ``withdrawn``, who, the
note — is the task's result, which :class:`~tfmlops_airflow.operators.rollout.ConcludeRolloutOperator`
acts on. It runs in the rollout pool, which counts deferred tasks: no other rollout touches the
router while a person decides.

Separation of duties: an **Approve** from the person who triggered the run is not accepted (the
task log says so and the same question is asked again, with the time left) unless
``[tfmlops] allow_self_approval`` is true — the embedded single-user demo sets it; a **Reject** from
them is (anyone may stop what they started).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Sequence

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfmlops_airflow.config import option
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
    :param rollout: ``before_promote``: the rollout task's result (its ``outcome`` says whether
        anything is held). (templated)
    :param stage: ``before_promote`` (after the rollout task) or ``before_rollout`` (before it).
    :param approval: ``before_rollout``: the form's approval setting; asked only when it is
        ``before_rollout``. (templated)
    :param strategy: ``before_rollout``: the strategy the rollout will use, for the page. (templated)
    :param approvers: Airflow user ids who may answer (``assigned_users``); empty: whoever may
        answer the DAG's required actions (the auth manager decides). (templated)
    :param response_timeout_h: hours to wait; then the default, Reject. (templated)
    :param mlflow_conn_id: MLflow connection.
    :param poke_interval: seconds between two looks at the answer and the registry.
    """

    template_fields: Sequence[str] = ("model_name", "version", "rollout", "approvers", "response_timeout_h",
                                      "approval", "strategy")

    def __init__(self, *, model_name: str, version: str | int, rollout: dict | str | None = None,
                 stage: str = "before_promote", approval: str = "none", strategy: str = "replace",
                 approvers: list | str = (), response_timeout_h: float | str = 24,
                 mlflow_conn_id: str = "mlflow_default", poke_interval: float = 5.0, **kwargs):
        if stage not in ("before_promote", "before_rollout"):
            raise ValueError(f"stage must be before_promote or before_rollout, got {stage!r}")
        # a held release keeps the rollout pool (no other rollout touches the router meanwhile);
        # before the rollout nothing is held
        kwargs.setdefault("pool", ROLLOUT_POOL if stage == "before_promote" else "default_pool")
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
        self.stage = stage
        self.approval = approval
        self.strategy = strategy
        self.approvers = approvers
        self.response_timeout_h = response_timeout_h
        self.mlflow_conn_id = mlflow_conn_id
        self.poke_interval = poke_interval

    def execute(self, context) -> None:
        from airflow.sdk.timezone import utcnow

        from tfmlops.steps.rollout import approval_request

        if self.stage == "before_rollout":
            if str(optional(self.approval) or "none") != "before_rollout":
                raise AirflowSkipException(f"no approval before the rollout (approval {self.approval!r})")
            held = {"strategy": str(self.strategy)}
            waiting = f"waits for approval before its {self.strategy} rollout"
        else:
            held = dict(self.rollout or {})
            if held.get("outcome") != AWAITING_APPROVAL:
                raise AirflowSkipException(f"nothing awaits approval (rollout outcome {held.get('outcome')!r})")
            waiting = f"holds {held.get('held_share_pct')} % of the traffic ({held.get('strategy')}) until approved"
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
        notify(context, "approval_requested", model=self.model_name, version=self.version,
               reason=f"{waiting} (timeout {hours:g} h: "
                      f"{'not rolled out' if self.stage == 'before_rollout' else 'rolled back'})", approve_at=link)
        self._ask(context, {"subject": request["subject"], "body": request["body"], "champion": request["champion"],
                            "deadline": (utcnow() + self.response_timeout).isoformat(),
                            "assigned_users": self.assigned_users})

    def _ask(self, context, question: dict) -> None:
        """The question on the task (Airflow's upsert: any earlier answer is cleared) and the wait for
        its answer until ``question["deadline"]`` (the trigger)."""
        from datetime import datetime

        from airflow.sdk.execution_time.hitl import upsert_hitl_detail

        from tfmlops_airflow.triggers.approval import ServingApprovalTrigger

        self.subject, self.body = question["subject"], question["body"]
        upsert_hitl_detail(ti_id=context["task_instance"].id, options=self.options, subject=self.subject,
                           body=self.body, defaults=self.defaults, multiple=self.multiple,
                           params=self.serialized_params, assigned_users=question["assigned_users"])
        self.defer(trigger=ServingApprovalTrigger(
            ti_id=context["task_instance"].id, options=self.options, defaults=self.defaults,
            params=self.serialized_params, multiple=self.multiple,
            timeout_datetime=datetime.fromisoformat(question["deadline"]), poke_interval=self.poke_interval,
            model_name=str(self.model_name), champion=question["champion"], mlflow_conn_id=self.mlflow_conn_id),
            method_name="execute_complete", kwargs={"question": question})

    def execute_complete(self, context, event: dict[str, Any], question: dict | None = None) -> dict[str, Any]:
        """The decision: ``approved`` (bool), ``decision``, ``by``, ``note``, ``at``."""
        if "error" in event:  # e.g. a note the form refused; with a default, a timeout is not an error
            raise AirflowFailException(f"approval of {self.model_name} version {self.version}: {event['error']}")
        chosen = (event.get("chosen_options") or [REJECT])[0]
        by = (event.get("responded_by_user") or {}).get("name")
        triggered_by = getattr(context["dag_run"], "triggering_user_name", None)
        if (chosen == APPROVE and by and by == triggered_by and question and not event.get("timedout")
                and option("allow_self_approval", "false").lower() not in ("true", "1", "yes")):
            self.log.warning("%s approved the run they triggered themselves: not accepted (separation of duties; "
                             "[tfmlops] allow_self_approval); asked again, until %s", by, question["deadline"])
            return self._ask(context, question)  # defers: the answer comes back here
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
