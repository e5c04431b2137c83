"""Optimize a registered model version and export it in every format, each verified in its runtime."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from tfmlops_airflow import params
from tfmlops_airflow.notifications import deadline_alert
from tfmlops_airflow.assets import CHAMPION
from tfmlops_airflow.guard import add_run_guard
from tfmlops_airflow.operators.card import ModelCardOperator
from tfmlops_airflow.operators.retrain import ResolveModelVersionOperator
from tfmlops_airflow.operators.optimize import (
    ExportFormatOperator,
    FormatReportOperator,
    MobileBundleOperator,
    OptimizeModelOperator,
)

VARIANTS = ["dynamic_range", "float16", "int8", "qat_int8", "pruned", "pruned_int8", "pruned_qat_int8",
            "distilled"]
FORMATS = ["saved_model", "keras", "h5", "tflite", "onnx", "tfjs_layers", "tfjs_layers_uint8",
           "tfjs_layers_float16", "tfjs_graph"]

DOC = """
### Optimize and export a registered TensorFlow model

For one registered version (a number, or an alias: `champion` by default) of a model in the
MLflow registry — trigger it from **Trigger ▸ with config**. It also runs by itself whenever
`tf_offline_retrain` promotes a new champion (asset `tfmlops_champion`): that run optimizes the
model and version named by the asset event, with the default Params for the rest.

Works on any model module's version (`tf_offline_retrain`'s *Model module*): everything it needs —
task, named inputs, class names, the module's data — comes from the version's recorded model spec.

1. **resolve** — the version, its MLflow run, `models:/<name>/<N>`, its model spec and the dataset
   it was trained on (used when *Dataset URI* is left empty).
