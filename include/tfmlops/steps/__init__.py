"""The steps layer: what the Airflow operators call, one module per DAG family (like a TFX
component's executor). Each step takes URIs and small configs and returns a small JSON-able dict.

======================  =============================================================
module                  DAGs
======================  =============================================================
``retrain``             ``tf_offline_retrain`` (and resolve / export / register for all)
``optimize``            ``tf_optimize_export``
``rollout``             ``tf_serving_rollout`` and the rollout task of the retraining DAGs
``online``              ``tf_online_update``
``monitor``             ``tf_model_monitor``
``simulate``            ``tf_data_simulator`` (demo data)
======================  =============================================================

Importing a step module is cheap: TensorFlow is imported inside the steps that need it.
"""
