"""UI form fields (``Param``) that several DAGs share, so that one field means the same thing in
every trigger form, and the rollout settings of the DAGs that deploy a model.

Nothing heavy is imported here: DAG files import it at parse time.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from airflow.sdk import Param

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # one path segment: not "." or "..", no "/" (tfmlops.storage)
# Where new data partitions land unless a run says otherwise (the scheduler's partition runs of
# tf_online_update use it): $TFMLOPS_PARTITIONS_ROOT (a local folder or s3://bucket/prefix), else
# <project>/var/partitions, the embedded stack's state folder.
DEFAULT_PARTITIONS_ROOT = os.environ.get("TFMLOPS_PARTITIONS_ROOT") or str(
    Path(__file__).resolve().parents[2] / "var" / "partitions")
# Where the served model's sampled request logs go (the filename_prefix of its logging_config):
# $TFMLOPS_REQUEST_LOG_PREFIX, else the embedded stack's <project>/var/serving/request-logs/mnist_mlp/requests.
DEFAULT_REQUEST_LOG_PREFIX = os.environ.get("TFMLOPS_REQUEST_LOG_PREFIX") or str(
    Path(__file__).resolve().parents[2] / "var" / "serving" / "request-logs" / "mnist_mlp" / "requests")
# Where the A/B test reads labeled feedback unless a run says otherwise: the label files of the
# default partitions root's mnist_stream dataset (feedback/labels/ and, once joined, feedback/joined/).
DEFAULT_AB_LABELS = None if DEFAULT_PARTITIONS_ROOT.startswith("s3://") else str(
    Path(DEFAULT_PARTITIONS_ROOT) / "mnist_stream" / "feedback")
# Where tf_hparam_search keeps its Optuna studies: $TFMLOPS_SEARCH_STORAGE (compose: the PostgreSQL
# database "optuna"), else a JournalStorage file in the embedded stack's state folder.
DEFAULT_SEARCH_STORAGE = os.environ.get("TFMLOPS_SEARCH_STORAGE") or "journal:" + str(
    Path(__file__).resolve().parents[2] / "var" / "optuna" / "studies.log")
# 1 slot (make run / the compose init create it): the rollout operators run in it by default, so the
# rollouts of every DAG queue behind each other.
ROLLOUT_POOL = "tf_serving_rollout"


def default_args(retry_delay: timedelta) -> dict:
    """What every DAG's tasks share: the owner, one retry, and the ``run_failed`` notification
    once a task has failed for good (:mod:`tfmlops_airflow.notifications`; off unless configured)."""
    from tfmlops_airflow.notifications import run_failed

    return {"owner": "ml-platform", "retries": 1, "retry_delay": retry_delay, "on_failure_callback": [run_failed]}


def model_name(description: str) -> Param:
    return Param("mnist_mlp", type="string", minLength=1, maxLength=100, pattern=NAME_PATTERN, title="Model name",
                 description=description)


def version() -> Param:
    return Param("champion", type="string", minLength=1, maxLength=100, pattern=NAME_PATTERN, title="Version or alias",
                 description="A registered version number (e.g. 3) or an alias (champion, challenger, previous).")


def dataset_uri(purpose: str) -> Param:
    return Param("mnist", type="string", minLength=1, title="Dataset URI",
                 description=f"{purpose}: 'mnist' (bundled, hash-checked), a .npz/.parquet file, TFRecord files "
                             "(a pattern with {split} or a folder); local (relative: under data/, e.g. "
                             "examples/churn.parquet) or s3://bucket/key. A model module with its own "
                             "load_data gets this URI as is.")


def version_dataset_uri(purpose: str) -> Param:
    """The dataset of a step on a registered version: empty = the one the version was trained on."""
    return Param(None, type=["null", "string"], title="Dataset URI",
                 description=f"{purpose}. Empty: the dataset the version was trained on (its run's dataset_uri). "
                             "Else a URI its model module reads (as in tf_offline_retrain's form).")


# the model module contract's default (tfmlops.modelspec.DEFAULT_MODULE; not imported: no TF/MLflow at parse time)
DEFAULT_MODEL_MODULE = "tfmlops_examples.mnist_mlp"
# form fields that override one hyperparameter each (empty: the module's HPARAMS)
HPARAM_FIELDS = ("epochs", "batch_size", "learning_rate")


def model() -> dict[str, Param]:
    """The model module, its hyperparameters and the task-aware gate (empty: the module's ``GATE``)."""
    return {
        "model_module": Param(DEFAULT_MODEL_MODULE, type="string", minLength=1, maxLength=200,
                              pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", title="Model module",
                              description="Dotted path of the model module: a shipped example (tfmlops_examples."
                                          "mnist_mlp, .digits_cnn, .churn, .diabetes, .reviews) or your own "
                                          "models.<file> under include/models/ (allowed packages: "
                                          "TFMLOPS_MODEL_PACKAGES)."),
        "hyperparameters": Param({}, type="object", title="Hyperparameters",
                                 description="JSON object merged over the module's HPARAMS (unknown keys are "
                                             "refused with the known ones), e.g. {\"hidden_units\": [128]}."),
        "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=1000, title="Epochs",
                        description="Training epochs; empty: the module's HPARAMS."),
        "batch_size": Param(None, type=["null", "integer"], minimum=1, maximum=65536, title="Batch size",
                            description="Training batch size; empty: the module's HPARAMS."),
        "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=10, title="Learning rate",
                               description="Optimizer learning rate; empty: the module's HPARAMS."),
        **gate(),
    }


