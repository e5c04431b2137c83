"""Model optimization: post-training quantization (TFLite), magnitude pruning, distillation.

Each *variant* is built from the float tf_keras model and gated against it:

- ``dynamic_range`` — TFLite, weights int8, activations float (``Optimize.DEFAULT``);
- ``float16`` — TFLite, weights float16;
- ``int8`` — TFLite, full integer: int8 weights, activations, input and output
  (``TFLITE_BUILTINS_INT8``), calibrated on a representative sample of real training rows;
- ``pruned`` — magnitude pruning with tensorflow-model-optimization (PolynomialDecay to a target
  sparsity, fine-tuning with its callbacks, ``strip_pruning``); the measured sparsity of the
  Dense kernels must reach the target, else :class:`OptimizationError`;
- ``pruned_int8`` — the pruned (stripped) model, then full-int8 post-training quantization with
  the same representative rows as ``int8``; the zeros survive quantization (symmetric int8
  weights, zero point 0), so the flatbuffer compresses well — its int8 weight sparsity must
  still reach the target;
- ``qat_int8`` — quantization-aware training: tensorflow-model-optimization's ``quantize_model``
  wraps a copy of the float model in fake-quantization layers (int8 weights per channel, int8
  activations with learned ranges), fine-tunes it for ``qat_epochs``, and the converter turns it
  into a full-int8 TFLite flatbuffer (int8 input and output, like ``int8``) from the ranges it
  learned — no calibration rows. The Keras model kept with it (the source its format check
  compares with) is the float model with the fine-tuned weights, as plain Dense layers;
- ``pruned_qat_int8`` — pruning-preserving quantization-aware training: the ``pruned`` model
  fine-tuned with tfmot's ``Default8BitPrunePreserveQuantizeScheme`` (fake int8 quantization that
  keeps the zeros), then full int8 like ``qat_int8``; its int8 weight sparsity must still reach the
  target, like ``pruned_int8``'s;
- ``distilled`` — a student (the seed MLP by default) trained on a teacher's softened outputs
  (temperature, alpha) by :class:`Distiller`, a ``keras.Model`` with its own ``train_step``;
  the teacher is a larger MLP trained here, or a given model (e.g. the current champion).

A variant passes when its test accuracy (measured in LiteRT for the TFLite variants) is not
lower than the float model's by more than ``max_accuracy_drop``. :func:`optimize` builds every
requested variant and reports each as ``passed``, ``rejected`` (gate) or ``failed`` (error):
one variant's failure never stops the others. Importing this module imports TensorFlow.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

import tfmlops  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf
import tf_keras as keras

from tfmlops import models
from tfmlops.trainer import compile_by_task, inputs_for, labels_for
from tfmlops.evaluation import GateDecision
from tfmlops.formats import QUANTIZATIONS, VARIANTS

log = logging.getLogger(__name__)

TEACHERS = ("trained", "source")


class OptimizationError(RuntimeError):
    """A variant could not be built as asked (e.g. the pruning target sparsity was not reached)."""


class NotSupported(OptimizationError):
    """A variant does not apply to this model (a layer tfmot cannot wrap, no student in the model
    module): the variant is skipped with this reason."""


@dataclass
class OptimizeConfig:
    """Parameters of every variant (the DAG's form exposes the main ones)."""

    int8_samples: int = 200
    target_sparsity: float = 0.8
    # defaults that pass every variant's gate on the bundled MNIST with margin (benchmarks/results/
    # formats.json: pruned 0.42 pp, pruned_int8 0.47 pp drop, distilled 0.47 pp better; with 2 and 3
    # epochs pruned_int8 and distilled were rejected and pruned passed by 0.03 pp)
    pruning_epochs: int = 4
    pruning_frequency: int = 10  # the tfmot default (100) reached 0 % sparsity on short runs
    pruning_learning_rate: float = 5e-4
    temperature: float = 4.0
    alpha: float = 0.1
    distill_epochs: int = 15
    # quantization-aware fine-tuning: a few epochs at a low learning rate (the float model is
    # already trained; QAT only adapts it to the int8 grid)
    qat_epochs: int = 2
    qat_learning_rate: float = 1e-4
    teacher: str = "trained"
    teacher_hidden_units: list[int] = field(default_factory=lambda: [256, 128])
    teacher_epochs: int = 3
    student_hidden_units: list[int] = field(default_factory=lambda: [64])
    batch_size: int = 128
    learning_rate: float = 1e-3
    max_accuracy_drop: float = 0.01  # accuracy or AUC, absolute (0.01 = 1 percentage point)
    max_rmse_increase: float = 0.05  # regression: RMSE may grow by this share of the float model's
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_model(cls, module=None, overrides: dict | None = None) -> "OptimizeConfig":
        """The platform's defaults, the model module's optional ``OPTIMIZE`` (its own, e.g. more
        pruning epochs for a small dataset) over them, then the set ``overrides`` (the form's
        fields; ``None`` = unset) over both."""
        from tfmlops.modelspec import ModelModuleError

        declared = dict(getattr(module, "OPTIMIZE", None) or {})
        unknown = sorted(set(declared) - set(cls.__dataclass_fields__))
        if unknown:
            raise ModelModuleError(f"model module {getattr(module, '__name__', '?')!r}: OPTIMIZE has unknown keys "
                                   f"{unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**{**declared, **{k: v for k, v in (overrides or {}).items() if v is not None}})


# --- post-training quantization ---------------------------------------------------------------

def representative_sample(x, size: int, seed: int = 0):
    """``size`` random rows of the (real) training data, for int8 calibration: a dict of arrays by
    input name (the same rows of each), or rows of the one input when ``x`` is an array."""
    if size < 1:
        raise OptimizationError(f"int8 calibration needs at least one sample, got {size}")
    features = x if isinstance(x, dict) else {"": x}
    n = len(next(iter(features.values())))
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(size, n), replace=False))
    sample = {k: np.ascontiguousarray(v[rows]) if v.dtype == object else np.ascontiguousarray(v[rows])
              for k, v in features.items()}
    return sample if isinstance(x, dict) else sample[""].astype(np.float32)


