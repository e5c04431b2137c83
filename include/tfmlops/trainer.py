"""Training a model module's model (TFX's Trainer ``run_fn``): build it from the module, train it
with the module's ``train`` or the platform's default, and predict by task. Imports TensorFlow.

The default training compiles by task (sparse categorical cross-entropy / binary cross-entropy /
MSE, with accuracy / AUC / RMSE) and fits on the train split with the validation split for the
per-epoch ``val_*`` figures. A module's own ``train(model, train_ds, val_ds, hparams, callbacks)``
gets batched ``tf.data`` datasets of ``(features_dict, label)`` and must call ``callbacks`` (per-epoch
logging to the task log and MLflow) and return ``{metric: [value per epoch]}``.
"""

from __future__ import annotations

import logging
import math

import numpy as np

import tfmlops  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf
import tf_keras as keras

from tfmlops import evaluation
from tfmlops.model_data import ModelData, Split, StreamedData, StreamedSplit, batches, sample_features
from tfmlops.modelspec import ModelModuleError, ModelSpec, build_model

log = logging.getLogger(__name__)


class EpochLogger(keras.callbacks.Callback):
    """One log line per epoch (the Airflow task log shows it live), and the epoch's figures to
    ``on_epoch`` (MLflow, later a search's pruner)."""

    def __init__(self, epochs: int, on_epoch=None, logger: logging.Logger = log):
        super().__init__()
        self.epochs = epochs
        self.on_epoch = on_epoch
        self.logger = logger

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        figures = " ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items()))
        self.logger.info("epoch %d/%d %s", epoch + 1, self.epochs, figures)
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, logs)


def inputs_for(model, features: dict[str, np.ndarray]):
    """Features in the order of the model's inputs (a Sequential model takes no dict)."""
    names = [t.name.split(":")[0] for t in model.inputs]
    values = [features[n] for n in names]
    return values[0] if len(values) == 1 else values


def compile_by_task(model, task: str, learning_rate: float) -> None:
    """Adam with the task's loss and metrics: sparse categorical cross-entropy + accuracy, binary
    cross-entropy + AUC and accuracy, MSE + RMSE."""
    loss, metrics = {
        "multiclass": ("sparse_categorical_crossentropy", ["accuracy"]),
        "binary": ("binary_crossentropy", [keras.metrics.AUC(name="auc"), "accuracy"]),
        "regression": ("mse", [keras.metrics.RootMeanSquaredError(name="rmse")]),
    }[task]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)


def labels_for(task: str, model, labels: np.ndarray) -> np.ndarray:
    """Labels shaped for the model's loss: class ids (multiclass), else float32 matching the
    output's rank ([B, 1] or [B]) so the loss does not broadcast."""
    if task == "multiclass":
        return labels
    return labels.reshape(-1, 1).astype(np.float32) if len(model.outputs[0].shape) == 2 else labels.astype(np.float32)