def gate(**descriptions: str) -> dict[str, Param]:
    """The task-aware gate fields, empty meaning the model module's ``GATE`` (a DAG file cannot
    import the module at parse time): all three, or those named, each with the description given
    ("" keeps the training gate's)."""
    fields = {
        "gate_metric": Param(None, type=["null", "string"], maxLength=20, title="Gate metric",
                             description="accuracy or f1_macro (multiclass), auc or accuracy (binary), rmse, mae or "
                                         "r2 (regression); empty: the module's GATE (default: accuracy / auc / "
                                         "rmse by task)."),
        "gate_threshold": Param(None, type=["null", "number"], title="Gate threshold",
                                description="Value the candidate's gate metric must reach, in the metric's unit "
                                            "(a minimum; a maximum for rmse/mae); empty: the module's GATE."),
        "tolerance": Param(None, type=["null", "number"], minimum=0, title="Tolerance vs champion",
                           description="How much worse than the champion (same test data) the candidate may be, in "
                                       "the metric's unit; empty: the module's GATE."),
    }
    for name, text in descriptions.items():
        if text:
            fields[name].description = text
    return {k: v for k, v in fields.items() if not descriptions or k in descriptions}


def hyperparameters(params) -> dict:
    """The run's hyperparameter overrides: the form's JSON object and the single fields that are set
    (a DAG macro: ``{{ hyperparameters(params) }}``)."""
    merged = dict(params.get("hyperparameters") or {})
    merged.update({k: params[k] for k in HPARAM_FIELDS if params.get(k) not in (None, "", "None")})
    return merged


def sample_fraction() -> Param:
    return Param(1.0, type="number", exclusiveMinimum=0, maximum=1, title="Sample fraction",
                 description="Share of the train and test splits to use (1 = all data).")


def targets(description: str = "TF Serving connection ids, rolled one at a time.") -> Param:
    return Param(["tf_serving_default"], type="array", items={"type": "string"}, minItems=1, maxItems=20,
                 title="Target endpoints", description=description)


def partitions() -> dict[str, Param]:
    """Where new labeled data partitions live: ``<root>/<dataset>/incoming/<partition-id>/``."""
    return {
        "root": Param(DEFAULT_PARTITIONS_ROOT, type="string", minLength=1, maxLength=1000, title="Partitions root",
                      description="Local folder or s3://bucket/prefix holding <dataset>/incoming/<partition-id>/."),
        "dataset": Param("mnist_stream", type="string", minLength=1, maxLength=100, pattern=NAME_PATTERN,
                         title="Dataset", description="Dataset name: the folder under the root."),
    }


