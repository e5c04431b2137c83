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
from dataclasses import asdict, dataclass, field

import numpy as np

import tfmlops  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf
import tf_keras as keras

from tfmlops import models
from tfmlops.evaluation import GateDecision
from tfmlops.formats import QUANTIZATIONS, VARIANTS

log = logging.getLogger(__name__)

TEACHERS = ("trained", "source")


class OptimizationError(RuntimeError):
    """A variant could not be built as asked (e.g. the pruning target sparsity was not reached)."""


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
    max_accuracy_drop: float = 0.01
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# --- post-training quantization ---------------------------------------------------------------

def representative_sample(x: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """``size`` random rows of the (real) training data, for int8 calibration."""
    if size < 1:
        raise OptimizationError(f"int8 calibration needs at least one sample, got {size}")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), size=min(size, len(x)), replace=False)
    return np.ascontiguousarray(x[np.sort(rows)], dtype=np.float32)


def to_tflite(model, mode: str = "float", representative: np.ndarray | None = None) -> bytes:
    """Convert a tf_keras model to a TFLite flatbuffer: ``float`` (no optimization),
    ``dynamic_range``, ``float16`` or ``int8`` (needs ``representative`` rows)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode != "float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        if representative is None or not len(representative):
            raise OptimizationError("int8 quantization needs a representative sample of training rows")

        def dataset():
            for row in representative:
                yield [row[None, :].astype(np.float32)]

        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
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


def _copy(model):
    """A trainable copy: the fine-tuning variants train it even when the source was frozen (a
    distillation teacher is set ``trainable = False``; the clone would inherit that, and tfmot's
    prune-preserving scheme skips layers without trainable weights)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.trainable = True
    return clone


def prune(model, x: np.ndarray, y: np.ndarray, target_sparsity: float, epochs: int = 2, batch_size: int = 128,
          learning_rate: float = 5e-4, frequency: int = 10, seed: int = 0):
    """Magnitude-prune a copy of ``model`` to ``target_sparsity`` while fine-tuning it; returns
    the stripped model (plain Dense layers) and a report. Raises OptimizationError when the
    measured kernel sparsity is below the target."""
    import tensorflow_model_optimization as tfmot

    if not 0 < target_sparsity < 1:
        raise OptimizationError(f"target sparsity must be in (0, 1), got {target_sparsity}")
    keras.utils.set_random_seed(seed)
    steps = math.ceil(len(x) / batch_size) * epochs
    # Reach the target at ~70 % of the steps (a multiple of frequency, so the schedule prunes at
    # it); the remaining steps fine-tune with the final masks to recover accuracy.
    end_step = max(frequency, int(0.7 * (steps - 1)) // frequency * frequency)
    if end_step > steps - 1:
        raise OptimizationError(f"{steps} fine-tuning steps are too few to prune every {frequency} steps: "
                                f"use more data, epochs or a smaller batch")
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target_sparsity,
                                                    begin_step=0, end_step=end_step, frequency=frequency)
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(_copy(model), pruning_schedule=schedule)
    wrapped.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    history = wrapped.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0,
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

def quantization_aware(model, x: np.ndarray, y: np.ndarray, epochs: int = 2, batch_size: int = 128,
                       learning_rate: float = 1e-4, seed: int = 0, preserve_sparsity: bool = False):
    """Fine-tune a copy of ``model`` with fake int8 quantization (tfmot ``quantize_model``, the
    default 8-bit scheme; with ``preserve_sparsity``, the scheme that keeps a pruned model's zeros);
    returns the quantization-aware model and a report. The source is not touched."""
    import tensorflow_model_optimization as tfmot

    if epochs < 1:
        raise OptimizationError(f"quantization-aware training needs at least one epoch, got {epochs}")
    keras.utils.set_random_seed(seed)
    if preserve_sparsity:
        qat = tfmot.quantization.keras.quantize_apply(
            tfmot.quantization.keras.quantize_annotate_model(_copy(model)),
            tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
    else:
        qat = tfmot.quantization.keras.quantize_model(_copy(model))
    qat.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
    history = qat.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[models.EpochLogger(epochs)])
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
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


# --- distillation -------------------------------------------------------------------------------

