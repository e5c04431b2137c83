"""Roll a registered MLflow version out to TF Serving: replace, canary, gray, A/B or shadow; promote or roll back."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from tfmlops_airflow import params
from tfmlops_airflow.chains import serving_release
from tfmlops_airflow.operators.retrain import ResolveModelVersionOperator
from tfmlops_airflow.operators.rollout import PublishServingVersionOperator

DOC = """
### Rolling version update of a TensorFlow Serving model

Puts a registered MLflow model version (a number, or an alias such as `champion` /
`challenger`) into TF Serving without dropping a request, and takes it back out by itself when
it is bad. Run it from **Trigger ▸ with config**; daily it reconciles serving with `champion`.

1. **resolve** — version number or alias → registered version *N* and its `serving/` artifact.
2. **publish** — the SavedModel becomes version *N* in every target's base path: local /
   shared volume via a temp directory + atomic rename; `s3://` with `saved_model.pb` uploaded
   last plus a completion marker. Re-running is a no-op (content hash); numbers are never reused.
3. **approve_rollout** — only with **Approval** `before_rollout` (any strategy): a person answers
   on this task's *Required Action* tab (gate figures, links; Approve / Reject and a note) before
   anything is rolled out; rejected, no answer within **Approval timeout (h)**, or `champion`
   moved meanwhile: the rollout and what follows are skipped, the decision kept on the version.
   Skipped otherwise (it waits outside the rollout pool: nothing is held meanwhile).
4. **rollout** — one endpoint at a time (capacity never drops below all-but-one):
   - `replace`: *N* is loaded next to the old version, checked (REST + gRPC predictions equal to
     the registered model's), then the policy goes to `latest` and the old version unloads;
   - `canary`: versions {old, *N*}, labels `stable`→old and `canary`→*N*; checks through the
     `canary` label (smoke parity, accuracy on the holdout, p99 latency budget); promote =
     `stable`→*N*, then old is dropped.
   - `gray` (live traffic, through the traffic router `router`): *N* is rolled onto the
     router's canary replica group at 0 %, then the canary group gets `gray_steps` % of the
     clients' requests (default 5 → 25 → 50 → 100), each held `gray_window_s`; after each window
     its error rate and p99 (from the replicas' TF Serving metrics) and its predicted classes (from
     the request logs, users' requests only; `gray_max_prediction_tvd`) are compared with the
     stable group's, and a canary replica the router marks down ends the step at once. A breach puts the
     share back to 0 % and the canary group back on the old version; all steps passed → *N* is
     rolled onto the stable group. Each step's numbers are `gray.*` metrics of the version's run,
     with a chart (`serving/gray_v<N>.png`). `targets` are not used: the groups are the router's.
   - `ab` (A/B test, through the router): *N* on the canary group, `ab_share_pct` % of the
     clients' requests on it for `ab_window_s`; each variant's logged predictions are joined with
     the labels that came back for their request ids (`ab_labels_uri`), and the accuracies are
     compared (two-proportion z-test, `ab_alpha`, at least `ab_min_samples` labeled rows each).
     Only a significant win promotes *N* (champion); a challenger that breaks (errors, p99, down)
     fails the task; a test not won (champion better, or no significant difference) skips it —
     either way the canary group goes back to the champion. Numbers: `ab.*` metrics and
     `serving/ab_v<N>.json` on the version's run.
   - `shadow` (live traffic, no client exposed): *N* is rolled onto the router's canary group at
     0 %; for `shadow_window_s` the requests the router's mirror samples (its sink's latest
     records, each with the champion's answer) are replayed to *N*, whose answers nobody gets;
     top-1 agreement with the champion's answer to the same request (≥ `shadow_min_agreement`
     over ≥ `shadow_min_compared` requests), and its error rate and p99 against the stable
     group's (the gray thresholds), decide **promote** (*N* rolled onto the stable group) or
     **hold** (canary group back on the old version, the task fails with the reasons). The
     numbers are `shadow.*` metrics of the version's run, the report `serving/shadow_v<N>.json`.
     The router connection's extra names the sink (`mirror_sink`); with `mirror_log_prefix` it
     also names where the sink writes each group's request logs, which `gray` and `ab` then read.
   A failed check, a version that fails to load (state END) or any error rolls back every
   endpoint touched (config back to the old version only), moves the MLflow aliases back and
   fails the task with the reason (also in the `serving.reason` tag of the version).
   On success: `champion`→*N* (the old one becomes `previous`), `serving.*` tags, and version
   directories beyond **keep** are retired once nothing references them.

5. **approve** — only with **Approval** `before_promote` (`gray`, `ab`, `shadow`): a release that
   would promote holds instead (gray: its last step under 100 %; ab, shadow: *N* on the canary
   group at 0 %) and a person answers on this task's *Required Action* tab (gate figures, live
   numbers, links; Approve / Reject and a note), within **Approval timeout (h)** (no answer:
   Reject); `champion` moved in MLflow meanwhile withdraws it. Skipped otherwise.
6. **conclude** — acts on the answer: promote (all traffic, `champion`) or roll back (share 0 %,
   canary group restored), the decision and note on the version. Skipped without an approval.

With `replace`/`canary`, clients should address the `stable` label (unversioned requests go to
the highest loaded version); with `gray`, `ab` and `shadow`, clients use the router's address.
Rollouts never interleave: each locks every endpoint's config file for its whole run, and the
rollout tasks of every DAG share the `tf_serving_rollout` pool (1 slot); `max_active_runs=1`.
Connections: `mlflow_default`, the target TF Serving connections (`tf_serving_default`),
`aws_default` for `s3://` base paths and holdouts. Target `docker:<fleet>` = the
`tensorflow/serving` containers of a docker SDK fleet.
"""

PARAMS = {
    "model_name": params.model_name("Registered model name in MLflow = served model name."),
    "version": params.version(),
    **params.rollout(targets_description="TF Serving connection ids, rolled one at a time, "
                                         "or docker:<fleet> for a docker SDK fleet."),
}

with DAG(
    dag_id="tf_serving_rollout",
    description="Registered MLflow version → TF Serving: safe publish, replace/canary/gray/A-B, promote or roll back",
    doc_md=DOC,
    schedule=None,  # tf_serving_reconcile starts it when @champion and what is served differ
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,  # no schedule: unpaused, so the runs tf_serving_reconcile starts run
    params=PARAMS,
    render_template_as_native_obj=True,
    tags=["tensorflow", "serving", "rollout", "mlflow"],
    default_args=params.default_args(timedelta(seconds=30)),
) as dag:
    # resolve runs in the rollout pool too (publish and rollout are in it by default): an alias such
    # as champion is read only once the previous rollout, which may move it, has finished.
    resolve = ResolveModelVersionOperator(task_id="resolve", task_display_name="Resolve version",
                                          model_name="{{ params.model_name }}", version="{{ params.version }}",
                                          pool=params.ROLLOUT_POOL)
    publish = PublishServingVersionOperator(task_id="publish", task_display_name="Publish SavedModel",
                                            model_name="{{ params.model_name }}", targets="{{ params.targets }}",
                                            version=resolve.output["version"])
    roll, _ = serving_release(resolve.output["version"], "Roll out, promote or roll back",
                              reason="{{ dag_run.conf.get('reason') or 'rollout' }}")
    resolve >> publish >> roll
