"""The seed's model: an MLP on MNIST's 784 pixels (floats in [0, 1]) → 10 digit probabilities.

Data: the platform's built-in ``mnist`` dataset (or a ``.npz`` / flat ``.parquet`` file), so no
``load_data`` here.
"""

import tf_keras as keras

TASK = "multiclass"
INPUTS = {"pixels": ("float32", [784])}
LABEL = "label"
CLASS_NAMES = [str(d) for d in range(10)]
HPARAMS = {"epochs": 5, "batch_size": 128, "learning_rate": 1e-3, "hidden_units": [64], "dropout": 0.0}
GATE = {"metric": "accuracy", "threshold": 0.9, "tolerance": 0.005}


def build_model(hparams):
    inputs = keras.Input(shape=(784,), name="pixels")
    x = inputs
    for i, units in enumerate(hparams["hidden_units"]):
        x = keras.layers.Dense(int(units), activation="relu", name=f"dense_{i}")(x)
        if hparams["dropout"]:
            x = keras.layers.Dropout(float(hparams["dropout"]), name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mlp")
