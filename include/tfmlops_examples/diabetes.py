"""A tabular regression model: disease progression one year after baseline, from ten measurements
(scikit-learn's diabetes data, 442 patients, no download).

Data: TFRecord files of ``tf.Example`` under ``data/examples/diabetes/`` (``train-*.tfrecord``,
``test-*.tfrecord``, made by ``scripts/make_example_data.py``), read by the platform's default
TFRecord loader; the validation split is carved from train.
"""

import numpy as np
import tf_keras as keras

TASK = "regression"
FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
INPUTS = {name: ("float32", []) for name in FEATURES}
LABEL = "progression"
HPARAMS = {"epochs": 60, "batch_size": 32, "learning_rate": 2e-2, "hidden_units": 16}
# RMSE in the label's unit (progression points; the label's standard deviation is ~77)
GATE = {"metric": "rmse", "threshold": 70.0, "tolerance": 3.0}
# tf_hparam_search: the ranges searched when the form gives none
SEARCH_SPACE = {"learning_rate": {"type": "float", "low": 2e-3, "high": 5e-2, "log": True},
                "hidden_units": {"type": "int", "low": 4, "high": 32, "step": 4}}
# tf_optimize_export: the student trains from scratch, as long as the model does
OPTIMIZE = {"distill_epochs": 60}

# Optional: the model card's intended use and known limitations (read by the card step)
MODEL_CARD = {
    "purpose": "Predict a disease-progression score one year after baseline from ten baseline measurements "
               "(age, sex, BMI, blood pressure, six blood serum values) — a demo of a tabular regressor.",
    "users": "Platform demos and tests (TFRecord data, RMSE gate, regression formats and bundles).",
    "out_of_scope": "Any clinical use or decision about a patient; raw (unscaled) measurements.",
    "limitations": [
        "A small public demo dataset (scikit-learn's diabetes data, 442 patients, about 88 test rows): RMSE and "
        "R² have wide error bars.",
        "The features are scikit-learn's scaled ones (mean-centered, each column of unit norm over the 442 "
        "patients), not raw measurements: a client must scale its values the same way.",
        "One value per patient and no uncertainty with it; errors are in the score's own unit.",
    ],
}


def build_model(hparams, sample, model_name="diabetes"):
    inputs = {name: keras.Input(shape=(), name=name, dtype="float32") for name in FEATURES}
    x = keras.layers.Concatenate()([keras.layers.Reshape((1,))(inputs[name]) for name in FEATURES])
    norm = keras.layers.Normalization(name="normalize")
    norm.adapt(np.stack([sample[name] for name in FEATURES], axis=1))
    x = norm(x)
    x = keras.layers.Dense(int(hparams["hidden_units"]), activation="relu")(x)
    outputs = keras.layers.Dense(1, name="progression")(x)
    return keras.Model(inputs, outputs, name=model_name)


def build_student(hparams, sample):
    """The distilled variant (tf_optimize_export): four hidden units, trained on the teacher's values."""
    return build_model({**hparams, "hidden_units": 4}, sample, model_name="diabetes_student")