def _input_names(model) -> list[str]:
    return [t.name.split(":")[0] for t in model.inputs]


def _all_float_inputs(model) -> bool:
    return all(t.dtype == tf.float32 for t in model.inputs)


def to_variant_tflite(model, mode: str = "float", representative=None) -> bytes:
    """:func:`to_tflite` for a variant: a model that needs TF Select ops (no builtin kernel: e.g. a
    StringLookup's DenseBincount) raises :class:`NotSupported` naming them."""
    try:
        return to_tflite(model, mode, representative)
    except Exception as exc:  # noqa: BLE001 — the converter's ConverterError
        if "TF Select ops" not in str(exc):
            raise
        from tfmlops.formats.writers import reason

        raise NotSupported(f"TFLite: {reason(exc)}") from exc


def to_tflite(model, mode: str = "float", representative=None) -> bytes:
    """Convert a tf_keras model to a TFLite flatbuffer of builtin ops only: ``float`` (no
    optimization), ``dynamic_range``, ``float16`` or ``int8`` (needs ``representative`` rows: a dict
    by input name, or the one input's rows). int8 makes the input and output int8 when every input
    is float32 (other inputs keep their type; the computation is int8 inside). A model that needs
    TF Select ops raises the converter's error (the caller reports the format not applicable)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode != "float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        if representative is None or not len(representative):
            raise OptimizationError("int8 quantization needs a representative sample of training rows")
        names = _input_names(model)
        rows = representative if isinstance(representative, dict) else {names[0]: representative}
        n = len(next(iter(rows.values())))

        def dataset():  # one row at a time, the inputs in the model's order
            for i in range(n):
                yield [np.asarray(rows[name][i:i + 1], dtype=t.dtype.as_numpy_dtype)
                       for name, t in zip(names, model.inputs)]

        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if _all_float_inputs(model):
            converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif mode not in ("float", "dynamic_range"):
        raise ValueError(f"unknown TFLite mode {mode!r}")
    return converter.convert()


def tflite_weight_dtypes(content: bytes) -> dict[str, str]:
    """dtype of each weight (constant) tensor of a TFLite model, by tensor name."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    weights = {}
    for detail in interpreter.get_tensor_details():
        try:
            interpreter.get_tensor(detail["index"])  # constant tensors are readable before allocation
        except ValueError:
            continue
        weights[detail["name"]] = np.dtype(detail["dtype"]).name
    return weights