def rollout(strategy: str = "replace", targets_description: str | None = None) -> dict[str, Param]:
    """The rollout settings (strategy, canary checks, gray, A/B and shadow settings, versions to keep, targets)."""
    return {
        "strategy": Param(strategy, type="string", enum=["replace", "canary", "gray", "ab", "shadow"],
                          title="Rollout strategy",
                          description="replace: load next to the old version, check, switch; "
                                      "canary: stable/canary labels, checks, promote; "
                                      "gray: live traffic shifted step by step to the router's canary group, "
                                      "judged from live metrics and predicted classes, promoted or rolled back by "
                                      "itself; ab: a fixed share of live traffic to the router's canary group for "
                                      "one window, promoted only when significantly more accurate on labeled "
                                      "feedback; shadow: the router's mirrored live requests replayed to the canary "
                                      "group (0 % share, clients never see it), promoted or held on its agreement "
                                      "with the champion, latency and errors."),
        "canary_holdout_uri": Param(None, type=["null", "string"], maxLength=1000, title="Canary holdout",
                                    description="Canary check through the server: .npz with x/y (or x_test/y_test) "
                                                "as float features, or y and one array per input name; local or "
                                                "s3://. Accuracy for classifiers, RMSE for regressors. Empty: no "
                                                "check."),
        "canary_min_accuracy": Param(0.9, type="number", minimum=0, maximum=1, title="Canary minimum accuracy",
                                     description="Accuracy the canary must reach on the canary holdout."),
        "canary_max_rmse": Param(None, type=["null", "number"], minimum=0, title="Canary maximum RMSE",
                                 description="Regression models: RMSE (in the label's unit) the canary may have on "
                                             "the canary holdout; empty: not checked."),
        "latency_budget_ms": Param(250, type="number", exclusiveMinimum=0, maximum=60000,
                                   title="Canary p99 latency budget (ms)",
                                   description="p99 of single-row REST predicts on the canary label."),
        "router": Param("tf_serving_router", type="string", minLength=1, maxLength=250,
                        title="Traffic router (gray, ab, shadow)",
                        description="Connection of the router in front of the stable and canary replica groups."),
        "gray_steps": Param([5, 25, 50, 100], type="array", items={"type": "number", "exclusiveMinimum": 0,
                                                                   "maximum": 100},
                            minItems=1, maxItems=20, title="Gray steps (%)",
                            description="Canary shares of live traffic, increasing, ending at 100."),
        "gray_window_s": Param(60, type="number", minimum=1, maximum=3600, title="Gray watch window (s)",
                               description="How long each share is held and watched."),
        "gray_max_error_rate_increase": Param(0.01, type="number", minimum=0, maximum=1,
                                              title="Gray/A/B/shadow: max error-rate increase",
                                              description="Canary error rate minus stable error rate allowed."),
        "gray_max_p99_increase_ms": Param(25, type="number", minimum=0, maximum=60000,
                                          title="Gray/A/B/shadow: max p99 increase (ms)",
                                          description="Canary p99 minus stable p99 allowed."),
        "gray_max_prediction_tvd": Param(0.1, type="number", minimum=0, maximum=1,
                                         title="Gray: max predicted-class distance",
                                         description="Total variation distance allowed between the canary's and "
                                                     "the stable group's predicted classes in a window (request "
                                                     "logs; a breach also needs chi-square p < 0.001)."),
        "ab_share_pct": Param(50, type="number", exclusiveMinimum=0, exclusiveMaximum=100,
                              title="A/B: challenger share (%)",
                              description="Share of live requests the router sends to the challenger (canary group)."),
        "ab_window_s": Param(600, type="number", minimum=1, maximum=86400, title="A/B window (s)",
                             description="How long the split is held."),
        "ab_alpha": Param(0.05, type="number", exclusiveMinimum=0, maximum=0.5, title="A/B significance level",
                          description="Two-sided two-proportion z-test of the accuracies: the challenger is "
                                      "promoted only when p < alpha and it is the more accurate."),
        "ab_min_samples": Param(200, type="integer", minimum=1, maximum=10_000_000, title="A/B minimum labeled rows",
                                description="Labeled predictions each variant needs; fewer: inconclusive."),
        "ab_labels_uri": Param(DEFAULT_AB_LABELS, type=["null", "string"], maxLength=1000, title="A/B labels",
                               description="Local folder (every *.jsonl below it) or file of labels for the users' "
                                           "request ids: {\"request_id\": ..., \"labels\": [...]} per line."),
        "ab_labels_wait_s": Param(0, type="number", minimum=0, maximum=86400, title="A/B wait for labels (s)",
                                  description="After the window, how long to wait for enough labels to come back."),
        "shadow_window_s": Param(60, type="number", minimum=1, maximum=3600, title="Shadow window (s)",
                                 description="How long mirrored live requests are replayed to the challenger."),
        "shadow_min_agreement": Param(0.99, type="number", minimum=0, maximum=1,
                                      title="Shadow: min top-1 agreement",
                                      description="Share of replayed rows whose top-1 equals the champion's."),
        "shadow_min_compared": Param(50, type="integer", minimum=1, maximum=1000000,
                                     title="Shadow: min compared requests",
                                     description="Fewer compared requests in the window: hold (nothing to judge)."),
        "approval": Param("none", type="string", enum=["none", "before_promote", "before_rollout"],
                          title="Approval",
                          description="before_promote (gray, ab, shadow): a candidate that would be promoted "
                                      "holds (gray: the last step's share under 100 %; ab, shadow: the canary "
                                      "group at 0 %) until a person approves it in Airflow (Required actions); "
                                      "Reject, no answer in time, or champion moved in the registry meanwhile: "
                                      "rolled back. before_rollout (any strategy): a person approves before "
                                      "anything is rolled out. none: no one is asked."),
        "approval_timeout_h": Param(24, type="number", exclusiveMinimum=0, maximum=720,
                                    title="Approval timeout (h)",
                                    description="Hours to wait for an answer; then the default, Reject."),
        "approvers": Param([], type="array", items={"type": "string", "minLength": 1}, maxItems=100,
                           title="Approvers",
                           description="Airflow user ids who may answer the approval; empty: whoever the auth "
                                       "manager lets answer this DAG's required actions."),
        "keep": Param(2, type="integer", minimum=1, maximum=50, title="Versions to keep",
                      description="Version directories kept in the base path (referenced ones are always kept)."),
        "targets": targets(targets_description) if targets_description else targets(),
    }