def tf_dataset(spec: ModelSpec, model, split: Split, batch_size: int, shuffle_seed: int | None = None):
    ds = tf.data.Dataset.from_tensor_slices((dict(split.features), labels_for(spec.task, model, split.labels)))
    if shuffle_seed is not None:
        ds = ds.shuffle(min(len(split), 10000), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def streamed_dataset(spec: ModelSpec, model, split: StreamedSplit, batch_size: int, shuffle_seed: int | None = None):
    """A streamed split as :func:`tf_dataset` gives one in memory: features by name, labels shaped
    for the model's loss."""
    wide = spec.task != "multiclass" and len(model.outputs[0].shape) == 2

    def shaped(features, labels):
        if spec.task == "multiclass":
            return features, labels
        labels = tf.cast(labels, tf.float32)
        return features, tf.reshape(labels, [-1, 1]) if wide else labels

    return split.dataset(batch_size, shuffle_seed).map(shaped)


def _datasets(spec: ModelSpec, model, data: ModelData | StreamedData, batch_size: int, seed: int):
    if isinstance(data, StreamedData):
        return (streamed_dataset(spec, model, data.train, batch_size, seed),
                streamed_dataset(spec, model, data.validation, batch_size))
    return (tf_dataset(spec, model, data.train, batch_size, shuffle_seed=seed),
            tf_dataset(spec, model, data.validation, batch_size) if len(data.validation) else None)


def train_model(spec: ModelSpec, module, data: ModelData | StreamedData,
                on_epoch=None) -> tuple[object, dict[str, list[float]]]:
    """Build the module's model (adapting on a training sample when ``build_model`` takes one) and
    train it — on arrays in memory, or on ``tf.data`` streams of a sharded dataset's shards; returns
    the model and the per-epoch history."""
    hp = spec.hparams
    keras.utils.set_random_seed(int(hp["seed"]))
    model = build_model(spec, module, sample_features(data.train, int(hp["adapt_rows"])))
    callbacks = [EpochLogger(int(hp["epochs"]), on_epoch)]
    streamed = isinstance(data, StreamedData)
    if hasattr(module, "train"):
        train_ds, val_ds = _datasets(spec, model, data, int(hp["batch_size"]), int(hp["seed"]))
        try:
            history = module.train(model, train_ds, val_ds, dict(hp), callbacks)
        except ModelModuleError:
            raise
        except Exception as exc:  # the user's loop may raise anything
            raise ModelModuleError(f"model module {spec.module!r}: train raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(history, dict) or not all(isinstance(v, (list, tuple)) for v in history.values()):
            raise ModelModuleError(f"model module {spec.module!r}: train must return the per-epoch history as "
                                   f"{{metric: [values]}}, got {type(history).__name__}")
    else:
        if getattr(model, "optimizer", None) is None:  # "compiled or not": a module's own compile is kept
            compile_by_task(model, spec.task, float(hp["learning_rate"]))
        if streamed:
            train_ds, val_ds = _datasets(spec, model, data, int(hp["batch_size"]), int(hp["seed"]))
            def as_inputs(features, labels):  # in the model's input order (a Sequential model takes no dict)
                values = inputs_for(model, features)
                return (tuple(values) if isinstance(values, list) else values), labels

            history = model.fit(train_ds.map(as_inputs), epochs=int(hp["epochs"]), verbose=0, callbacks=callbacks,
                                validation_data=val_ds.map(as_inputs)).history
        else:
            validation = None
            if len(data.validation):
                validation = (inputs_for(model, data.validation.features),
                              labels_for(spec.task, model, data.validation.labels))
            history = model.fit(inputs_for(model, data.train.features),
                                labels_for(spec.task, model, data.train.labels), epochs=int(hp["epochs"]),
                                batch_size=int(hp["batch_size"]), validation_data=validation, verbose=0,
                                callbacks=callbacks).history
    history = {str(k): [float(v) for v in values] for k, values in history.items()}
    bad = [k for k, values in history.items() if values and not math.isfinite(values[-1])]
    if bad:
        raise ModelModuleError(f"model module {spec.module!r}: training diverged ({bad} not finite in the last "
                               "epoch); lower the learning rate")
    return model, history


def predict(spec: ModelSpec, model, features: dict[str, np.ndarray], batch_size: int = 1024,
            one_batch: bool = False) -> np.ndarray:
    """By task: class probabilities [B, C] (multiclass), the positive class's probability [B]
    (binary), the value [B] (regression). ``one_batch``: ``features`` is one batch, predicted with
    ``predict_on_batch`` (called batch after batch, ``predict`` would build a new data pipeline each
    time and its memory grows with the number of calls)."""
    x = inputs_for(model, features)
    out = model.predict_on_batch(x) if one_batch else model.predict(x, batch_size=batch_size, verbose=0)
    out = np.asarray(out, dtype=np.float32)
    return out if spec.task == "multiclass" else out.reshape(len(out))


def labels_and_outputs(spec: ModelSpec, model, split: Split | StreamedSplit) -> tuple[np.ndarray, np.ndarray]:
    """``split``'s labels and :func:`predict`'s outputs; a streamed split is predicted batch by batch
    (memory: the labels and outputs, not the features)."""
    if isinstance(split, Split):
        return split.labels, predict(spec, model, split.features)
    labels, outputs = [], []
    for _, batch in batches(split):
        labels.append(batch.labels)
        outputs.append(predict(spec, model, batch.features, one_batch=True))
    return np.concatenate(labels), np.concatenate(outputs)


def metrics(spec: ModelSpec, model, split: Split | StreamedSplit) -> dict:
    """The task's metrics of ``model`` on ``split`` (:func:`tfmlops.evaluation.task_metrics`)."""
    return evaluation.task_metrics(spec.task, *labels_and_outputs(spec, model, split), spec.num_classes)