def tflite_weight_sparsity(content: bytes) -> float:
    """Share of exact zeros in the int8 weight matrices (constant tensors of rank >= 2) of a
    TFLite model; 0.0 when it has none."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    zeros = total = 0
    for detail in interpreter.get_tensor_details():
        if np.dtype(detail["dtype"]) != np.int8 or len(detail["shape"]) < 2:
            continue
        try:
            values = interpreter.get_tensor(detail["index"])  # constants are readable before allocation
        except ValueError:
            continue
        zeros += int(np.sum(values == 0))
        total += values.size
    return zeros / total if total else 0.0


def gzipped_size(content: bytes) -> int:
    import gzip

    return len(gzip.compress(content, compresslevel=9, mtime=0))


# --- pruning ------------------------------------------------------------------------------------

def kernel_sparsity(model) -> float:
    """Share of exact zeros in the Dense kernels (biases are not pruned)."""
    zeros = total = 0
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            values = kernel.numpy()
            zeros += int(np.sum(values == 0))
            total += values.size
    return zeros / total if total else 0.0


def unsupported_layers(model, what: str) -> list[str]:
    """Class names of the model's layers that tfmot cannot wrap for ``what`` (``pruning`` or
    ``quantization``): its support is per layer (a registry of Keras layers)."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    if what == "pruning":
        supports = lambda layer: (PruneRegistry.supports(layer)  # noqa: E731
                                  or isinstance(layer, tfmot.sparsity.keras.PrunableLayer))
    else:
        registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
        supports = registry.supports
    return sorted({type(layer).__name__ for layer in model.layers
                   if not isinstance(layer, keras.layers.InputLayer) and not supports(layer)})


def require_tfmot_support(model, what: str) -> None:
    missing = unsupported_layers(model, what)
    if missing:
        raise NotSupported(f"{', '.join(missing)} not supported by tfmot ({what})")


def _copy(model):
    """A trainable copy: the fine-tuning variants train it even when the source was frozen (a
    distillation teacher is set ``trainable = False``; the clone would inherit that, and tfmot's
    prune-preserving scheme skips layers without trainable weights)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.trainable = True
    return clone


def _fit_inputs(model, x):
    return inputs_for(model, x) if isinstance(x, dict) else x


def prune(model, x, y: np.ndarray, target_sparsity: float, epochs: int = 2, batch_size: int = 128,
          learning_rate: float = 5e-4, frequency: int = 10, seed: int = 0, task: str = "multiclass"):
    """Magnitude-prune a copy of ``model`` to ``target_sparsity`` while fine-tuning it; returns
    the stripped model (plain Dense layers) and a report. Raises OptimizationError when the
    measured kernel sparsity is below the target."""
    import tensorflow_model_optimization as tfmot

    if not 0 < target_sparsity < 1:
        raise OptimizationError(f"target sparsity must be in (0, 1), got {target_sparsity}")
    require_tfmot_support(model, "pruning")
    keras.utils.set_random_seed(seed)
    steps = math.ceil(len(y) / batch_size) * epochs
    # Reach the target at ~70 % of the steps (a multiple of frequency, so the schedule prunes at
    # it); the remaining steps fine-tune with the final masks to recover accuracy.
    end_step = max(frequency, int(0.7 * (steps - 1)) // frequency * frequency)
    if end_step > steps - 1:
        raise OptimizationError(f"{steps} fine-tuning steps are too few to prune every {frequency} steps: "
                                f"use more data, epochs or a smaller batch")
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target_sparsity,
                                                    begin_step=0, end_step=end_step, frequency=frequency)
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(_copy(model), pruning_schedule=schedule)
    compile_by_task(wrapped, task, learning_rate)
    history = wrapped.fit(_fit_inputs(wrapped, x), labels_for(task, wrapped, y), epochs=epochs,
                          batch_size=batch_size, verbose=0,
                          callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), models.EpochLogger(epochs)])
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    sparsity = kernel_sparsity(stripped)
    report = {"target_sparsity": target_sparsity, "sparsity": round(sparsity, 6), "steps": steps,
              "end_step": end_step, "frequency": frequency,
              "final_loss": float(history.history["loss"][-1])}
    if sparsity < target_sparsity - 1e-3:
        raise OptimizationError(f"pruning reached {sparsity:.2%} kernel sparsity, below the target "
                                f"{target_sparsity:.2%} ({steps} steps, end_step {end_step}, frequency {frequency})")
    return stripped, report


# --- quantization-aware training -------------------------------------------------------------

def quantization_aware(model, x, y: np.ndarray, epochs: int = 2, batch_size: int = 128,
                       learning_rate: float = 1e-4, seed: int = 0, preserve_sparsity: bool = False,
                       task: str = "multiclass"):
    """Fine-tune a copy of ``model`` with fake int8 quantization (tfmot ``quantize_model``, the
    default 8-bit scheme; with ``preserve_sparsity``, the scheme that keeps a pruned model's zeros);
    returns the quantization-aware model and a report. The source is not touched."""
    import tensorflow_model_optimization as tfmot

    if epochs < 1:
        raise OptimizationError(f"quantization-aware training needs at least one epoch, got {epochs}")
    require_tfmot_support(model, "quantization")
    keras.utils.set_random_seed(seed)
    if preserve_sparsity:
        qat = tfmot.quantization.keras.quantize_apply(
            tfmot.quantization.keras.quantize_annotate_model(_copy(model)),
            tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
    else:
        qat = tfmot.quantization.keras.quantize_model(_copy(model))
    compile_by_task(qat, task, learning_rate)
    history = qat.fit(_fit_inputs(qat, x), labels_for(task, qat, y), epochs=epochs, batch_size=batch_size,
                      verbose=0, callbacks=[models.EpochLogger(epochs)])
    report = {"qat_epochs": epochs, "qat_learning_rate": learning_rate,
              "qat_scheme": "prune-preserving 8-bit" if preserve_sparsity else "default 8-bit",
              "final_loss": float(history.history["loss"][-1]),
              "quantized_layers": sum(1 for layer in qat.layers if hasattr(layer, "quantize_config"))}
    return qat, report


def unwrap_quantization_aware(qat_model, model):
    """A plain copy of ``model`` (no tfmot layer: loadable by :mod:`tfmlops.model_files`) holding the
    float weights that quantization-aware training fine-tuned inside ``qat_model``'s wrappers."""
    # the wrapper owns the inner layer's variables (its ``kernel`` attribute becomes the
    # fake-quantized tensor), so take them from the wrapper's weights, by variable name
    trained = {}
    for wrapper in qat_model.layers:
        if hasattr(wrapper, "layer") and hasattr(wrapper, "quantize_config"):
            for weight in wrapper.weights:
                owner, _, leaf = weight.name.rpartition("/")
                if owner == wrapper.layer.name:
                    trained[(owner, leaf.split(":")[0])] = weight.numpy()
    plain = _copy(model)
    for layer in plain.layers:
        for weight in layer.weights:
            key = (layer.name, weight.name.rpartition("/")[2].split(":")[0])
            if key not in trained:
                raise OptimizationError(f"{layer.name}: no fine-tuned {key[1]} in the quantization-aware model")
            weight.assign(trained[key])
    return plain


def qat_to_tflite(qat_model) -> bytes:
    """Full-int8 TFLite (int8 input/output) from a quantization-aware model: the converter takes
    every range from the fake-quantization layers, so no representative rows are needed."""
    converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if _all_float_inputs(qat_model):
        converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


# --- distillation -------------------------------------------------------------------------------

def _log_probs(probs):
    """The models end in softmax: log-probabilities are their logits up to a per-row constant,
    which softmax ignores, so ``softmax(log p / T)`` is the temperature-softened distribution."""
    return tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0))


