"""Deployment: drive any TensorFlow Serving (the real one or ``tf-serving-local``) from outside.

Only documented TF Serving mechanisms are used: version directories in a model's base path,
the ``ModelServerConfig`` file and ``HandleReloadConfigRequest``, and the status/predict APIs.
No Airflow import; MLflow only in :mod:`tfmlops.steps.rollout`, the step that needs it.

``client`` (REST + gRPC client), ``endpoint`` (one replica), ``publish`` (version directories,
local or S3), ``model_config`` (config edits and reloads), ``status`` (version states, waits),
``checks`` (smoke parity, holdout accuracy, latency), ``locking`` (one rollout at a time per
endpoint), ``rollout`` (the replace / canary state machine), ``fleet`` (docker SDK replicas),
``errors`` (the rollout error types), ``live_metrics`` (the replicas' own metrics: scraped, or
from a Prometheus server), ``router`` (the HAProxy traffic router in front of replica groups),
``progressive`` (gray release on live traffic through the router), ``prediction_logs`` (logged
predictions per window, the predicted-class distribution check), ``abtest`` (A/B test through the
router, decided on labeled feedback).
"""
