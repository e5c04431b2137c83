"""Operators of ``tf_optimize_export``: thin wrappers over :mod:`tfmlops.steps.optimize`
(TensorFlow, tfmot, tf2onnx, tensorflowjs and MLflow are imported inside ``execute``).

- :class:`OptimizeModelOperator` — one variant (quantization, pruning, distillation), gated
  against the float model. A variant that is not selected, rejected by the gate or that failed
  skips this task (and its export) with the reason; it never fails the other variants.
- :class:`ExportFormatOperator` — one (variant, format) artifact, verified in its runtime;
  a failed check fails the task with the numbers (no retry: it is deterministic) and the
  artifact is not attached to the run.
- :class:`MobileBundleOperator` — a mobile bundle (zip) per target whose TFLite artifact this run
  verified, smoke-run from its own files.
- :class:`FormatReportOperator` — the trade-off report of the run (JSON, Markdown, PNG).

Each takes ``model``: the registered version as ``ResolveModelVersionOperator`` returns it
(``model_name``, ``version``, ``run_id``, ``model_uri``), e.g. ``resolve.output``.
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tfmlops_airflow.operators.base import DATA_FIELDS, DatasetOperator, id_list, number_or_none, optional


class ModelVersionOperator(DatasetOperator):
    """A step on one resolved model version, with the dataset.

    :param model: the resolved version (``model_name``, ``version``, ``run_id``, ``model_uri``, and the
        ``model_spec`` and ``dataset_uri`` it was trained with). (templated)
    """

    template_fields: Sequence[str] = (*DATA_FIELDS, "model")

    def __init__(self, *, model: dict | str, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def resolved(self) -> dict:
        """The resolved version; skips the task when there is none (``resolve`` did not succeed: only
        the tasks that run after failures get here, and the run guard reports the failure)."""
        if optional(self.model) is None:
            raise AirflowSkipException("no resolved model version (resolve did not succeed in this run)")
        keys = ("model_name", "version", "run_id", "model_uri")
        return {**{k: self.model[k] for k in keys}, "version": int(self.model["version"]),
                "model_spec": self.model.get("model_spec"), "dataset_uri": self.model.get("dataset_uri")}

    def data_spec(self):
        """The form's dataset, or (left empty) the one the version was trained on."""
        spec = super().data_spec()
        uri = optional(self.dataset_uri) or (optional(self.model) or {}).get("dataset_uri") or "mnist"
        spec.uri, spec.s3_client = str(uri), self.s3_client_for(uri)
        return spec


