"""A model module's ``load_data`` returning a ``tf.data.Dataset`` (issue 25): read into memory while
it is small, streamed (``model_data.ModuleSplit``) once a split holds ``TFMLOPS_STREAM_MIN_MB`` —
picked by row index (sample, validation carve), validated batch by batch, profiled, trained on and
evaluated without ever being whole; a pipeline that breaks is named with its row offset; the
dataset's identity is the module's code and the URI. Two kinds of model: a tabular one with a
string column, and a regressor whose rows are a generator's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tfmlops import model_data, modelspec
from tfmlops.data import DatasetError

ROOT = Path(__file__).resolve().parents[2]

# tabular, a string column and a vector; rows made batch by batch by a generator, then unbatched:
# the URI's query says how many (synthetic?rows=N&fail_at=K: the pipeline raises at row K)
TABULAR = """
from urllib.parse import parse_qs, urlparse

import numpy as np
import tensorflow as tf
import tf_keras as keras

TASK = "binary"
INPUTS = {"x": ("float32", [8]), "city": ("string", [])}
LABEL = "churned"
CLASS_NAMES = ["stays", "churns"]
HPARAMS = {"epochs": 2, "batch_size": 64, "learning_rate": 0.01}
CITIES = np.array([b"paris", b"lyon", b"nice"])


def build_model(hparams, sample):
    x = keras.Input(shape=(8,), name="x")
    city = keras.Input(shape=(), name="city", dtype="string")
    lookup = keras.layers.StringLookup(vocabulary=["paris", "lyon", "nice"], output_mode="one_hot")(city)
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([x, lookup]))
    return keras.Model([x, city], keras.layers.Dense(1, activation="sigmoid")(hidden))


def load_data(uri, split):
    query = {k: int(v[0]) for k, v in parse_qs(urlparse(uri).query).items()}
    if split == "validation" and not query.get("validation"):
        return None  # carved from train
    rows = query.get("rows", 4000) // (4 if split == "test" else 1)
    fail_at = query.get("fail_at", -1) if split == "train" else -1
    seed = {"train": 0, "validation": 1, "test": 2}[split]

    def batches():
        rng = np.random.default_rng(seed)
        for start in range(0, rows, 500):
            if 0 <= fail_at < start + 500:
                raise OSError(f"shard {start // 500} is gone")
            n = min(500, rows - start)
            x = rng.normal(size=(n, 8)).astype("float32")
            x[:, 7] = np.arange(start, start + n)  # the row's index, to see which rows were picked
            city = CITIES[rng.integers(0, 3, n)]
            yield {"x": x, "city": city}, ((x[:, 0] + (city == b"paris")) > 0.5).astype("int64")

    signature = ({"x": tf.TensorSpec((None, 8), tf.float32), "city": tf.TensorSpec((None,), tf.string)},
                 tf.TensorSpec((None,), tf.int64))
    return tf.data.Dataset.from_generator(batches, output_signature=signature).unbatch()
"""

# a regressor whose label is a float; its generator yields one row at a time, a few with NaN
REGRESSOR = """
import numpy as np
import tensorflow as tf
import tf_keras as keras

TASK = "regression"
INPUTS = {"x": ("float32", [4])}
LABEL = "price"
HPARAMS = {"epochs": 1, "batch_size": 32}


def build_model(hparams):
    x = keras.Input(shape=(4,), name="x")
    return keras.Model(x, keras.layers.Dense(1)(x))


def load_data(uri, split):
    if split == "validation":
        return None  # carved from train
    bad_row = 1500 if "nan" in uri and split == "test" else -1

    def rows():
        rng = np.random.default_rng(len(split))
        for i in range(2000):
            x = rng.normal(size=4).astype("float32")
            yield {"x": x}, np.float32(np.nan if i == bad_row else x.sum())

    return tf.data.Dataset.from_generator(rows, output_signature=(
        {"x": tf.TensorSpec((4,), tf.float32)}, tf.TensorSpec((), tf.float32)))