2. **optimize** (one task per variant, independent of each other):
   `dynamic_range`, `float16`, `int8` (post-training quantization to TFLite builtin ops; int8 is
   fully integer, calibrated on *int8 sample size* real training rows, a dict by input name),
   `qat_int8` (quantization-aware training), `pruned` (magnitude pruning to the *target sparsity*,
   fine-tuned; fails if the sparsity is not reached), `pruned_int8` (the pruned model quantized to
   full int8 like `int8`; its zeros survive, so it gzips small), `pruned_qat_int8` (the pruned
   model fine-tuned with pruning-preserving QAT, then full int8), `distilled` (the module's
   `build_student` trained on a teacher's outputs: softened by *temperature* and weighted by
   *alpha* for classifiers, MSE to the teacher's values for regressors).
   Each is gated by the task's metric against the float model: accuracy or AUC may drop by at
   most *max accuracy / AUC drop*, RMSE may grow by at most *max RMSE increase*. A variant that
   does not apply to the model — a layer tfmot cannot wrap (`skipped: Normalization not supported
   by tfmot (pruning)`), no `build_student` in the module — is **skipped** with the reason, like one
   not selected, rejected or failed (in the log and in `optimization/<variant>/result.json` on the
   run); it is not exported and the others go on.
3. **export** (one task per artifact): the float model as SavedModel, `.keras`, `.h5`, TFLite,
   ONNX, TF.js layers (float32, uint8, float16 weights) and TF.js graph model, converted from the
   raw signature (named inputs; never the `tf.Example` one); each optimized variant as TFLite.
   Every artifact is loaded back **in the runtime that will use it** — TensorFlow, tf_keras
   (`safe_mode`), LiteRT, onnxruntime, TF.js in Node and in headless Chromium (for the MNIST
   example's shape, a page that classifies a digit drawn on a canvas) — and compared with its
   source on a fixed held-out batch (max |diff| ≤ 1e-5 for float artifacts; quantized ones: the
   predicted class agrees on ≥ *min agreement* of the rows, or a regressor's values stay within
   5 % of the labels' standard deviation), with the task's metric on the test split, size and
   latency. A format whose converter or runtime lacks one of the model's ops or layers is
   **not applicable** (`tflite: needs TF Select ops …: DenseBincount`, `h5: StringLookup keeps
   state …`): the task skips with the reason, recorded for the report and the card. A failed check
   fails its task with the numbers; only verified artifacts are attached to the version's run,
   under `formats/<variant>-<format>/`.
4. **report** — `formats/report/` on the run: a table (format, runtime, bytes, gzipped bytes,
   accuracy, max |diff|, latency per example) as JSON and Markdown, a size-vs-accuracy PNG, and
   `qat_int8` next to post-training `int8` (accuracy drop, bytes, epochs, calibration rows).
5. **mobile bundles** — for `int8` and `float16`, when their TFLite artifact was verified in this
   run: a zip with the flatbuffer carrying TFLite metadata (one entry per named input, the
   module's declared client-side normalization, labels for classifiers — what Android Studio's ML
   binding and the LiteRT support library read), `labels.txt` (classifiers), `io.json`, Gradle +
   Kotlin (LiteRT) and Podfile + Swift snippets typed from the model's inputs; each is run from its
   own files in LiteRT against the registered model, then attached under `mobile/<variant>/`.
6. **model card** — the version's card rewritten with every verified format (size, latency,
   accuracy) and the variants' gate results (see `tf_offline_retrain`).
7. **watcher** — the run guard (`tfmlops_airflow.guard`), once every task has finished. The report,
   the bundles and the card run whatever happened before them (without a version resolved they
   skip), so it is the guard that fails the run when a task failed or did not run because of a
   failure, with a message naming each failed task and its error (`resolve failed: registered
   model 'x' has no alias 'champion'`). A variant skipped as in 2. (not selected, rejected, or not
   built for this model) and a format not selected leave the run green.

Connections: `mlflow_default`, `aws_default` (for `s3://` datasets). Needs `node` with
`web/node_modules` (`npm ci --prefix web`) and Debian's `chromium` for the TF.js checks.
"""

PARAMS = {
    "model_name": params.model_name("Registered model name in MLflow."),
    "version": params.version(),
    "variants": Param(VARIANTS, type="array", items={"type": "string", "enum": VARIANTS}, uniqueItems=True,
                      title="Variants", description="Optimized variants to build, gate and export as TFLite."),
    "formats": Param(FORMATS, type="array", items={"type": "string", "enum": FORMATS}, uniqueItems=True,
                     title="Formats", description="Formats to export the float model in."),
    "dataset_uri": params.version_dataset_uri("Data for calibration, fine-tuning and the checks"),
    "sample_fraction": params.sample_fraction(),
    "int8_samples": Param(200, type="integer", minimum=10, maximum=5000, title="int8 sample size",
                          description="Training rows used to calibrate the full-integer (int8) quantization."),
    "target_sparsity": Param(None, type=["null", "number"], minimum=0.05, maximum=0.99,
                             title="Pruning target sparsity",
                             description="Share of kernel weights set to zero; the pruned variant fails below it. "
                                         "Empty: the model module's OPTIMIZE, else 0.8."),
    "pruning_epochs": Param(None, type=["null", "integer"], minimum=1, maximum=100, title="Pruning epochs",
                            description="Fine-tuning epochs while pruning. Empty: the model module's OPTIMIZE, "
                                        "else 4."),
    "qat_epochs": Param(None, type=["null", "integer"], minimum=1, maximum=100, title="QAT epochs",
                        description="Quantization-aware fine-tuning epochs of the qat_int8 variants. Empty: the "
                                    "model module's OPTIMIZE, else 2."),
    "teacher": Param("trained", type="string", enum=["trained", "source"], title="Distillation teacher",
                     description="'trained': the model module's build_teacher trained here (the MNIST example: "
                                 "an MLP 256-128; a module without one: the version itself); 'source': the "
                                 "version being optimized (e.g. the champion)."),
    "temperature": Param(4.0, type="number", exclusiveMinimum=0, maximum=50, title="Distillation temperature",
                         description="Softens the teacher's and student's distributions."),
    "alpha": Param(0.1, type="number", minimum=0, maximum=1, title="Distillation alpha",
                   description="Weight of the hard-label loss (1 - alpha goes to the teacher's soft targets)."),
    "distill_epochs": Param(None, type=["null", "integer"], minimum=1, maximum=200, title="Distillation epochs",
                            description="Epochs of student training. Empty: the model module's OPTIMIZE, else 15."),
    "max_accuracy_drop": Param(0.01, type="number", minimum=0, maximum=1, title="Max accuracy / AUC drop",
                               description="Gate of a classifier's variants: at most this much test accuracy "
                                           "(multiclass) or AUC (binary) lost vs the float model (0.01 = 1 "
                                           "percentage point)."),
    "max_rmse_increase": Param(0.05, type="number", minimum=0, maximum=10, title="Max RMSE increase",
                               description="Gate of a regressor's variants: test RMSE may grow by at most this "
                                           "share of the float model's (0.05 = 5 %)."),
    "min_agreement": Param(0.99, type="number", minimum=0.5, maximum=1, title="Min argmax agreement",
                           description="Check of quantized artifacts: share of the held-out batch whose predicted "
                                       "class matches the float model."),
}

with DAG(
    dag_id="tf_optimize_export",
    description="Quantize / prune / distill a registered version; export every format, verified in its runtime",
    doc_md=DOC,
    schedule=[CHAMPION],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    render_template_as_native_obj=True,
    tags=["tensorflow", "optimization", "export", "mlflow", "tfjs"],
    default_args=params.default_args(timedelta(minutes=1)),
    deadline=deadline_alert("TFMLOPS_OPTIMIZE_DEADLINE_MIN", default_minutes=120),  # late: deadline_missed
) as dag:
    data = {"dataset_uri": "{{ params.dataset_uri }}", "sample_fraction": "{{ params.sample_fraction }}"}

    resolve = ResolveModelVersionOperator(task_id="resolve", task_display_name="Resolve model version",
                                          model_name="{{ params.model_name }}", version="{{ params.version }}")
    model = {"model": resolve.output}
    check = {"max_abs_diff": 1e-5, "min_agreement": "{{ params.min_agreement }}"}

    exports = [
        ExportFormatOperator(task_id=f"export_float_{fmt}", task_display_name=f"Export {fmt}", variant="float",
                             fmt=fmt, formats="{{ params.formats }}", **model, **check, **data)
        for fmt in FORMATS
    ]
    for variant in VARIANTS:
        optimize = OptimizeModelOperator(
            task_id=f"optimize_{variant}", task_display_name=f"Optimize: {variant}", variant=variant,
            variants="{{ params.variants }}", int8_samples="{{ params.int8_samples }}",
            target_sparsity="{{ params.target_sparsity }}", pruning_epochs="{{ params.pruning_epochs }}",
            qat_epochs="{{ params.qat_epochs }}",
            teacher="{{ params.teacher }}", temperature="{{ params.temperature }}", alpha="{{ params.alpha }}",
            distill_epochs="{{ params.distill_epochs }}", max_accuracy_drop="{{ params.max_accuracy_drop }}",
            max_rmse_increase="{{ params.max_rmse_increase }}",
            **model, **data)
        export = ExportFormatOperator(task_id=f"export_{variant}_tflite", task_display_name=f"Export {variant} TFLite",
                                      variant=variant, fmt="tflite", **model, **check, **data)
        optimize >> export
        exports.append(export)

    mobile = MobileBundleOperator(task_id="mobile_bundles", task_display_name="Mobile bundles (int8, float16)",
                                  targets=["int8", "float16"], **model, **data)
    [e for e in exports if e.task_id in ("export_int8_tflite", "export_float16_tflite")] >> mobile
    exports.append(mobile)

    report = FormatReportOperator(task_id="report", task_display_name="Trade-off report", **model, **data)
    card = ModelCardOperator(task_id="model_card", task_display_name="Model card",
                             model_name=resolve.output["model_name"], version=resolve.output["version"])
    exports >> report >> card
    add_run_guard(dag)  # last: it watches every task above