def _class_probs(outputs, task: str):
    """[B, C] class probabilities from a classifier's output (binary: [1 - p, p] from [B, 1] / [B])."""
    if task == "multiclass":
        return outputs
    p = tf.reshape(tf.cast(outputs, tf.float32), [-1, 1])
    return tf.concat([1.0 - p, p], axis=1)


class Distiller(keras.Model):
    """Trains ``student`` on a teacher, by task. Classification: ``alpha`` × cross-entropy with the
    labels + ``(1 - alpha)`` × T²·KL(teacher_T ‖ student_T), where ``x_T = softmax(logits /
    temperature)`` (binary as the two classes [1 - p, p]). Regression: ``alpha`` × MSE to the
    labels + ``(1 - alpha)`` × MSE to the teacher's values. The teacher is frozen; only the
    student's weights change."""

    def __init__(self, student, teacher, temperature: float = 4.0, alpha: float = 0.1, task: str = "multiclass"):
        super().__init__()
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise OptimizationError(f"distillation needs temperature > 0 and alpha in [0, 1], "
                                    f"got {temperature}, {alpha}")
        self.student, self.teacher = student, teacher
        self.teacher.trainable = False
        self.temperature, self.alpha, self.task = float(temperature), float(alpha), task
        agreement = "teacher_rmse" if task == "regression" else "teacher_agreement"
        self.trackers = {name: keras.metrics.Mean(name=name)
                         for name in ("loss", "student_loss", "distillation_loss", agreement)}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, x, training=False):
        return self.student(x, training=training)

    def _terms(self, x, y):
        teacher_out = self.teacher(x, training=False)
        if self.task == "regression":
            target = tf.reshape(tf.cast(teacher_out, tf.float32), [-1])
            value = tf.reshape(self.student(x, training=True), [-1])
            student_loss = tf.reduce_mean(tf.square(tf.reshape(tf.cast(y, tf.float32), [-1]) - value))
            distillation_loss = tf.reduce_mean(tf.square(target - value))
            return student_loss, distillation_loss, tf.sqrt(distillation_loss)
        soft_targets = tf.nn.softmax(_log_probs(_class_probs(teacher_out, self.task)) / self.temperature)
        probs = _class_probs(self.student(x, training=True), self.task)
        student_loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(tf.reshape(y, [-1]), probs))
        soft = tf.nn.softmax(_log_probs(probs) / self.temperature)
        distillation_loss = tf.reduce_mean(keras.losses.kl_divergence(soft_targets, soft)) * self.temperature ** 2
        agreement = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(probs, 1), tf.argmax(soft_targets, 1)), tf.float32))
        return student_loss, distillation_loss, agreement

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            student_loss, distillation_loss, agreement = self._terms(x, y)
            loss = self.alpha * student_loss + (1 - self.alpha) * distillation_loss
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        for tracker, value in zip(self.trackers.values(), (loss, student_loss, distillation_loss, agreement)):
            tracker.update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}


