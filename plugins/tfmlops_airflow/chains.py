"""Task chains that several DAGs share, declared once (like ``guard.add_run_guard``).

:func:`serving_release` is how every DAG that deploys a version does it: the rollout, then the
approval (asked only when the form's ``approval`` made the rollout hold the version) and the
promotion or rollback that follows it. :func:`hparam_search` is the Optuna search that
``tf_hparam_search`` runs (and ``tf_offline_retrain`` when its form asks for trials) and
:func:`train_to_serving` what both do with its result — train → evaluate → gate → export →
register → release → model card. Call them inside a ``with DAG(...)`` block whose params include
:func:`tfmlops_airflow.params.rollout` and ``model_name`` and the gate fields of
:func:`tfmlops_airflow.params.model`.
"""

from __future__ import annotations

from airflow.sdk import XComArg

from tfmlops_airflow import params
from tfmlops_airflow.operators.card import ModelCardOperator
from tfmlops_airflow.operators.retrain import (
    EvaluateModelOperator,
    ExportSavedModelOperator,
    ModelGateOperator,
    RegisterModelOperator,
    TrainModelOperator,
)
from tfmlops_airflow.operators.approval import ServingApprovalOperator
from tfmlops_airflow.operators.rollout import ConcludeRolloutOperator, ServingRolloutOperator
from tfmlops_airflow.operators.search import (
    SEARCH_KEY,
    FinishSearchOperator,
    PrepareSearchOperator,
    SearchWorkerOperator,
)


def serving_release(version, display_name: str, announce_champion: bool = False, **overrides):
    """``approve_rollout >> rollout >> approve >> conclude`` for ``version`` (an XCom or a template)
    with the form's :func:`tfmlops_airflow.params.rollout` fields; ``overrides``: more rollout
    arguments (e.g. ``reason``). The approvals are asked only as the form's ``approval`` says
    (``before_rollout``: the first; ``before_promote``: the second, when the rollout holds). Returns
    ``(rollout, conclude)``: the rollout task (wire its upstream to it) and the last task."""
    arguments = {**params.rollout_arguments(), **overrides}
    person = {"model_name": "{{ params.model_name }}", "version": version, "approvers": "{{ params.approvers }}",
              "response_timeout_h": "{{ params.approval_timeout_h }}"}
    before = ServingApprovalOperator(task_id="approve_rollout", task_display_name="Approve the rollout",
                                     stage="before_rollout", approval="{{ params.approval }}",
                                     strategy="{{ params.strategy }}", **person)
    # skipped approval (approval is not before_rollout): the rollout still runs on its other upstream;
    # everything upstream skipped (a rejected gate): so is the rollout
    rollout = ServingRolloutOperator(task_id="rollout", task_display_name=display_name, version=version,
                                     announce_champion=announce_champion, decision=before.output,
                                     trigger_rule="none_failed_min_one_success", **arguments)
    approve = ServingApprovalOperator(task_id="approve", task_display_name="Approve the promotion",
                                      rollout=rollout.output, **person)
    conclude = ConcludeRolloutOperator(task_id="conclude", task_display_name="Promote or roll back as decided",
                                       version=version, rollout=rollout.output, decision=approve.output,
                                       announce_champion=announce_champion, **arguments)
    before >> rollout >> approve >> conclude
    return rollout, conclude


def hparam_search(model_spec, data: dict, prepare_name: str = "Prepare the study", **settings):
    """``prepare >> search_worker × parallelism >> finish`` on ``model_spec`` (the validation task's
    XCom) and the data fields; ``settings``: :class:`PrepareSearchOperator`'s (``n_trials`` 0: no
    search, the workers skip and ``finish`` passes ``model_spec`` on). Returns the finish task: its
    ``model_spec`` (the best configuration), ``parent_run_id`` and ``best_trial`` feed
    :func:`train_to_serving`."""
    prepare = PrepareSearchOperator(task_id="prepare", task_display_name=prepare_name,
                                    model_name="{{ params.model_name }}", model_spec=model_spec,
                                    gate_metric="{{ params.gate_metric }}", **settings, **data)
    search = XComArg(prepare, key=SEARCH_KEY)
    # mapped over prepare's worker indices: parallelism is a form field, not fixed at parse time
    workers = SearchWorkerOperator.partial(task_id="search_worker", task_display_name="Search worker", search=search,
                                           model_spec=model_spec, **data).expand(worker=prepare.output)
    finish = FinishSearchOperator(task_id="finish", task_display_name="Best trial and plots", search=search,
                                  model_spec=model_spec)
    workers >> finish
    return finish


def train_to_serving(search, data: dict, train_name: str = "Train", dataset_profile=None) -> None:
    """The tasks from training a model spec to its model card, wired. ``search``: the finish task of
    :func:`hparam_search` (its ``model_spec`` is trained, its parent run and best trial, when there
    was a search, go on the run and the version as lineage); ``data``: the data fields
    (``dataset_uri``, ``sample_fraction``); ``dataset_profile``: the validation task's profile,
    logged with the run."""
    model = {"model_spec": search.output["model_spec"], **data}
    lineage_tags = {"search.parent_run_id": search.output["parent_run_id"],
                    "search.best_trial": search.output["best_trial"]}
    train = TrainModelOperator(task_id="train", task_display_name=train_name, experiment="{{ params.model_name }}",
                               lineage_tags=lineage_tags, dataset_profile=dataset_profile, **model)
    evaluate = EvaluateModelOperator(
        task_id="evaluate", task_display_name="Evaluate", run_id=train.output["run_id"],
        model_uri=train.output["model_uri"], **model)
    gate = ModelGateOperator(
        task_id="gate", task_display_name="Validation gate", model_name="{{ params.model_name }}",
        run_id=train.output["run_id"], metrics=evaluate.output, gate_metric="{{ params.gate_metric }}",
        gate_threshold="{{ params.gate_threshold }}", tolerance="{{ params.tolerance }}", **model)
    export = ExportSavedModelOperator(
        task_id="export", task_display_name="Export SavedModel", run_id=train.output["run_id"],
        model_uri=train.output["model_uri"], **model)
    register = RegisterModelOperator(
        task_id="register", task_display_name="Register in MLflow", model_name="{{ params.model_name }}",
        run_id=train.output["run_id"], model_uri=train.output["model_uri"], metrics=evaluate.output,
        dataset_fingerprint=train.output["dataset_fingerprint"], model_spec=model["model_spec"],
        lineage_tags=lineage_tags)
    rollout, released = serving_release(register.output["version"], "Roll out to TF Serving, set champion",
                                        announce_champion=True)
    card = ModelCardOperator(
        task_id="model_card", task_display_name="Model card", model_name="{{ params.model_name }}",
        version=register.output["version"])
    gate >> export >> register >> rollout
    released >> card