"""


@pytest.fixture
def modules(tmp_path, monkeypatch):
    root = tmp_path / "streammods"
    root.mkdir()
    (root / "__init__.py").write_text("")
    for name, source in (("tabular", TABULAR), ("regressor", REGRESSOR)):
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(modelspec.PACKAGES_ENV, "streammods,tfmlops_examples")
    yield root
    for key in [k for k in sys.modules if k.startswith("streammods")]:
        sys.modules.pop(key)


def load(name: str, uri: str, **kw):
    spec = modelspec.read_spec(f"streammods.{name}")
    return spec, model_data.load(spec, modelspec.import_module(spec.module), uri, **kw)


def rows_of(split) -> np.ndarray:
    return np.concatenate([b.features["x"][:, 7] for _, b in model_data.batches(split)]).astype(int)


def test_a_small_tf_data_result_is_read_into_memory(modules, monkeypatch):
    monkeypatch.setenv("TFMLOPS_STREAM_MIN_MB", "256")
    _, (data, report) = load("tabular", "synthetic?rows=4000")
    assert isinstance(data, model_data.ModelData) and not report.get("streamed")
    assert (report["train_rows"], report["validation_rows"], report["test_rows"]) == (4000, 400, 1000)
    assert data.train.features["city"].dtype == object  # strings as bytes, as every loader gives them


def test_a_large_tf_data_result_streams_picked_by_index_and_trains(modules, monkeypatch, tmp_path):
    from tfmlops import trainer

    monkeypatch.setenv("TFMLOPS_STREAM_MIN_MB", "0.05")  # 4000 rows × 36 bytes pass it
    spec, (data, report) = load("tabular", "synthetic?rows=4000")
    assert isinstance(data, model_data.StreamedData) and report["streamed"] and report["format"] == "tf.data"
    assert isinstance(data.train, model_data.ModuleSplit) and data.validation_carved
    train, validation = rows_of(data.train), rows_of(data.validation)
    # every 10th row of train is validation (validation_split 0.1), the rest train: no row in both
    assert len(validation) == 400 and len(train) == 3600 and not set(train) & set(validation)
    assert set(train) | set(validation) == set(range(4000))
    assert np.all(np.diff(validation) == 10), validation[:20]
    with pytest.raises(DatasetError, match="streams"):
        len(data.train)  # a step that would load it whole says so

    profile = model_data.profile(spec, data)
    assert {n: s["rows"] for n, s in profile["splits"].items()} == {"train": 3600, "validation": 400, "test": 1000}
    assert {k for k, _ in profile["splits"]["train"]["features"]["city"]["top"]} == {"paris", "lyon", "nice"}

    model, history = trainer.train_model(spec, modelspec.import_module(spec.module), data)
    assert len(history["loss"]) == 2 and history["loss"][-1] < history["loss"][0], history
    assert trainer.metrics(spec, model, data.test)["accuracy"] > 0.8  # the label follows x[0] and the city

    # a sample_fraction keeps that share of every split, evenly spaced, the same rows for a seed
    _, (half, _) = load("tabular", "synthetic?rows=4000", sample_fraction=0.5, seed=3)
    _, (again, _) = load("tabular", "synthetic?rows=4000", sample_fraction=0.5, seed=3)
    picked = np.concatenate([rows_of(half.train), rows_of(half.validation)])
    assert len(picked) == 2000 and np.array_equal(picked, np.concatenate([rows_of(again.train),
                                                                          rows_of(again.validation)]))
    assert len(rows_of(half.test)) == 500 and len(rows_of(half.validation)) == 200
    assert half.fingerprint() != data.fingerprint()
    assert half.manifest["module_sha256"] and half.manifest["load_data"] == "streammods.tabular.load_data"

    # tf_optimize_export's sample: drawn each time, never cached (the module's code is its identity, not
    # the bytes it reads, which may change behind the same code and URI)
    monkeypatch.setenv("TFMLOPS_SAMPLE_CACHE", str(tmp_path / "samples"))
    sample = model_data.sampled(data, 100, seed=0)
    assert (len(sample.train), len(sample.validation), len(sample.test)) == (100, 100, 100)
    assert not (tmp_path / "samples").exists()


def test_the_fingerprint_is_the_modules_code_and_the_uri(modules, monkeypatch):
    monkeypatch.setenv("TFMLOPS_STREAM_MIN_MB", "0.05")
    _, (data, _) = load("tabular", "synthetic?rows=4000")
    _, (other_uri, _) = load("tabular", "synthetic?rows=4001")
    assert other_uri.fingerprint() != data.fingerprint()
    (modules / "tabular.py").write_text((modules / "tabular.py").read_text() + "\n# a change\n")
    sys.modules.pop("streammods.tabular", None)
    _, (changed, _) = load("tabular", "synthetic?rows=4000")
    assert changed.fingerprint() != data.fingerprint()


def test_a_broken_pipeline_or_bad_rows_are_named_with_the_row_offset(modules, monkeypatch):
    monkeypatch.setenv("TFMLOPS_STREAM_MIN_MB", "0.05")
    spec, (data, _) = load("tabular", "synthetic?rows=4000&fail_at=2600")
    with pytest.raises(DatasetError, match=r"load_data of model module 'streammods.tabular', split 'train': "
                                           r"reading rows from 2048 on raised .*shard 5 is gone"):
        model_data.profile(spec, data)
    # in memory, the same break is named too (the first rows read before the bound is passed)
    monkeypatch.setenv("TFMLOPS_STREAM_MIN_MB", "256")
    with pytest.raises(DatasetError, match=r"split 'train': reading rows from 2048 on raised .*shard 5 is gone"):
        load("tabular", "synthetic?rows=4000&fail_at=2600")

    monkeypatch.setenv("TFMLOPS_STREAM_MIN_MB", "0.01")
    spec, (data, report) = load("regressor", "prices-nan")
    assert report["streamed"] and data.validation_carved
    with pytest.raises(DatasetError, match=r"split 'test' \(rows 1024\.\.1999\).*price.*NaN or inf values in 1 rows"):
        model_data.profile(spec, data)
    spec, (data, _) = load("regressor", "prices")
    assert model_data.profile(spec, data)["splits"]["test"]["rows"] == 2000
    # no validation split of its own and nothing to carve one with: said before anything reads
    spec = modelspec.read_spec("streammods.regressor", {"validation_split": 0})
    with pytest.raises(DatasetError, match=r"gives no validation split and validation_split is 0.0: give one"):
        model_data.load(spec, modelspec.import_module(spec.module), "prices")


MEMORY = """
import json, os, sys, resource
os.environ["TFMLOPS_STREAM_MIN_MB"] = "16"
from tfmlops import model_data, modelspec, trainer
import tensorflow as tf

