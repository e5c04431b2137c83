"""The model card operator, a thin wrapper over :func:`tfmlops.steps.card.write_model_card` (MLflow is
imported inside ``execute``). It ends ``tf_offline_retrain`` (after the rollout: the card records a
promotion or a rollback) and ``tf_optimize_export`` (after the report: the card lists the verified
formats)."""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfmlops_airflow.operators.base import TFMLOpsBaseOperator, optional


class ModelCardOperator(TFMLOpsBaseOperator):
    """Write the model card of a registered version (Markdown, HTML and JSON under ``model_card/`` on
    its run; version tag ``model_card``; a link in its description) from what MLflow recorded.

    It runs whatever its upstream tasks did (``trigger_rule=all_done``), so a rolled-back rollout is
    on the card too; without a version (the gate rejected the candidate, nothing was registered) it
    skips, and an unknown version fails the task without retry.

    :param model_name: registered model name. (templated)
    :param version: version number or alias; unset skips. (templated)
    """

    template_fields: Sequence[str] = ("model_name", "version")

    def __init__(self, *, model_name: str, version: int | str | None, **kwargs):
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.model_name = model_name
        self.version = version

    def execute(self, context) -> dict[str, Any]:
        if optional(self.version) is None:
            raise AirflowSkipException("no registered version to describe (nothing was registered in this run)")
        from tfmlops.steps.card import write_model_card

        try:
            return write_model_card(self.tracking_uri, str(self.model_name), self.version)
        except LookupError as exc:
            raise AirflowFailException(str(exc)) from exc
