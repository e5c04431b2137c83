"""TF.js graph models with lookup tables (StringLookup): the converter is given only the tables the
serving signature uses, TF.js feeds them from the model's initializer, and a lookup TF.js cannot run
is reported as not applicable with the reason, not as a converter crash."""

from __future__ import annotations

import numpy as np
import pytest

from tfmlops.formats import NotApplicable
from tfmlops.formats.verify import export_and_verify
from tfmlops.model_data import Split
from tfmlops.modelspec import ModelSpec

from .conftest import require_tfjs_runtimes

WORDS = np.array(["red", "green", "blue", "cyan", "teal", "navy"], dtype=object)


def _spec() -> ModelSpec:
    return ModelSpec(module="", source_sha256="", task="multiclass", inputs={"colour": ("string", ())},
                     label="label", class_names=["warm", "cool", "other"])


def _model(flat_keys: bool):
    """colour (string) → StringLookup → softmax over 3 classes; the lookup takes [batch] keys (an
    ``int`` lookup feeding an Embedding) or [batch, 1] keys (one-hot, as the churn example does)."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    colour = keras.Input(shape=(), name="colour", dtype="string")
    if flat_keys:
        lookup = keras.layers.StringLookup(vocabulary=list(WORDS[:4]), name="lookup_colour")
        x = keras.layers.Embedding(lookup.vocabulary_size(), 4)(lookup(colour))
    else:
        lookup = keras.layers.StringLookup(vocabulary=list(WORDS[:4]), output_mode="one_hot", name="lookup_colour")
        x = lookup(keras.layers.Reshape((1,))(colour))
    out = keras.layers.Dense(3, activation="softmax", name="probabilities")(x)
    return keras.Model(colour, out)


def _test_split() -> Split:
    rows = np.random.default_rng(0).choice(WORDS, size=40)  # "teal", "navy": out of vocabulary
    return Split({"colour": rows}, np.random.default_rng(1).integers(0, 3, size=40))


def test_a_lookup_on_flat_keys_runs_in_tfjs_node_and_chromium(tmp_path):
    require_tfjs_runtimes(browser=True)
    model = _model(flat_keys=True)
    row = export_and_verify("float", "tfjs_graph", tmp_path / "g", _spec(), _test_split(),
                            lambda f: model.predict(f["colour"], verbose=0), model=model)
    assert [c["runtime"] for c in row["checks"]] == ["tfjs-node", "chromium"]
    assert all(c["passed"] and c["max_abs_diff"] <= 1e-5 for c in row["checks"]), row["checks"]


def test_a_lookup_on_keys_of_higher_rank_is_not_applicable_with_the_reason(tmp_path):
    pytest.importorskip("tensorflowjs")
    model = _model(flat_keys=False)
    with pytest.raises(NotApplicable, match=r"1-D keys only .* lookup_colour \['batch', 1\]"):
        export_and_verify("float", "tfjs_graph", tmp_path / "g", _spec(), _test_split(),
                          lambda f: model.predict(f["colour"], verbose=0), model=model)
