"""Operators: one module per DAG family, each operator a thin wrapper over one step of
:mod:`tfmlops.steps` (``template_fields``, a short ``execute`` that delegates, ``:param:`` docs).

``base`` holds what they share: connection ids and hooks, serving endpoints from targets, the
coercion of templated values. Outcomes map to Airflow precisely: bad data → fail without retry,
gate rejection → skip, busy → retry, rollback → fail with the reason.
"""