def train_teacher(x: np.ndarray, y: np.ndarray, hidden_units: list[int], epochs: int, batch_size: int = 128,
                  learning_rate: float = 1e-3, seed: int = 0):
    """A larger seed MLP on one float input (models without a model module's ``build_teacher``)."""
    n_features, num_classes = x.shape[1], int(y.max()) + 1
    teacher = models.build_model(models.ModelConfig(n_features=n_features, num_classes=max(num_classes, 2),
                                                    hidden_units=list(hidden_units)))
    models.train(teacher, x, y, models.TrainConfig(epochs=epochs, batch_size=batch_size,
                                                   learning_rate=learning_rate, seed=seed))
    return teacher


def distill(teacher, x, y: np.ndarray, student=None, temperature: float = 4.0, alpha: float = 0.1,
            epochs: int = 3, batch_size: int = 128, learning_rate: float = 1e-3, seed: int = 0,
            task: str = "multiclass"):
    """Train ``student`` (default: a fresh seed MLP shaped like the teacher's input/output) from
    ``teacher``; returns the student and the per-epoch history. ``x``: the one input's rows, or a
    dict of features by input name."""
    keras.utils.set_random_seed(seed)
    if student is None:
        student = models.build_model(models.ModelConfig(n_features=int(teacher.inputs[0].shape[-1]),
                                                        num_classes=int(teacher.outputs[0].shape[-1])))
    distiller = Distiller(student, teacher, temperature, alpha, task)
    distiller.compile(optimizer=keras.optimizers.Adam(learning_rate))
    history = distiller.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0,
                            callbacks=[models.EpochLogger(epochs)])
    return student, {k: [float(v) for v in values] for k, values in history.history.items()}


def _module_model(problem: "_Problem", name: str, purpose: str):
    """``module.<name>(hparams[, sample])`` checked like ``build_model``'s model (inputs, output by task)."""
    from tfmlops.modelspec import build_model

    if problem.module is None or not hasattr(problem.module, name):
        raise NotSupported(f"the model module {problem.spec.module or '(none)'} defines no {name}(hparams) for the "
                           f"{purpose}")
    adapt_rows = int(problem.spec.hparams.get("adapt_rows", 10000))
    return build_model(problem.spec, problem.module, {k: v[:adapt_rows] for k, v in problem.x_train.items()},
                       function=name)


# --- variants and the gate ----------------------------------------------------------------------

@dataclass
class Variant:
    """An optimized model: a tf_keras ``model`` (pruned, distilled), ``tflite`` bytes (the
    quantizations), or both (``pruned_int8``: the pruned Keras model it was quantized from).
    ``score`` is the task's metric on the test split (accuracy, AUC or RMSE)."""

    name: str
    score: float
    model: object = None
    tflite: bytes | None = None
    details: dict = field(default_factory=dict)

    def predict(self, x) -> np.ndarray:
        """Raw outputs on ``x`` (a dict of features, or the one input's rows)."""
        if self.tflite is None:
            return self.model.predict(_fit_inputs(self.model, x), batch_size=1024, verbose=0)
        from tfmlops.formats.runtimes import LiteRTModel

        return LiteRTModel(self.tflite)(x)


# the task's metric (tfmlops.evaluation.task_metrics) and whether higher is better
TASK_METRIC = {"multiclass": ("accuracy", True), "binary": ("auc", True), "regression": ("rmse", False)}


