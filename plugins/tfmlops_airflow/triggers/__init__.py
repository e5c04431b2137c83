"""Triggers of the provider: :class:`ChampionMovedTrigger` (the registry's champion aliases,
polled) and :class:`ServingApprovalTrigger` (a serving approval's wait, withdrawn when the champion moves)."""

from tfmlops_airflow.triggers.approval import ServingApprovalTrigger
from tfmlops_airflow.triggers.registry import ChampionMovedTrigger

__all__ = ["ChampionMovedTrigger", "ServingApprovalTrigger"]
