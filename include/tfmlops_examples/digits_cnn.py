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
# tf_hparam_search: the ranges searched when the form gives none
SEARCH_SPACE = {"learning_rate": {"type": "float", "low": 5e-4, "high": 1e-2, "log": True},
                "filters": {"type": "int", "low": 4, "high": 24, "step": 4}}
TEST_SHARE = 0.2
# tf_optimize_export on ~1 400 training rows: more fine-tuning than the platform's defaults (4 pruning,
# 15 distillation epochs, sized for MNIST's 54 000) to stay within 1 pp of the float model
OPTIMIZE = {"pruning_epochs": 16, "distill_epochs": 30}

# Optional: the model card's intended use and known limitations (read by the card step)
MODEL_CARD = {
    "purpose": "Classify an 8×8 grayscale image of a handwritten digit (scikit-learn's digits: 16 gray levels "
               "scaled to [0, 1]) as 0–9 — a demo of an image CNN on the platform.",
    "users": "Platform demos and tests of a Conv2D model with its own load_data; not a production digit reader.",
    "out_of_scope": "Images of another size or gray scale (e.g. 28×28 MNIST) unless reduced to 8×8 the same way; "
                    "photos, letters, multi-digit strings; any decision about people.",
    "limitations": [
        "A small demo dataset (1,797 images, a fifth of them for the test): the test accuracy has wide error bars.",
        "The split is by image with a fixed seed, not by writer: the same writers are in train and test, so the "
        "accuracy on new writers may be lower.",
        "Probabilities are softmax outputs, not calibrated confidences; the model always answers one of the 10 "
        "classes, even for an input that is no digit.",
    ],
}


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


def _cnn(filters: int, model_name: str):
    inputs = keras.Input(shape=(8, 8, 1), name="image")
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(filters * 2, 3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=model_name)


def build_model(hparams):
    return _cnn(int(hparams["filters"]), "digits_cnn")


def build_student(hparams):
    """The distilled variant (tf_optimize_export): the same CNN with half the filters."""
    return _cnn(max(1, int(hparams["filters"]) // 2), "digits_cnn_student")