def rollout_arguments() -> dict[str, str]:
    """``ServingRolloutOperator`` arguments templated from the :func:`rollout` params."""
    return {"model_name": "{{ params.model_name }}", "targets": "{{ params.targets }}",
            "strategy": "{{ params.strategy }}", "holdout_uri": "{{ params.canary_holdout_uri }}",
            "min_accuracy": "{{ params.canary_min_accuracy }}",
            "max_rmse": "{{ params.canary_max_rmse }}", "latency_budget_ms": "{{ params.latency_budget_ms }}",
            "keep": "{{ params.keep }}", "router_conn_id": "{{ params.router }}",
            "gray_steps": "{{ params.gray_steps }}",
            "gray_window_s": "{{ params.gray_window_s }}",
            "max_error_rate_increase": "{{ params.gray_max_error_rate_increase }}",
            "max_p99_increase_ms": "{{ params.gray_max_p99_increase_ms }}",
            "max_prediction_tvd": "{{ params.gray_max_prediction_tvd }}",
            "ab_share_pct": "{{ params.ab_share_pct }}", "ab_window_s": "{{ params.ab_window_s }}",
            "ab_alpha": "{{ params.ab_alpha }}", "ab_min_samples": "{{ params.ab_min_samples }}",
            "ab_labels_uri": "{{ params.ab_labels_uri }}", "ab_labels_wait_s": "{{ params.ab_labels_wait_s }}",
            "shadow_window_s": "{{ params.shadow_window_s }}",
            "shadow_min_agreement": "{{ params.shadow_min_agreement }}",
            "shadow_min_compared": "{{ params.shadow_min_compared }}", "approval": "{{ params.approval }}"}