def _log_probs(probs):
    """The models end in softmax: log-probabilities are their logits up to a per-row constant,
    which softmax ignores, so ``softmax(log p / T)`` is the temperature-softened distribution."""
    return tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0))


class Distiller(keras.Model):
    """Trains ``student`` on ``alpha`` × cross-entropy with the labels + ``(1 - alpha)`` ×
    T²·KL(teacher_T ‖ student_T), where ``x_T = softmax(logits / temperature)``. The teacher is
    frozen; only the student's weights change."""

    def __init__(self, student, teacher, temperature: float = 4.0, alpha: float = 0.1):
        super().__init__()
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise OptimizationError(f"distillation needs temperature > 0 and alpha in [0, 1], "
                                    f"got {temperature}, {alpha}")
        self.student, self.teacher = student, teacher
        self.teacher.trainable = False
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.trackers = {name: keras.metrics.Mean(name=name)
                         for name in ("loss", "student_loss", "distillation_loss", "teacher_agreement")}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, x, training=False):
        return self.student(x, training=training)

    def train_step(self, data):
        x, y = data
        soft_targets = tf.nn.softmax(_log_probs(self.teacher(x, training=False)) / self.temperature)
        with tf.GradientTape() as tape:
            probs = self.student(x, training=True)
            student_loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs))
            soft = tf.nn.softmax(_log_probs(probs) / self.temperature)
            distillation_loss = tf.reduce_mean(keras.losses.kl_divergence(soft_targets, soft)) * self.temperature ** 2
            loss = self.alpha * student_loss + (1 - self.alpha) * distillation_loss
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        agreement = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(probs, 1), tf.argmax(soft_targets, 1)), tf.float32))
        for name, value in (("loss", loss), ("student_loss", student_loss),
                            ("distillation_loss", distillation_loss), ("teacher_agreement", agreement)):
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}


def train_teacher(x: np.ndarray, y: np.ndarray, hidden_units: list[int], epochs: int, batch_size: int = 128,
                  learning_rate: float = 1e-3, seed: int = 0):
    n_features, num_classes = x.shape[1], int(y.max()) + 1
    teacher = models.build_model(models.ModelConfig(n_features=n_features, num_classes=max(num_classes, 2),
                                                    hidden_units=list(hidden_units)))
    models.train(teacher, x, y, models.TrainConfig(epochs=epochs, batch_size=batch_size,
                                                   learning_rate=learning_rate, seed=seed))
    return teacher


def distill(teacher, x: np.ndarray, y: np.ndarray, student=None, temperature: float = 4.0, alpha: float = 0.1,
            epochs: int = 3, batch_size: int = 128, learning_rate: float = 1e-3, seed: int = 0):
    """Train ``student`` (default: a fresh seed MLP shaped like the teacher's input/output) from
    ``teacher``; returns the student and the per-epoch history."""
    keras.utils.set_random_seed(seed)
    if student is None:
        student = models.build_model(models.ModelConfig(n_features=int(teacher.inputs[0].shape[-1]),
                                                        num_classes=int(teacher.outputs[0].shape[-1])))
    distiller = Distiller(student, teacher, temperature, alpha)
    distiller.compile(optimizer=keras.optimizers.Adam(learning_rate))
    history = distiller.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0,
                            callbacks=[models.EpochLogger(epochs)])
    return student, {k: [float(v) for v in values] for k, values in history.history.items()}


# --- variants and the gate ----------------------------------------------------------------------

@dataclass
class Variant:
    """An optimized model: a tf_keras ``model`` (pruned, distilled), ``tflite`` bytes (the
    quantizations), or both (``pruned_int8``: the pruned Keras model it was quantized from)."""

    name: str
    accuracy: float
    model: object = None
    tflite: bytes | None = None
    details: dict = field(default_factory=dict)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.tflite is None:
            return self.model.predict(x, batch_size=1024, verbose=0)
        from tfmlops.formats.runtimes import LiteRTModel

        return LiteRTModel(self.tflite)(np.ascontiguousarray(x, np.float32))


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == y))