def score(outputs: np.ndarray, y: np.ndarray, task: str = "multiclass") -> float:
    """The task's metric of raw ``outputs`` on labels ``y``: accuracy, AUC or RMSE."""
    from tfmlops.evaluation import task_metrics
    from tfmlops.formats import task_outputs

    values = task_outputs(task, outputs)
    num_classes = values.shape[1] if task == "multiclass" else 2
    return float(task_metrics(task, y, values, num_classes)[TASK_METRIC[task][0]])


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == y))


@dataclass
class _Problem:
    """What :func:`build_variant` works on: the features of each split (a dict by input name), the
    labels, the task, and the model module (for a student/teacher)."""

    x_train: dict
    y_train: np.ndarray
    x_test: dict
    y_test: np.ndarray
    task: str
    spec: object
    module: object

    @classmethod
    def of(cls, model, dataset, spec=None, module=None) -> "_Problem":
        from tfmlops.export import legacy_spec

        if isinstance(dataset, cls):
            return dataset
        if spec is None:
            spec = legacy_spec(model)
        if hasattr(dataset, "x_train"):  # tfmlops.data.Dataset: the one input's rows
            from tfmlops.model_data import from_dataset

            dataset = from_dataset(dataset, next(iter(spec.inputs)))
        return cls(dataset.train.features, dataset.train.labels, dataset.test.features, dataset.test.labels,
                   spec.task, spec, module)

    def score(self, predict) -> float:
        return score(predict(self.x_test), self.y_test, self.task)

    def keras_score(self, model) -> float:
        return self.score(lambda x: model.predict(inputs_for(model, x), batch_size=1024, verbose=0))

    def tflite_score(self, content: bytes) -> float:
        from tfmlops.formats.runtimes import LiteRTModel

        return self.score(LiteRTModel(content))


def _quantized(content: bytes, problem: _Problem, **details) -> dict:
    return {**details, "tflite_bytes": len(content), "tflite_gzipped_bytes": gzipped_size(content)}


