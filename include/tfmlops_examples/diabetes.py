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


def build_model(hparams, sample):
    inputs = {name: keras.Input(shape=(), name=name, dtype="float32") for name in FEATURES}
    x = keras.layers.Concatenate()([keras.layers.Reshape((1,))(inputs[name]) for name in FEATURES])
    norm = keras.layers.Normalization(name="normalize")
    norm.adapt(np.stack([sample[name] for name in FEATURES], axis=1))
    x = norm(x)
    x = keras.layers.Dense(int(hparams["hidden_units"]), activation="relu")(x)
    outputs = keras.layers.Dense(1, name="progression")(x)
    return keras.Model(inputs, outputs, name="diabetes")