def build_variant(name: str, model, dataset, config: OptimizeConfig, teacher=None,
                  cache: dict | None = None) -> Variant:
    """Build one variant of the float ``model`` on ``dataset`` (a :class:`tfmlops.data.Dataset`).
    ``cache`` (a dict shared across calls) lets ``pruned_int8`` reuse the ``pruned`` run."""
    from tfmlops.formats.runtimes import LiteRTModel

    start = time.perf_counter()
    if name in QUANTIZATIONS:
        representative = representative_sample(dataset.x_train, config.int8_samples, config.seed) \
            if name == "int8" else None
        content = to_tflite(model, name, representative)
        probs = LiteRTModel(content)(np.ascontiguousarray(dataset.x_test, np.float32))
        details = {"tflite_bytes": len(content), "tflite_gzipped_bytes": gzipped_size(content)}
        if representative is not None:
            details["calibration_rows"] = len(representative)
        variant = Variant(name, accuracy(probs, dataset.y_test), tflite=content, details=details)
    elif name in ("pruned", "pruned_int8", "pruned_qat_int8"):
        cache = {} if cache is None else cache
        if "pruned" not in cache:  # pruned and pruned_int8 share one (deterministic) pruning run
            cache["pruned"] = prune(model, dataset.x_train, dataset.y_train, config.target_sparsity,
                                    config.pruning_epochs, config.batch_size, config.pruning_learning_rate,
                                    config.pruning_frequency, config.seed)
        pruned, report = cache["pruned"]
        pruned_accuracy = accuracy(pruned.predict(dataset.x_test, verbose=0), dataset.y_test)
        if name == "pruned":
            variant = Variant(name, pruned_accuracy, model=pruned, details=dict(report))
        elif name == "pruned_qat_int8":
            qat, qat_report = quantization_aware(pruned, dataset.x_train, dataset.y_train, config.qat_epochs,
                                                 config.batch_size, config.qat_learning_rate, config.seed,
                                                 preserve_sparsity=True)
            content = qat_to_tflite(qat)
            int8_sparsity = tflite_weight_sparsity(content)
            if int8_sparsity < config.target_sparsity - 1e-3:
                raise OptimizationError(f"int8 weights after pruning-preserving QAT have {int8_sparsity:.2%} zeros, "
                                        f"below the target {config.target_sparsity:.2%}")
            probs = LiteRTModel(content)(np.ascontiguousarray(dataset.x_test, np.float32))
            variant = Variant(name, accuracy(probs, dataset.y_test), model=unwrap_quantization_aware(qat, pruned),
                              tflite=content,
                              details={**report, **qat_report, "int8_weight_sparsity": round(int8_sparsity, 6),
                                       "pruned_accuracy": pruned_accuracy, "tflite_bytes": len(content),
                                       "tflite_gzipped_bytes": gzipped_size(content)})
        else:
            representative = representative_sample(dataset.x_train, config.int8_samples, config.seed)
            content = to_tflite(pruned, "int8", representative)
            int8_sparsity = tflite_weight_sparsity(content)
            if int8_sparsity < config.target_sparsity - 1e-3:
                raise OptimizationError(f"int8 weights of the pruned model have {int8_sparsity:.2%} zeros, below "
                                        f"the target {config.target_sparsity:.2%}")
            probs = LiteRTModel(content)(np.ascontiguousarray(dataset.x_test, np.float32))
            variant = Variant(name, accuracy(probs, dataset.y_test), model=pruned, tflite=content,
                              details={**report, "int8_weight_sparsity": round(int8_sparsity, 6),
                                       "pruned_accuracy": pruned_accuracy, "tflite_bytes": len(content),
                                       "tflite_gzipped_bytes": gzipped_size(content),
                                       "calibration_rows": len(representative)})
    elif name == "qat_int8":
        qat, report = quantization_aware(model, dataset.x_train, dataset.y_train, config.qat_epochs,
                                         config.batch_size, config.qat_learning_rate, config.seed)
        content = qat_to_tflite(qat)
        fine_tuned = unwrap_quantization_aware(qat, model)
        probs = LiteRTModel(content)(np.ascontiguousarray(dataset.x_test, np.float32))
        variant = Variant(name, accuracy(probs, dataset.y_test), model=fine_tuned, tflite=content,
                          details={**report, "fake_quant_accuracy": accuracy(qat.predict(dataset.x_test, verbose=0),
                                                                             dataset.y_test),
                                   "fine_tuned_float_accuracy": accuracy(fine_tuned.predict(dataset.x_test, verbose=0),
                                                                         dataset.y_test),
                                   "tflite_bytes": len(content), "tflite_gzipped_bytes": gzipped_size(content)})
    elif name == "distilled":
        if teacher is None:
            if config.teacher == "source":
                teacher = model
            elif config.teacher == "trained":
                teacher = train_teacher(dataset.x_train, dataset.y_train, config.teacher_hidden_units,
                                        config.teacher_epochs, config.batch_size, config.learning_rate, config.seed)
            else:
                raise OptimizationError(f"unknown teacher {config.teacher!r}; use one of {TEACHERS}")
        student = models.build_model(models.ModelConfig(n_features=dataset.x_train.shape[1],
                                                        num_classes=int(model.outputs[0].shape[-1]),
                                                        hidden_units=list(config.student_hidden_units)))
        student, history = distill(teacher, dataset.x_train, dataset.y_train, student, config.temperature,
                                   config.alpha, config.distill_epochs, config.batch_size, config.learning_rate,
                                   config.seed)
        teacher_accuracy = accuracy(teacher.predict(dataset.x_test, verbose=0), dataset.y_test)
        variant = Variant(name, accuracy(student.predict(dataset.x_test, verbose=0), dataset.y_test), model=student,
                          details={"teacher": config.teacher, "teacher_accuracy": teacher_accuracy,
                                   "teacher_params": int(teacher.count_params()),
                                   "student_params": int(student.count_params()),
                                   "temperature": config.temperature, "alpha": config.alpha,
                                   "final_teacher_agreement": history["teacher_agreement"][-1],
                                   "final_distillation_loss": history["distillation_loss"][-1]})
    else:
        raise ValueError(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
    variant.details["build_seconds"] = round(time.perf_counter() - start, 3)
    return variant


def accuracy_drop_gate(float_accuracy: float, variant_accuracy: float, max_drop: float) -> GateDecision:
    drop = float_accuracy - variant_accuracy
    if drop > max_drop:
        return GateDecision(False, f"accuracy {variant_accuracy:.4f} is {drop * 100:.2f} pp below the float "
                                   f"model's {float_accuracy:.4f} (allowed drop {max_drop * 100:.2f} pp)")
    return GateDecision(True, f"accuracy {variant_accuracy:.4f} vs float {float_accuracy:.4f} "
                              f"(drop {drop * 100:.2f} pp <= {max_drop * 100:.2f} pp)")


def optimize_one(name: str, model, dataset, config: OptimizeConfig, float_accuracy: float | None = None,
                 teacher=None, cache: dict | None = None) -> tuple[Variant | None, dict]:
    """Build and gate one variant. Never raises for a variant problem: returns ``(variant, result)``
    with ``result["status"]`` = ``passed``, ``rejected`` (gate; variant returned for the record)
    or ``failed`` (no variant)."""
    if float_accuracy is None:
        float_accuracy = accuracy(model.predict(dataset.x_test, verbose=0), dataset.y_test)
    result = {"variant": name, "float_accuracy": float_accuracy, "max_accuracy_drop": config.max_accuracy_drop}
    try:
        variant = build_variant(name, model, dataset, config, teacher=teacher, cache=cache)
    except (OptimizationError, ValueError, tf.errors.OpError) as exc:
        log.warning("variant %s failed: %s", name, exc)
        return None, {**result, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    decision = accuracy_drop_gate(float_accuracy, variant.accuracy, config.max_accuracy_drop)
    result.update({"status": "passed" if decision.passed else "rejected", "reason": decision.reason,
                   "accuracy": variant.accuracy, "accuracy_drop": float_accuracy - variant.accuracy,
                   "details": variant.details})
    log.info("variant %s %s: %s", name, result["status"], decision.reason)
    return variant, result


def optimize(model, dataset, variants=VARIANTS, config: OptimizeConfig | None = None, teacher=None):
    """Every requested variant, each gated; returns ``({name: Variant that passed}, [result, ...])``."""
    config = config or OptimizeConfig()
    float_accuracy = accuracy(model.predict(dataset.x_test, verbose=0), dataset.y_test)
    passed, results, cache = {}, [], {}
    for name in variants:
        variant, result = optimize_one(name, model, dataset, config, float_accuracy, teacher=teacher, cache=cache)
        results.append(result)
        if result["status"] == "passed":
            passed[name] = variant
    return passed, results