def build_variant(name: str, model, dataset, config: OptimizeConfig, teacher=None, cache: dict | None = None,
                  spec=None, module=None) -> Variant:
    """Build one variant of the float ``model`` on ``dataset`` (a :class:`tfmlops.model_data.ModelData`
    of the model spec ``spec``, or a :class:`tfmlops.data.Dataset` of one float input). ``cache``
    (a dict shared across calls) lets ``pruned_int8`` reuse the ``pruned`` run. Raises
    :class:`NotSupported` when the variant does not apply to the model."""
    problem = dataset if isinstance(dataset, _Problem) else _Problem.of(model, dataset, spec, module)
    task = problem.task
    start = time.perf_counter()
    if name in QUANTIZATIONS:
        representative = representative_sample(problem.x_train, config.int8_samples, config.seed) \
            if name == "int8" else None
        content = to_variant_tflite(model, name, representative)
        details = _quantized(content, problem)
        if representative is not None:
            details["calibration_rows"] = len(next(iter(representative.values())))
        variant = Variant(name, problem.tflite_score(content), tflite=content, details=details)
    elif name in ("pruned", "pruned_int8", "pruned_qat_int8"):
        cache = {} if cache is None else cache
        if "pruned" not in cache:  # pruned and pruned_int8 share one (deterministic) pruning run
            cache["pruned"] = prune(model, problem.x_train, problem.y_train, config.target_sparsity,
                                    config.pruning_epochs, config.batch_size, config.pruning_learning_rate,
                                    config.pruning_frequency, config.seed, task=task)
        pruned, report = cache["pruned"]
        pruned_score = problem.keras_score(pruned)
        if name == "pruned":
            variant = Variant(name, pruned_score, model=pruned, details=dict(report))
        elif name == "pruned_qat_int8":
            qat, qat_report = quantization_aware(pruned, problem.x_train, problem.y_train, config.qat_epochs,
                                                 config.batch_size, config.qat_learning_rate, config.seed,
                                                 preserve_sparsity=True, task=task)
            content = qat_to_tflite(qat)
            int8_sparsity = tflite_weight_sparsity(content)
            if int8_sparsity < config.target_sparsity - 1e-3:
                raise OptimizationError(f"int8 weights after pruning-preserving QAT have {int8_sparsity:.2%} zeros, "
                                        f"below the target {config.target_sparsity:.2%}")
            variant = Variant(name, problem.tflite_score(content), model=unwrap_quantization_aware(qat, pruned),
                              tflite=content,
                              details=_quantized(content, problem, **{**report, **qat_report},
                                                 int8_weight_sparsity=round(int8_sparsity, 6),
                                                 pruned_score=pruned_score))
        else:
            representative = representative_sample(problem.x_train, config.int8_samples, config.seed)
            content = to_variant_tflite(pruned, "int8", representative)
            int8_sparsity = tflite_weight_sparsity(content)
            if int8_sparsity < config.target_sparsity - 1e-3:
                raise OptimizationError(f"int8 weights of the pruned model have {int8_sparsity:.2%} zeros, below "
                                        f"the target {config.target_sparsity:.2%}")
            variant = Variant(name, problem.tflite_score(content), model=pruned, tflite=content,
                              details=_quantized(content, problem, **report,
                                                 int8_weight_sparsity=round(int8_sparsity, 6),
                                                 pruned_score=pruned_score,
                                                 calibration_rows=len(next(iter(representative.values())))))
    elif name == "qat_int8":
        qat, report = quantization_aware(model, problem.x_train, problem.y_train, config.qat_epochs,
                                         config.batch_size, config.qat_learning_rate, config.seed, task=task)
        content = qat_to_tflite(qat)
        fine_tuned = unwrap_quantization_aware(qat, model)
        variant = Variant(name, problem.tflite_score(content), model=fine_tuned, tflite=content,
                          details=_quantized(content, problem, **report,
                                             fake_quant_score=problem.keras_score(qat),
                                             fine_tuned_float_score=problem.keras_score(fine_tuned)))
    elif name == "distilled":
        variant = _distilled(model, problem, config, teacher)
    else:
        raise ValueError(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
    variant.details["build_seconds"] = round(time.perf_counter() - start, 3)
    return variant


def _distilled(model, problem: _Problem, config: OptimizeConfig, teacher=None) -> Variant:
    """The module's ``build_student`` (a model of the same inputs and output) trained on the
    teacher: the module's ``build_teacher`` trained here (``teacher="trained"``; the source when the
    module has none), or the source model (``"source"``). Without a model module (a bare one-input
    model): the seed MLP student and a larger MLP teacher."""
    if config.teacher not in TEACHERS:
        raise OptimizationError(f"unknown teacher {config.teacher!r}; use one of {TEACHERS}")
    legacy = problem.module is None
    keras.utils.set_random_seed(config.seed)  # the student's initial weights: the same in every run
    if legacy:
        x_train = next(iter(problem.x_train.values()))
        student = models.build_model(models.ModelConfig(n_features=x_train.shape[1],
                                                        num_classes=int(model.outputs[0].shape[-1]),
                                                        hidden_units=list(config.student_hidden_units)))
    else:
        student = _module_model(problem, "build_student", "distilled variant")
    teacher_kind = config.teacher
    if teacher is None:
        if config.teacher == "source" or (not legacy and not hasattr(problem.module, "build_teacher")):
            teacher, teacher_kind = model, "source" if config.teacher == "source" else \
                "source (the model module defines no build_teacher)"
        elif legacy:
            teacher = train_teacher(next(iter(problem.x_train.values())), problem.y_train,
                                    config.teacher_hidden_units, config.teacher_epochs, config.batch_size,
                                    config.learning_rate, config.seed)
        else:
            keras.utils.set_random_seed(config.seed)
            teacher = _module_model(problem, "build_teacher", "distillation teacher")
            compile_by_task(teacher, problem.task, config.learning_rate)
            teacher.fit(inputs_for(teacher, problem.x_train), labels_for(problem.task, teacher, problem.y_train),
                        epochs=config.teacher_epochs, batch_size=config.batch_size, verbose=0,
                        callbacks=[models.EpochLogger(config.teacher_epochs)])
    x = inputs_for(student, problem.x_train)
    student, history = distill(teacher, x, problem.y_train, student, config.temperature, config.alpha,
                               config.distill_epochs, config.batch_size, config.learning_rate, config.seed,
                               task=problem.task)
    follow = "teacher_rmse" if problem.task == "regression" else "teacher_agreement"
    return Variant("distilled", problem.keras_score(student), model=student,
                   details={"teacher": teacher_kind, "teacher_score": problem.keras_score(teacher),
                            "teacher_params": int(teacher.count_params()),
                            "student_params": int(student.count_params()),
                            "temperature": config.temperature, "alpha": config.alpha,
                            f"final_{follow}": history[follow][-1],
                            "final_distillation_loss": history["distillation_loss"][-1]})


def metric_drop_gate(task: str, float_score: float, variant_score: float, config: "OptimizeConfig") -> GateDecision:
    """A variant may lose at most ``max_accuracy_drop`` of accuracy or AUC (absolute, in the metric's
    unit), or raise RMSE by at most ``max_rmse_increase`` × the float model's RMSE."""
    metric, higher = TASK_METRIC[task]
    if higher:
        drop, allowed = float_score - variant_score, config.max_accuracy_drop
        unit = lambda v: f"{v * 100:.2f} pp"  # noqa: E731
    else:
        drop, allowed = variant_score - float_score, config.max_rmse_increase * float_score
        unit = lambda v: f"{v:.4g} ({v / float_score:.1%})" if float_score else f"{v:.4g}"  # noqa: E731
    if not np.isfinite(variant_score) or drop > allowed:
        side = "below" if higher else "above"
        return GateDecision(False, f"{metric} {variant_score:.4f} is {unit(abs(drop))} {side} the float model's "
                                   f"{float_score:.4f} (allowed {unit(allowed)})")
    return GateDecision(True, f"{metric} {variant_score:.4f} vs float {float_score:.4f} "
                              f"({'drop' if higher else 'increase'} {unit(drop)} <= {unit(allowed)})")


def accuracy_drop_gate(float_accuracy: float, variant_accuracy: float, max_drop: float) -> GateDecision:
    return metric_drop_gate("multiclass", float_accuracy, variant_accuracy, OptimizeConfig(max_accuracy_drop=max_drop))


def optimize_one(name: str, model, dataset, config: OptimizeConfig, float_score: float | None = None,
                 teacher=None, cache: dict | None = None, spec=None, module=None) -> tuple[Variant | None, dict]:
    """Build and gate one variant. Never raises for a variant problem: returns ``(variant, result)``
    with ``result["status"]`` = ``passed``, ``rejected`` (gate; variant returned for the record),
    ``skipped`` (does not apply to this model: the reason says why) or ``failed`` (no variant).
    ``result`` has the task's ``metric``, ``float_score``, ``score`` and ``drop`` (worse by, in the
    metric's unit); for accuracy also the former ``accuracy`` / ``accuracy_drop`` keys."""
    problem = _Problem.of(model, dataset, spec, module)
    if problem.module is not None:
        # fine-tuning (pruning, QAT, distillation) runs at the model's own batch size (on a small
        # dataset a large batch leaves too few steps to prune and recover), and a student or teacher
        # trains at the model's own learning rate (a regressor's values may be far from 0)
        hp = problem.spec.hparams
        config = replace(config, batch_size=int(hp.get("batch_size", config.batch_size)),
                         learning_rate=float(hp.get("learning_rate", config.learning_rate)))
    if float_score is None:
        float_score = problem.keras_score(model)
    metric = TASK_METRIC[problem.task][0]
    result = {"variant": name, "task": problem.task, "metric": metric, "float_score": float_score,
              "max_accuracy_drop": config.max_accuracy_drop, "max_rmse_increase": config.max_rmse_increase}
    try:
        variant = build_variant(name, model, problem, config, teacher=teacher, cache=cache)
    except NotSupported as exc:
        log.warning("variant %s skipped: %s", name, exc)
        return None, {**result, "status": "skipped", "reason": f"skipped: {exc}"}
    except (OptimizationError, ValueError, tf.errors.OpError) as exc:
        log.warning("variant %s failed: %s", name, exc)
        return None, {**result, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 - e.g. the converter's ConverterError: a variant's failure stops no other
        from tfmlops.formats.writers import reason

        log.warning("variant %s failed: %s", name, exc)
        return None, {**result, "status": "failed", "reason": reason(exc)}
    decision = metric_drop_gate(problem.task, float_score, variant.score, config)
    higher = TASK_METRIC[problem.task][1]
    drop = float_score - variant.score if higher else variant.score - float_score
    result.update({"status": "passed" if decision.passed else "rejected", "reason": decision.reason,
                   "score": variant.score, "drop": drop, "details": variant.details})
    if metric == "accuracy":
        result.update({"float_accuracy": float_score, "accuracy": variant.score, "accuracy_drop": drop})
    log.info("variant %s %s: %s", name, result["status"], decision.reason)
    return variant, result


def optimize(model, dataset, variants=VARIANTS, config: OptimizeConfig | None = None, teacher=None, spec=None,
             module=None):
    """Every requested variant, each gated; returns ``({name: Variant that passed}, [result, ...])``."""
    config = config or OptimizeConfig()
    problem = _Problem.of(model, dataset, spec, module)
    float_score = problem.keras_score(model)
    passed, results, cache = {}, [], {}
    for name in variants:
        variant, result = optimize_one(name, model, problem, config, float_score, teacher=teacher, cache=cache)
        results.append(result)
        if result["status"] == "passed":
            passed[name] = variant
    return passed, results
