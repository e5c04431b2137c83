"""The project's own Airflow settings: section ``[tfmlops]`` of ``airflow.cfg``, or the
environment as ``AIRFLOW__TFMLOPS__<KEY>`` (secrets may come from ``..._SECRET`` / ``..._CMD``
the Airflow way)."""

from __future__ import annotations


def option(key: str, fallback: str = "") -> str:
    """``[tfmlops] <key>``; ``fallback`` when unset or empty."""
    from airflow.configuration import conf

    return conf.get("tfmlops", key, fallback=fallback) or fallback
