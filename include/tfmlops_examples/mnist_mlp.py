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
# tf_hparam_search: the ranges searched when the form gives none
SEARCH_SPACE = {"learning_rate": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
                "dropout": {"type": "float", "low": 0.0, "high": 0.4},
                "batch_size": {"type": "categorical", "choices": [64, 128, 256]}}
# Optional: what a mobile app gives and how it normalizes it before the model (the mobile bundle's
# TFLite metadata and snippets): pixels 0..255, the model takes (pixel - 0) / 255
MOBILE_INPUTS = {"pixels": {"mean": 0.0, "std": 255.0, "range": [0.0, 255.0],
                            "description": "784 pixels 0..255 of a 28x28 grayscale image, row-major, white digit "
                                           "on black"}}

# Optional: the model card's intended use and known limitations (read by the card step; the platform
# adds the measured ones)
MODEL_CARD = {
    "purpose": "Classify a handwritten digit (0–9) from a 28×28 grayscale image flattened to 784 floats in [0, 1] "
               "(pixel / 255), white digit on black, centered like MNIST.",
    "users": "Applications and demos that read single digits (forms, the draw-a-digit page), through TF Serving "
             "(REST/gRPC) or an exported format (TFLite on mobile, TF.js in the browser, ONNX).",
    "out_of_scope": "Letters, multi-digit strings, photos of digits in the wild, inverted colors or uncentered "
                    "digits; any decision about people without a human check.",
    "limitations": [
        "Trained and evaluated on MNIST-style data only (one writer population, centered and size-normalized "
        "digits): accuracy on other handwriting, scanners or cameras is unknown until measured.",
        "A small fully connected network: no translation or rotation invariance; rotated or shifted digits lose "
        "accuracy (tf_model_monitor measures drift on new data).",
        "Probabilities are softmax outputs, not calibrated confidences; the model always answers one of the 10 "
        "classes, even for an input that is no digit.",
    ],
}


def build_model(hparams):
    inputs = keras.Input(shape=(784,), name="pixels")
    x = inputs
    for i, units in enumerate(hparams["hidden_units"]):
        x = keras.layers.Dense(int(units), activation="relu", name=f"dense_{i}")(x)
        if hparams["dropout"]:
            x = keras.layers.Dropout(float(hparams["dropout"]), name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mlp")


def build_student(hparams):
    """The distilled variant of tf_optimize_export: the seed's MLP (one hidden layer of 64)."""
    return build_model({**hparams, "hidden_units": [64], "dropout": 0.0})


def build_teacher(hparams):
    """The teacher the distilled variant learns from (``teacher="trained"``): a larger MLP."""
    return build_model({**hparams, "hidden_units": [256, 128], "dropout": 0.0})


def DRIFT_STATISTICS(features):
    """Optional: per-row statistics the monitor's drift measures (tfmlops.drift), one number per
    row each. Names ``pixels.<stat>`` replace the platform's default summaries of ``pixels`` (the
    row mean and std): the 28x28 image's mean intensity, ink share, centre of mass and second
    moments, so a rotation moves ``pixels.cov_xy`` and noise moves the intensity."""
    import numpy as np

    side = 28
    img = np.asarray(features["pixels"], np.float32).reshape(-1, side, side)
    mass = img.sum(axis=(1, 2)) + 1e-6
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / (side - 1)
    cx = (img * xs).sum(axis=(1, 2)) / mass
    cy = (img * ys).sum(axis=(1, 2)) / mass
    dx, dy = xs[None] - cx[:, None, None], ys[None] - cy[:, None, None]
    stats = {"mean": img.mean(axis=(1, 2)), "ink": (img > 0.5).mean(axis=(1, 2)), "cx": cx, "cy": cy,
             "var_x": (img * dx * dx).sum(axis=(1, 2)) / mass, "var_y": (img * dy * dy).sum(axis=(1, 2)) / mass,
             "cov_xy": (img * dx * dy).sum(axis=(1, 2)) / mass}
    return {f"pixels.{name}": values for name, values in stats.items()}
