"""An image CNN (Conv2D on NHWC input): scikit-learn's 8x8 handwritten digits (1,797 images,
shipped with scikit-learn, no download), 10 classes.

Its own ``load_data`` reads the images from scikit-learn (the dataset URI is not read) and returns
NumPy arrays; ``None`` for the validation split lets the platform carve it from train.
"""

import numpy as np
import tf_keras as keras

TASK = "multiclass"
INPUTS = {"image": ("float32", [8, 8, 1])}
LABEL = "digit"
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
HPARAMS = {"epochs": 12, "batch_size": 32, "learning_rate": 3e-3, "filters": 16}
GATE = {"metric": "accuracy", "threshold": 0.85, "tolerance": 0.02}
TEST_SHARE = 0.2


def load_data(uri, split):
    from sklearn.datasets import load_digits

    if split == "validation":
        return None
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    order = np.random.default_rng(0).permutation(len(images))  # a fixed split: same rows every task
    n_test = int(len(images) * TEST_SHARE)
    rows = order[:n_test] if split == "test" else order[n_test:]
    return {"image": images[rows]}, digits.target[rows].astype(np.int64)


def build_model(hparams):
    inputs = keras.Input(shape=(8, 8, 1), name="image")
    x = keras.layers.Conv2D(int(hparams["filters"]), 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(int(hparams["filters"]) * 2, 3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")
