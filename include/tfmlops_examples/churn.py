"""A tabular binary classifier with numeric and string columns: will a customer churn?

Data: ``data/examples/churn.parquet`` (synthetic, made by ``scripts/make_example_data.py``), read
by the platform's default Parquet loader (one column per input, the label, a ``split`` column).
Preprocessing lives inside the model — Normalization for numbers, StringLookup for strings, both
adapted on the training sample the platform passes to ``build_model`` — so the served model takes
raw values, strings included.
"""

import tf_keras as keras

TASK = "binary"
INPUTS = {
    "tenure_months": ("float32", []),
    "monthly_charges": ("float32", []),
    "support_calls": ("int64", []),
    "plan": ("string", []),
    "region": ("string", []),
}
LABEL = "churned"
CLASS_NAMES = ["stays", "churns"]
HPARAMS = {"epochs": 10, "batch_size": 64, "learning_rate": 5e-3, "hidden_units": 16}
GATE = {"metric": "auc", "threshold": 0.75, "tolerance": 0.02}
NUMERIC = ("tenure_months", "monthly_charges", "support_calls")
CATEGORICAL = ("plan", "region")


def build_model(hparams, sample):
    inputs = {name: keras.Input(shape=(), name=name, dtype=dtype) for name, (dtype, _) in INPUTS.items()}
    parts = []
    for name in NUMERIC:
        norm = keras.layers.Normalization(axis=None, name=f"norm_{name}")
        norm.adapt(sample[name].astype("float32"))
        parts.append(keras.layers.Reshape((1,))(norm(inputs[name])))  # casts int64 to float32
    for name in CATEGORICAL:
        lookup = keras.layers.StringLookup(output_mode="one_hot", name=f"lookup_{name}")
        lookup.adapt(sample[name])
        parts.append(lookup(inputs[name]))
    x = keras.layers.Concatenate()(parts)
    x = keras.layers.Dense(int(hparams["hidden_units"]), activation="relu")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="churn_probability")(x)
    return keras.Model(inputs, outputs, name="churn")
