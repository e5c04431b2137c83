"""The model module contract: every kind of broken module is refused with one message naming the
module and the problem (never a stack trace from inside TensorFlow), unknown hyperparameters are
refused with the known ones, the allow-list holds, and a spec survives the registry's tags."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from tfmlops import modelspec
from tfmlops.modelspec import ModelModuleError

GOOD = """
import tf_keras as keras
TASK = {task!r}
INPUTS = {inputs!r}
LABEL = "y"
CLASS_NAMES = {classes!r}
HPARAMS = {{"units": 4}}

def build_model(hparams):
{body}
"""
DENSE = """    x = keras.Input(shape=(3,), name="x")
    return keras.Model(x, keras.layers.Dense({units}, activation={activation!r})(x))"""


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package ``brokenmods`` on sys.path, allowed; ``write(name, source)`` adds a module."""
    root = tmp_path / "brokenmods"
    root.mkdir()
    (root / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(modelspec.PACKAGES_ENV, "brokenmods,tfmlops_examples")

    def write(name: str, source: str) -> str:
        (root / f"{name}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(f"brokenmods.{name}", None)
        return f"brokenmods.{name}"

    yield write
    for key in [k for k in sys.modules if k.startswith("brokenmods")]:
        sys.modules.pop(key)


def module(task="multiclass", inputs=None, classes=("a", "b", "c"), units=3, activation="softmax", body=None):
    return GOOD.format(task=task, inputs=inputs or {"x": ("float32", [3])}, classes=list(classes),
                       body=body or DENSE.format(units=units, activation=activation))


@pytest.mark.parametrize("source, message", [
    ("TASK = 'multiclass'\nINPUTS = {'x': ('float32', [3])}\ndef build_model(h): pass\n",
     "missing required names ['LABEL']"),
    (module(task="ranking"), "TASK 'ranking' is not one of ['multiclass', 'binary', 'regression']"),
    (module(inputs={"x": ("float64", [3])}), "INPUTS['x'] has dtype 'float64'; tf.Example carries only"),
    (module(inputs={"my feature": ("float32", [3])}), "input name 'my feature' cannot be a tensor name"),
    (module(inputs={"x": ("float32", [None])}), "shapes are fixed"),
    (module(task="binary", classes=("only",)), "a binary module has exactly two CLASS_NAMES"),
    (module(task="regression", classes=("a",)), "CLASS_NAMES is for classification"),
    ("import this_package_does_not_exist\n", "importing it failed: ModuleNotFoundError"),
])
def test_contract_errors_in_the_module_are_refused_by_name(package, source, message):
    name = package("bad", source)
    with pytest.raises(ModelModuleError) as excinfo:
        modelspec.read_spec(name)
    assert str(excinfo.value).startswith(f"model module '{name}': ") and message in str(excinfo.value)


@pytest.mark.parametrize("source, message", [
    (module(units=4), "a multiclass model's output must be [batch, 3] (len(CLASS_NAMES)), got [batch, 4]"),
    (module(task="binary", classes=("no", "yes"), units=2, activation="softmax"),
     "a binary model's output must be one sigmoid unit, [batch, 1] or [batch]; got [batch, 2]"),
    (module(body="""    x = keras.Input(shape=(3,), name="features")
    return keras.Model(x, keras.layers.Dense(3, activation="softmax")(x))"""),
     "the model's inputs are named ['features'], INPUTS names ['x']"),
    (module(body="""    import keras as keras3
    x = keras3.Input(shape=(3,), name="x")
    return keras3.Model(x, keras3.layers.Dense(3, activation="softmax")(x))"""),
     "build_model returned a Keras 3 model"),
    (module(body="""    raise ValueError("units must be positive")"""),
     "build_model raised ValueError: units must be positive"),
    (module(body="""    x = keras.Input(shape=(5,), name="x")
    return keras.Model(x, keras.layers.Dense(3, activation="softmax")(x))"""),
     "model input 'x' has shape [5] (without batch), INPUTS says [3]"),
])
def test_contract_errors_in_the_built_model_are_refused_by_name(package, source, message):
    name = package("badmodel", source)
    spec = modelspec.read_spec(name)
    with pytest.raises(ModelModuleError) as excinfo:
        modelspec.build_model(spec, modelspec.import_module(name))
    assert str(excinfo.value).startswith(f"model module '{name}': ") and message in str(excinfo.value)


def test_only_allowed_packages_are_imported(package, monkeypatch):
    with pytest.raises(ModelModuleError, match=r"package 'os' is not allowed; allowed packages: \['brokenmods'"):
        modelspec.read_spec("os.path")
    with pytest.raises(ModelModuleError, match="not a dotted Python module path"):
        modelspec.read_spec("models/../../etc")
    with pytest.raises(ModelModuleError, match="not found on the workers"):
        modelspec.read_spec("brokenmods.nothing_here")
    monkeypatch.delenv(modelspec.PACKAGES_ENV)
    assert modelspec.allowed_packages() == ("tfmlops_examples", "models")


def test_hyperparameters_merge_over_hparams_and_unknown_keys_are_refused():
    spec = modelspec.read_spec("tfmlops_examples.churn", {"epochs": 2, "hidden_units": 8})
    assert (spec.hparams["epochs"], spec.hparams["hidden_units"], spec.hparams["batch_size"]) == (2, 8, 64)
    with pytest.raises(ModelModuleError) as excinfo:
        modelspec.read_spec("tfmlops_examples.churn", '{"hiden_units": 8}')
    assert "hyperparameters ['hiden_units'] are not known to model module 'tfmlops_examples.churn'" in \
        str(excinfo.value) and "'hidden_units'" in str(excinfo.value)
    with pytest.raises(ModelModuleError, match="not valid JSON"):
        modelspec.read_spec("tfmlops_examples.churn", "{epochs: 2}")


def test_the_spec_round_trips_through_registry_tags_and_gates_resolve_by_task():
    spec = modelspec.read_spec("tfmlops_examples.diabetes")
    tags = spec.to_tags()
    assert all(len(v) < 5000 for v in tags.values())
    assert modelspec.ModelSpec.from_tags(tags) == spec
    assert modelspec.ModelSpec.from_tags({"other": "x"}) is None
    assert modelspec.resolve_gate(spec) == {"metric": "rmse", "threshold": 70.0, "tolerance": 3.0,
                                            "higher_is_better": False}
    # another metric of the task: the module's threshold (another unit) no longer applies
    assert modelspec.resolve_gate(spec, metric="r2", tolerance="0.05")["threshold"] is None
    with pytest.raises(ModelModuleError, match=r"gate metric 'accuracy' is not one of regression's metrics"):
        modelspec.resolve_gate(spec, metric="accuracy")
    churn = modelspec.read_spec("tfmlops_examples.churn")
    assert (churn.gate["metric"], churn.output_name, churn.num_classes) == ("auc", "probabilities", 2)


def test_a_changed_module_source_is_reported_with_both_hashes(package):
    name = package("drift", module())
    spec = modelspec.read_spec(name)
    assert modelspec.module_source_changed(spec) is None and modelspec.module_changed_tags(spec) == {}
    package("drift", module() + "\n# edited\n")
    changed = modelspec.module_source_changed(spec)
    assert changed and spec.source_sha256 in changed and "changed since this version was trained" in changed
    assert modelspec.module_changed_tags(spec) == {"model.module_changed": changed}  # on a later DAG's run


def test_default_loaders_and_data_checks_name_the_file_and_problem(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tfmlops import model_data
    from tfmlops.data import DatasetError

    spec = modelspec.read_spec("tfmlops_examples.churn")
    churn = modelspec.import_module(spec.module)
    data, report = model_data.load(spec, churn, "examples/churn.parquet")
    assert data.train.features["plan"].dtype == object and data.train.features["support_calls"].dtype == np.int64
    assert not report["validation_carved"] and report["test_overlap_rows"] == 0
    table = pq.read_table(model_data.resolve_uri("examples/churn.parquet"))
    pq.write_table(table.drop(["region"]), tmp_path / "no_region.parquet")
    with pytest.raises(DatasetError, match=r"no_region.parquet: missing columns \['region'\]"):
        model_data.load(spec, churn, str(tmp_path / "no_region.parquet"))
    labels = table.column("churned").to_numpy().copy()
    labels[0] = 2
    pq.write_table(table.set_column(table.column_names.index("churned"), "churned", pa.array(labels)),
                   tmp_path / "label3.parquet")
    with pytest.raises(DatasetError, match=r"labels span \[0, 2\]; expected \[0, 1\] \(2 classes"):
        model_data.load(spec, churn, str(tmp_path / "label3.parquet"))

    digits = modelspec.read_spec("tfmlops_examples.digits_cnn")
    with pytest.raises(DatasetError, match=r"a 'mnist'/.npz dataset holds one feature array|feature 'image' rows have"):
        model_data.load(digits, object(), "mnist")

    diabetes = modelspec.read_spec("tfmlops_examples.diabetes")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    good = (model_data.data_dir() / "examples" / "diabetes" / "train-00000-of-00001.tfrecord").read_bytes()
    (corrupt / "train-0.tfrecord").write_bytes(good[:5000] + b"\x00" * 64 + good[5064:])
    (corrupt / "test-0.tfrecord").write_bytes(good)
    with pytest.raises(DatasetError, match=r"train-0.tfrecord: cannot read tf.Example records for model module "
                                           r"'tfmlops_examples.diabetes' near record \d+"):
        model_data.load(diabetes, object(), str(corrupt))


CUSTOM_LOOP = """
import numpy as np
import tensorflow as tf
import tf_keras as keras

TASK = "multiclass"
INPUTS = {"x": ("float32", [3])}
LABEL = "y"
CLASS_NAMES = ["a", "b", "c"]
HPARAMS = {"epochs": 3, "batch_size": 16, "outcome": "history"}


def build_model(hparams):
    x = keras.Input(shape=(3,), name="x")
    return keras.Model(x, keras.layers.Dense(3, activation="softmax")(x))


def load_data(uri, split):
    rng = np.random.default_rng({"train": 0, "validation": 1, "test": 2}[split])
    x = rng.normal(size=(96, 3)).astype("float32")
    return {"x": x}, np.argmax(x, axis=1)


def train(model, train_ds, val_ds, hparams, callbacks):
    if hparams["outcome"] == "raise":
        raise RuntimeError("the loop broke")
    if hparams["outcome"] == "nothing":
        return None
    optimizer, loss_of = keras.optimizers.Adam(0.05), keras.losses.SparseCategoricalCrossentropy()
    history = {"loss": [], "val_batches": []}
    for epoch in range(hparams["epochs"]):
        losses = []
        for features, labels in train_ds:
            with tf.GradientTape() as tape:
                loss = loss_of(labels, model(features, training=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
            losses.append(float(loss))
        history["loss"].append(sum(losses) / len(losses))
        history["val_batches"].append(float(sum(1 for _ in val_ds)))
        for callback in callbacks:
            callback.on_epoch_end(epoch, {"loss": history["loss"][-1]})
    return history
"""


def test_a_custom_training_loop_gets_batched_datasets_and_the_callbacks(package):
    """``train(model, train_ds, val_ds, hparams, callbacks)``: the module's own loop on the batched
    splits; the callbacks it calls log each epoch (``on_epoch``: MLflow, a search's pruner); what it
    returns is the history. A loop that raises, or returns no history, is refused naming the module."""
    from tfmlops import model_data, trainer

    name = package("looped", CUSTOM_LOOP)
    spec = modelspec.read_spec(name)
    module = modelspec.import_module(name)
    data, _ = model_data.load(spec, module, "custom")
    epochs = []
    model, history = trainer.train_model(spec, module, data, on_epoch=lambda epoch, logs: epochs.append(
        (epoch, logs["loss"])))
    assert [e for e, _ in epochs] == [1, 2, 3] and [loss for _, loss in epochs] == history["loss"], (epochs, history)
    assert history["loss"][-1] < history["loss"][0], history  # it learned
    assert history["val_batches"] == [6.0] * 3  # 96 validation rows in batches of 16
    assert trainer.metrics(spec, model, data.test)["accuracy"] > 0.5
    for outcome, message in (("raise", "train raised RuntimeError: the loop broke"),
                             ("nothing", "train must return the per-epoch history")):
        broken = modelspec.read_spec(name, {"outcome": outcome})
        with pytest.raises(ModelModuleError, match=message) as err:
            trainer.train_model(broken, module, data)
        assert name in str(err.value)
