"""Triggers of the provider: :class:`ChampionMovedTrigger` (the registry's champion aliases, polled)."""

from tfmlops_airflow.triggers.registry import ChampionMovedTrigger

__all__ = ["ChampionMovedTrigger"]