def hwm():
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) >> 10

spec = modelspec.read_spec("streammods.tabular", {"epochs": 1, "batch_size": 256})
module = modelspec.import_module(spec.module)

def run(rows):
    data, report = model_data.load(spec, module, f"synthetic?rows={rows}")
    profile = model_data.profile(spec, data)
    trainer.train_model(spec, module, data)
    return report, profile

run(150_000)  # TensorFlow's own memory (kernels, the training step's graph) before the baseline
base = hwm()
report, profile = run(%d)
print(json.dumps({"base_mib": base, "peak_mib": hwm(), "rows": profile["splits"]["train"]["rows"],
                  "streamed": bool(report.get("streamed"))}))
"""


def test_a_streamed_module_dataset_is_never_whole_in_memory(modules):
    """0.8 M rows of 36 bytes (~27 MiB as arrays) through validation, the profile and one epoch,
    after a warm-up run on 0.15 M: the process's peak RSS grows by much less than the dataset (it
    stays flat: measured +0 MiB from 0.3 M to 1.5 M rows)."""
    rows = 800_000
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(modules.parent), str(ROOT / "include"),
                                                       os.environ.get("PYTHONPATH", "")]),
           modelspec.PACKAGES_ENV: "streammods"}
    done = subprocess.run([sys.executable, "-c", MEMORY % rows], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    dataset_mib = rows * 36 / 2**20
    assert got["streamed"] and got["rows"] == rows * 9 // 10, got
    assert got["peak_mib"] - got["base_mib"] < dataset_mib / 2, (got, dataset_mib)
