"""Model builders (tf_keras) and the training loop. Importing this module imports TensorFlow."""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, field

import tfmlops  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tf_keras as keras
import numpy as np

from tfmlops import trainer

log = logging.getLogger(__name__)
# the one per-epoch log line (tfmlops.trainer's), logged as this module's (optimize uses it from here)
EpochLogger = functools.partial(trainer.EpochLogger, logger=log)


@dataclass
class ModelConfig:
    """An MLP on one flat float input: ``n_features`` inputs → Dense(64, relu) → Dense(``num_classes``,
    softmax) by default (the shape is the caller's: the MNIST example passes its own)."""

    n_features: int
    num_classes: int
    hidden_units: list[int] = field(default_factory=lambda: [64])
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    validation_split: float = 0.1
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(config: ModelConfig) -> keras.Model:
    inputs = keras.Input(shape=(config.n_features,), name="pixels")
    x = inputs
    for i, units in enumerate(config.hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(config.num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mlp")


def train(model: keras.Model, x: np.ndarray, y: np.ndarray, config: TrainConfig) -> dict[str, list[float]]:
    """Compile and fit; returns the per-epoch history (loss, accuracy, val_loss, val_accuracy)."""
    keras.utils.set_random_seed(config.seed)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    validation_split = config.validation_split if len(x) >= 20 else 0.0
    history = model.fit(x, y, epochs=config.epochs, batch_size=config.batch_size,
                        validation_split=validation_split, verbose=0,
                        callbacks=[EpochLogger(config.epochs)])
    return {k: [float(v) for v in values] for k, values in history.history.items()}


def predict_classes(model: keras.Model, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    return np.argmax(model.predict(x, batch_size=batch_size, verbose=0), axis=1)
