"""Operators of the optimization / multi-format export steps, thin wrappers over
``tfmlops.formats.pipeline`` (TensorFlow, tfmot, tf2onnx, tensorflowjs and MLflow are imported
inside ``execute``, never at DAG parse time).

- :class:`OptimizeModelOperator` — one variant (quantization, pruning, distillation), gated
  against the float model. A variant that is not selected, rejected by the gate or that failed
  skips this task (and its export) with the reason; it never fails the other variants.
- :class:`ExportFormatOperator` — one (variant, format) artifact, verified in its runtime;
  a failed check fails the task with the numbers (no retry: it is deterministic) and the
  artifact is not attached to the run.
- :class:`FormatReportOperator` — the trade-off report of the run (JSON, Markdown, PNG).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfmlops_airflow.hooks import MLflowHook
from tfmlops_airflow.operators import DATA_FIELDS, _DatasetOperator

MODEL_FIELDS = ("model_name", "version", "run_id", "model_uri")


class _ModelVersionOperator(_DatasetOperator):
    """Arguments shared by the steps that work on one resolved model version."""

    template_fields: Sequence[str] = (*DATA_FIELDS, *MODEL_FIELDS)

    def __init__(self, *, model_name: str, version: int | str, run_id: str, model_uri: str, **kwargs):
        super().__init__(**kwargs)
        self.model_name = model_name
        self.version = version
        self.run_id = run_id
        self.model_uri = model_uri

    @cached_property
    def model(self) -> dict:
        return {"model_name": self.model_name, "version": int(self.version), "run_id": self.run_id,
                "model_uri": self.model_uri}


class OptimizeModelOperator(_ModelVersionOperator):
    """Build one optimized ``variant`` and gate it (accuracy drop vs the float model)."""

    template_fields: Sequence[str] = (*DATA_FIELDS, *MODEL_FIELDS, "variants", "int8_samples", "target_sparsity",
                                      "pruning_epochs", "temperature", "alpha", "distill_epochs", "teacher",
                                      "max_accuracy_drop")

    def __init__(self, *, variant: str, variants: list[str] | str | None = None, int8_samples: int | str = 200,
                 target_sparsity: float | str = 0.8, pruning_epochs: int | str = 2, temperature: float | str = 4.0,
                 alpha: float | str = 0.1, distill_epochs: int | str = 3, teacher: str = "trained",
                 max_accuracy_drop: float | str = 0.01, **kwargs):
        super().__init__(**kwargs)
        self.variant = variant
        self.variants = variants
        self.int8_samples = int8_samples
        self.target_sparsity = target_sparsity
        self.pruning_epochs = pruning_epochs
        self.temperature = temperature
        self.alpha = alpha
        self.distill_epochs = distill_epochs
        self.teacher = teacher
        self.max_accuracy_drop = max_accuracy_drop

    def execute(self, context) -> dict[str, Any]:
        if self.variants is not None and self.variant not in list(self.variants):
            raise AirflowSkipException(f"variant {self.variant} not selected ({list(self.variants)})")
        from tfmlops.formats.pipeline import optimize_variant
        from tfmlops.optimize import OptimizeConfig

        config = OptimizeConfig(int8_samples=int(self.int8_samples), target_sparsity=float(self.target_sparsity),
                                pruning_epochs=int(self.pruning_epochs), temperature=float(self.temperature),
                                alpha=float(self.alpha), distill_epochs=int(self.distill_epochs),
                                teacher=str(self.teacher), max_accuracy_drop=float(self.max_accuracy_drop),
                                seed=int(self.seed))
        result = optimize_variant(self.tracking_uri, self.model, self.variant, self.data_spec(), config,
                                  stamp=context["run_id"])
        if result["status"] != "passed":
            raise AirflowSkipException(f"variant {self.variant} {result['status']}: {result['reason']}")
        return result


class ExportFormatOperator(_ModelVersionOperator):
    """Export ``variant`` (``float`` = the registered model) as ``fmt`` and verify it in its runtime."""

    template_fields: Sequence[str] = (*DATA_FIELDS, *MODEL_FIELDS, "formats", "max_abs_diff", "min_agreement")

    def __init__(self, *, variant: str, fmt: str, formats: list[str] | str | None = None,
                 max_abs_diff: float | str = 1e-5, min_agreement: float | str = 0.99, **kwargs):
        super().__init__(**kwargs)
        self.variant = variant
        self.fmt = fmt
        self.formats = formats
        self.max_abs_diff = max_abs_diff
        self.min_agreement = min_agreement

    def execute(self, context) -> dict[str, Any]:
        if self.formats is not None and self.fmt not in list(self.formats):
            raise AirflowSkipException(f"format {self.fmt} not selected ({list(self.formats)})")
        from tfmlops.formats.pipeline import export_format
        from tfmlops.formats.runtimes import RuntimeUnavailable
        from tfmlops.formats.verify import FormatCheckError

        try:
            row = export_format(self.tracking_uri, self.model, self.variant, self.fmt, self.data_spec(),
                                float(self.max_abs_diff), float(self.min_agreement), stamp=context["run_id"])
        except (FormatCheckError, RuntimeUnavailable) as exc:
            raise AirflowFailException(str(exc)) from exc
        return {k: v for k, v in row.items() if k != "checks"} | {
            "checks": [{k: v for k, v in c.items() if k != "details"} for c in row["checks"]]}


class FormatReportOperator(_ModelVersionOperator):
    """The run's trade-off report (runs whatever its upstream tasks did: ``trigger_rule=all_done``)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)

    def execute(self, context) -> dict[str, Any]:
        from tfmlops.formats.pipeline import report

        return report(self.tracking_uri, self.model, stamp=context["run_id"])
