"""A text classifier on raw strings: which section does a short product review belong to?

Data: ``data/examples/reviews.jsonl`` (synthetic, made by ``scripts/make_example_data.py``): one
JSON object per line with ``text``, ``section`` (0-2) and ``split``. Its own ``load_data`` returns
an unbatched ``tf.data.Dataset`` of ``(features, label)``. TextVectorization, adapted on the
training sample, lives inside the model, so clients send the raw text.
"""

import json

import numpy as np
import tf_keras as keras

TASK = "multiclass"
INPUTS = {"text": ("string", [])}
LABEL = "section"
CLASS_NAMES = ["kitchen", "electronics", "garden"]
HPARAMS = {"epochs": 8, "batch_size": 32, "learning_rate": 1e-2, "max_tokens": 500}
GATE = {"metric": "accuracy", "threshold": 0.8, "tolerance": 0.03}
# tf_hparam_search: the ranges searched when the form gives none
SEARCH_SPACE = {"learning_rate": {"type": "float", "low": 2e-3, "high": 3e-2, "log": True},
                "max_tokens": {"type": "categorical", "choices": [250, 500, 1000]}}

# Optional: the model card's intended use and known limitations (read by the card step)
MODEL_CARD = {
    "purpose": "Sort a short English product review into one of three shop sections (kitchen, electronics, "
               "garden) from its raw text — a demo of a text classifier on string inputs.",
    "users": "Platform demos and tests (raw strings in, TextVectorization inside the model).",
    "out_of_scope": "Real reviews, other languages, sentiment or any other question about a review: the texts are "
                    "synthetic.",
    "limitations": [
        "Trained and evaluated on synthetic reviews (scripts/make_example_data.py: filler words, an item of the "
        "section, an opinion): its accuracy says nothing about real reviews.",
        "A bag of words of at most max_tokens words: unknown words are ignored, word order is not seen.",
        "Probabilities are softmax outputs, not calibrated; the model always answers one of the three sections.",
    ],
}


def load_data(uri, split):
    import tensorflow as tf

    if split == "validation":
        return None
    texts, labels = [], []
    with open(uri, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["split"] == split:
                texts.append(row["text"])
                labels.append(int(row["section"]))
    return tf.data.Dataset.from_tensor_slices(({"text": np.array(texts, dtype=object)},
                                               np.array(labels, dtype=np.int64)))


def build_model(hparams, sample):
    text = keras.Input(shape=(), name="text", dtype="string")
    vectorize = keras.layers.TextVectorization(max_tokens=int(hparams["max_tokens"]), output_mode="multi_hot",
                                               name="vectorize")
    vectorize.adapt(sample["text"])
    x = vectorize(text)
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="probabilities")(x)
    return keras.Model(text, outputs, name="reviews")