class OptimizeModelOperator(ModelVersionOperator):
    """Build one optimized ``variant`` and gate it by the task's metric vs the float model (accuracy or
    AUC drop, RMSE increase). A variant that does not apply to the model (a layer tfmot cannot wrap,
    no ``build_student`` in the model module) skips with the reason.

    :param variant: ``dynamic_range``, ``float16``, ``int8``, ``qat_int8``, ``pruned``, ``pruned_int8``,
        ``pruned_qat_int8`` or ``distilled``.
    :param variants: the variants selected in this run; another variant skips. (templated)
    :param int8_samples: training rows calibrating the int8 quantization. (templated)
    :param target_sparsity: share of kernel weights pruned to zero; unset: the model module's
        ``OPTIMIZE``, else 0.8. (templated)
    :param pruning_epochs: fine-tuning epochs while pruning; unset: the module's ``OPTIMIZE``, else 4. (templated)
    :param qat_epochs: quantization-aware fine-tuning epochs (``qat_int8``, ``pruned_qat_int8``); unset: the
        module's ``OPTIMIZE``, else 2. (templated)
    :param temperature: distillation temperature. (templated)
    :param alpha: weight of the hard-label loss in distillation. (templated)
    :param distill_epochs: epochs of student training; unset: the module's ``OPTIMIZE``, else 15. (templated)
    :param teacher: ``trained`` (the module's ``build_teacher`` trained here) or ``source`` (the version
        itself). (templated)
    :param max_accuracy_drop: accuracy or AUC a variant may lose vs the float model. (templated)
    :param max_rmse_increase: regression: share of the float model's RMSE a variant may add. (templated)
    """

    template_fields: Sequence[str] = (*ModelVersionOperator.template_fields, "variants", "int8_samples",
                                      "target_sparsity", "pruning_epochs", "qat_epochs", "temperature", "alpha",
                                      "distill_epochs", "teacher", "max_accuracy_drop", "max_rmse_increase")

    def __init__(self, *, variant: str, variants: list[str] | str | None = None, int8_samples: int | str = 200,
                 target_sparsity: float | str | None = None, pruning_epochs: int | str | None = None,
                 qat_epochs: int | str | None = None, temperature: float | str = 4.0, alpha: float | str = 0.1,
                 distill_epochs: int | str | None = None,
                 teacher: str = "trained", max_accuracy_drop: float | str = 0.01,
                 max_rmse_increase: float | str = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.variant = variant
        self.variants = variants
        self.int8_samples = int8_samples
        self.target_sparsity = target_sparsity
        self.pruning_epochs = pruning_epochs
        self.qat_epochs = qat_epochs
        self.temperature = temperature
        self.alpha = alpha
        self.distill_epochs = distill_epochs
        self.teacher = teacher
        self.max_accuracy_drop = max_accuracy_drop
        self.max_rmse_increase = max_rmse_increase

    def execute(self, context) -> dict[str, Any]:
        if optional(self.variants) is not None and self.variant not in id_list(self.variants):
            raise AirflowSkipException(f"variant {self.variant} not selected ({id_list(self.variants)})")
        from tfmlops.steps.optimize import optimize_variant

        def whole(value):
            value = number_or_none(value)
            return None if value is None else int(value)

        # unset (None): the model module's OPTIMIZE, else the platform's default
        config = {"int8_samples": int(self.int8_samples), "target_sparsity": number_or_none(self.target_sparsity),
                  "pruning_epochs": whole(self.pruning_epochs), "qat_epochs": whole(self.qat_epochs),
                  "temperature": float(self.temperature), "alpha": float(self.alpha),
                  "distill_epochs": whole(self.distill_epochs), "teacher": str(self.teacher),
                  "max_accuracy_drop": float(self.max_accuracy_drop),
                  "max_rmse_increase": float(self.max_rmse_increase), "seed": int(self.seed)}
        result = optimize_variant(self.tracking_uri, self.resolved(), self.variant, self.data_spec(), config,
                                  stamp=context["run_id"])
        if result["status"] != "passed":
            raise AirflowSkipException(f"variant {self.variant} {result['status']}: {result['reason']}")
        return result


class ExportFormatOperator(ModelVersionOperator):
    """Export ``variant`` (``float`` = the registered model) as ``fmt`` and verify it in its runtime.
    A format the model's ops or layers do not allow (the converter or the runtime lacks them) skips
    the task with ``not applicable: <what>``; the record stays on the run for the report and card.

    :param variant: ``float`` or an optimized variant (whose candidate an optimize task logged).
    :param fmt: the format (``saved_model``, ``keras``, ``h5``, ``tflite``, ``onnx``, ``tfjs_*``).
    :param formats: the formats selected in this run; another format skips. (templated)
    :param max_abs_diff: float artifacts: largest difference allowed vs the source model. (templated)
    :param min_agreement: quantized artifacts: share of argmax agreement required. (templated)
    """

    template_fields: Sequence[str] = (*ModelVersionOperator.template_fields, "formats", "max_abs_diff",
                                      "min_agreement")

    def __init__(self, *, variant: str, fmt: str, formats: list[str] | str | None = None,
                 max_abs_diff: float | str = 1e-5, min_agreement: float | str = 0.99, **kwargs):
        super().__init__(**kwargs)
        self.variant = variant
        self.fmt = fmt
        self.formats = formats
        self.max_abs_diff = max_abs_diff
        self.min_agreement = min_agreement

    def execute(self, context) -> dict[str, Any]:
        if optional(self.formats) is not None and self.fmt not in id_list(self.formats):
            raise AirflowSkipException(f"format {self.fmt} not selected ({id_list(self.formats)})")
        from tfmlops.steps.optimize import FormatCheckError, RuntimeUnavailable, export_format

        try:
            row = export_format(self.tracking_uri, self.resolved(), self.variant, self.fmt, self.data_spec(),
                                float(self.max_abs_diff), float(self.min_agreement), stamp=context["run_id"])
        except (FormatCheckError, RuntimeUnavailable) as exc:
            raise AirflowFailException(str(exc)) from exc
        if row.get("status") == "not_applicable":
            raise AirflowSkipException(f"{row['artifact']} not applicable: {row['reason']}")
        return {k: v for k, v in row.items() if k != "checks"} | {
            "checks": [{k: v for k, v in c.items() if k != "details"} for c in row["checks"]]}


class MobileBundleOperator(ModelVersionOperator):
    """A mobile bundle per target (TFLite with metadata, labels, I/O description, Kotlin and Swift
    snippets) for each target variant whose TFLite artifact passed its check in this run; each
    bundle is run from its own files against the registered model and logged under ``mobile/``.
    Runs whatever its upstream tasks did (``trigger_rule=all_done``): no verified target skips; a
    bundle that fails its smoke run fails the task with the numbers (no retry: deterministic).

    :param targets: the variants to bundle (``int8``, ``float16``). (templated)
    """

    template_fields: Sequence[str] = (*ModelVersionOperator.template_fields, "targets")

    def __init__(self, *, targets: list[str] | str = ("int8", "float16"), **kwargs):
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.targets = targets

    def execute(self, context) -> dict[str, Any]:
        model = self.resolved()
        from tfmlops.steps.optimize import MobileBundleError, mobile_bundles

        try:
            result = mobile_bundles(self.tracking_uri, model, self.data_spec(), id_list(self.targets),
                                    stamp=context["run_id"])
        except MobileBundleError as exc:
            raise AirflowFailException(str(exc)) from exc
        if not result["bundles"]:
            raise AirflowSkipException(f"no verified TFLite artifact of {result['missing']} in this run")
        return result


class FormatReportOperator(ModelVersionOperator):
    """The run's trade-off report (runs whatever its upstream tasks did: ``trigger_rule=all_done``)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)

    def execute(self, context) -> dict[str, Any]:
        model = self.resolved()
        from tfmlops.steps.optimize import report

        return report(self.tracking_uri, model, stamp=context["run_id"])
