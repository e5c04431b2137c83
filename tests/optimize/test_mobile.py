"""Mobile bundles: TFLite metadata written and read back, every file of the bundle, and the bundle
run from its own files against the float model — for MNIST (one normalized image input, 10 classes)
and for a tabular regression model (ten named scalar inputs, no labels)."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest

from tfmlops import modelspec
from tfmlops.mobile import bundle
from tfmlops.mobile import metadata as md

MNIST_FILES = {"model.tflite", "labels.txt", "io.json", "android/build.gradle.kts", "android/DigitsModel.kt",
               "ios/Podfile", "ios/DigitsModel.swift", "README.md"}
DIABETES_FILES = {"model.tflite", "io.json", "android/build.gradle.kts", "android/DiabetesModel.kt",
                  "ios/Podfile", "ios/DiabetesModel.swift", "README.md"}
IMAGE_WORDS = re.compile(r"pixel|image|digit|grayscale|mnist|\b784\b|28x28", re.IGNORECASE)


def to_tflite(model, variant: str, representative: dict[str, np.ndarray] | None = None) -> bytes:
    """The flatbuffer of one mobile target, converted from the Keras model (serving_default
    signature named after the model's inputs)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    else:
        rows = len(next(iter(representative.values())))

        def dataset():
            for i in range(rows):
                yield {name: values[i:i + 1] for name, values in representative.items()}

        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if all(values.dtype == np.float32 for values in representative.values()):
            converter.inference_input_type = tf.int8  # int8 in and out only when every input is a float
            converter.inference_output_type = tf.int8
    return converter.convert()


def run_flatbuffer(content: bytes, features: dict[str, np.ndarray]) -> np.ndarray:
    """The raw output of a flatbuffer through its signature runner (no normalization, no quantization)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=content).get_signature_runner("serving_default")
    (out,) = runner(**features).values()
    return out


def read_bundle(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


# ------------------------------------------------------------------ MNIST
@pytest.fixture(scope="module")
def mnist_example_spec():
    return modelspec.read_spec("tfmlops_examples.mnist_mlp")


@pytest.fixture(scope="module")
def mnist_normalization(mnist_example_spec):
    return modelspec.import_module(mnist_example_spec.module).MOBILE_INPUTS


@pytest.fixture(scope="module")
def flatbuffers(small, float_model):
    rng = np.random.default_rng(0)
    sample = np.asarray(small.x_train[rng.choice(len(small.x_train), 100, replace=False)], np.float32)
    return {"int8": to_tflite(float_model, "int8", {"pixels": sample}), "float16": to_tflite(float_model, "float16")}


@pytest.mark.parametrize("variant", ["int8", "float16"])
def test_bundle_runs_from_its_own_files_like_the_float_model(small, float_predict, flatbuffers, mnist_example_spec,
                                                            mnist_normalization, tmp_path, variant):
    path = bundle.build(flatbuffers[variant], tmp_path, "digits", 4, variant, mnist_example_spec,
                        client_normalization=mnist_normalization)
    assert path.name == f"digits-v4-{variant}-mobile.zip"
    files = read_bundle(path)
    assert set(files) == MNIST_FILES
    model, spec = files["model.tflite"], json.loads(files["io.json"])
    kotlin, swift = files["android/DigitsModel.kt"].decode(), files["ios/DigitsModel.swift"].decode()

    info = md.read(model)  # the metadata the apps read
    assert info.min_parser_version == "1.0.0" and info.version == "4"
    assert (info.inputs[0].name, info.inputs[0].mean, info.inputs[0].std) == ("pixels", [0.0], [255.0])
    assert (info.inputs[0].min, info.inputs[0].max) == ([0.0], [1.0])
    assert info.outputs[0].label_file == "labels.txt" and info.outputs[0].label_type == "TENSOR_AXIS_LABELS"
    assert info.files["labels.txt"].decode().split() == [str(d) for d in range(10)]
    assert files["labels.txt"].decode().splitlines() == mnist_example_spec.class_names
    # the metadata and the appended zip change nothing for the interpreter
    x = np.ascontiguousarray(small.x_test, np.float32)
    if variant == "int8":
        q = spec["inputs"][0]["quantization"]
        x = np.clip(np.round(x / q["scale"]) + q["zero_point"], -128, 127).astype(np.int8)
    assert np.array_equal(run_flatbuffer(model, {"pixels": x}), run_flatbuffer(flatbuffers[variant], {"pixels": x}))

    (pixels_io,) = spec["inputs"]
    assert (pixels_io["name"], pixels_io["tensor"]) == ("pixels", "serving_default_pixels:0")
    if variant == "int8":
        assert pixels_io["dtype"] == "int8" and pixels_io["quantization"]["scale"] > 0
        assert spec["output"]["dtype"] == "int8" and "DataType.INT8" in kotlin
    else:
        assert pixels_io["dtype"] == "float32" and pixels_io["quantization"] is None
    assert pixels_io["shape"] == [1, 784] and spec["output"]["shape"] == [1, 10]
    assert pixels_io["normalization"] == {"mean": 0.0, "std": 255.0} and spec["output"]["labels"] == "labels.txt"
    assert "(p - 0.0f) / 255.0f" in kotlin and "($0 - 0.0) / 255.0" in swift
    assert "fun classify(pixels: FloatArray): Pair<String, Float>" in kotlin
    assert "func classify(pixels: [Float]) throws -> (label: String, probability: Float)" in swift
    assert 'runSignature(feeds, mapOf<String, Any>("probabilities" to out), SIGNATURE)' in kotlin
    assert 'signatureRunner(with: "serving_default")' in swift and "pixels 0..255" in files["README.md"].decode()

    pixels = np.round(np.asarray(small.x_test, np.float32) * 255.0)
    result = bundle.smoke(path, {"pixels": pixels}, float_predict(pixels / 255.0), mnist_example_spec)
    assert result["passed"] and result["labels_match"] and result["argmax_agreement"] >= 0.99, result
    assert result["input_dtype"] == ("int8" if variant == "int8" else "float32") and result["rows"] == len(pixels)
    assert result["normalization"] == {"pixels": {"mean": [0.0], "std": [255.0]}}
    assert bundle.build(flatbuffers[variant], tmp_path / "again", "digits", 4, variant, mnist_example_spec,
                        client_normalization=mnist_normalization).read_bytes() == path.read_bytes()  # reproducible


def test_smoke_reads_the_normalization_from_the_metadata(small, float_predict, flatbuffers, mnist_example_spec,
                                                         tmp_path):
    """A bundle whose metadata says the wrong normalization (mean 255 instead of 0: inverted pixels)
    fails its smoke run: the check really takes the preprocessing from the model file."""
    path = bundle.build(flatbuffers["float16"], tmp_path, "digits", 4, "float16", mnist_example_spec,
                        client_normalization={"pixels": {"mean": 255.0, "std": 255.0}})
    pixels = np.round(np.asarray(small.x_test, np.float32) * 255.0)
    result = bundle.smoke(path, {"pixels": pixels}, float_predict(pixels / 255.0), mnist_example_spec)
    assert not result["passed"] and result["argmax_agreement"] < 0.5
    assert result["normalization"]["pixels"]["mean"] == [255.0]


def test_without_a_declared_normalization_inputs_go_in_as_the_model_takes_them(small, float_predict, flatbuffers,
                                                                             mnist_example_spec, tmp_path):
    path = bundle.build(flatbuffers["float16"], tmp_path, "digits", 4, "float16", mnist_example_spec)
    files = read_bundle(path)
    info = md.read(files["model.tflite"])
    assert info.inputs[0].mean is None and info.inputs[0].description == "pixels: float32 [784]"
    assert json.loads(files["io.json"])["inputs"][0]["normalization"] is None
    assert "255" not in files["android/DigitsModel.kt"].decode()
    x = np.asarray(small.x_test, np.float32)
    result = bundle.smoke(path, {"pixels": x}, float_predict(x), mnist_example_spec)
    assert result["passed"] and result["normalization"] == {}, result


def test_metadata_and_bundle_errors_are_clear(flatbuffers, mnist_example_spec):
    with pytest.raises(md.MetadataError, match="no TFLITE_METADATA"):
        md.read(flatbuffers["int8"])
    with pytest.raises(md.MetadataError, match="not a TFLite flatbuffer"):
        md.read(b"PK\x03\x04 definitely not a model")
    info = md.ModelInfo("m", "", "1", "", "", [md.TensorInfo("pixels", "")],
                        [md.TensorInfo("probabilities", "", label_file="labels.txt")])
    with pytest.raises(md.MetadataError, match="labels.txt"):
        md.populate(flatbuffers["int8"], info)
    with pytest.raises(ValueError, match="unknown mobile target"):
        bundle.build(flatbuffers["int8"], ".", "m", 1, "dynamic_range", mnist_example_spec)
    with pytest.raises(bundle.BundleError, match="serving_default inputs are"):
        bundle.build(flatbuffers["int8"], ".", "m", 1, "int8", modelspec.read_spec("tfmlops_examples.diabetes"))
    with pytest.raises(bundle.BundleError, match="'image', which is not an input"):
        bundle.build(flatbuffers["int8"], ".", "m", 1, "int8", mnist_example_spec,
                     client_normalization={"image": {"mean": 0.0, "std": 255.0}})
    with pytest.raises(bundle.BundleError, match="std non-zero"):
        bundle.build(flatbuffers["int8"], ".", "m", 1, "int8", mnist_example_spec,
                     client_normalization={"pixels": {"mean": 0.0, "std": 0.0}})


def test_class_names_make_identifiers():
    assert [bundle.class_name(n) for n in ("churn", "digits", "my-model_v2", "3d", "", "FraudModel")] == \
        ["ChurnModel", "DigitsModel", "MyModelV2Model", "Model3d", "Model", "FraudModel"]


# ------------------------------------------------------------------ a tabular regression model
@pytest.fixture(scope="module")
def diabetes():
    """tfmlops_examples.diabetes (ten float32 scalars → progression) trained briefly, its test rows
    and the source model's outputs on them, and both mobile flatbuffers."""
    from tfmlops import model_data, trainer

    spec = modelspec.read_spec("tfmlops_examples.diabetes", {"epochs": 20})
    module = modelspec.import_module(spec.module)
    data, _ = model_data.load(spec, module, "examples/diabetes")
    model, _ = trainer.train_model(spec, module, data)
    features = data.test.features
    expected = model.predict(trainer.inputs_for(model, features), verbose=0)
    representative = {k: np.asarray(v, np.float32) for k, v in data.train.features.items()}
    flatbuffers = {"float16": to_tflite(model, "float16"), "int8": to_tflite(model, "int8", representative)}
    return {"spec": spec, "features": features, "expected": expected, "flatbuffers": flatbuffers}


# the largest |difference| from the float model, in progression points (the label's std is ~77; the
# model's outputs span ~20..380): float16 weights are nearly exact (measured 0.04); int8 shares one
# input scale over the ten concatenated inputs (measured 36 on one row, headroom for other CPUs)
MAX_VALUE_DIFF = {"float16": 1.0, "int8": 60.0}


@pytest.mark.parametrize("variant", ["float16", "int8"])
def test_a_tabular_regression_bundle_has_its_inputs_and_no_labels(diabetes, tmp_path, variant):
    spec = diabetes["spec"]
    path = bundle.build(diabetes["flatbuffers"][variant], tmp_path, "diabetes", 2, variant, spec)
    files = read_bundle(path)
    assert set(files) == DIABETES_FILES  # no labels.txt

    io = json.loads(files["io.json"])
    assert [e["name"] for e in io["inputs"]] == list(spec.inputs)  # every input by name, in INPUTS order
    assert sorted(e["index"] for e in io["inputs"]) == list(range(10))
    for entry in io["inputs"]:
        assert entry["tensor"] == f"serving_default_{entry['name']}:0" and entry["shape"] == [1]
        assert (entry["spec_dtype"], entry["spec_shape"], entry["normalization"]) == ("float32", [], None)
        assert entry["dtype"] == ("int8" if variant == "int8" else "float32")
        assert (entry["quantization"] is not None) == (variant == "int8")
    assert io["task"] == "regression" and io["output"]["labels"] is None and io["output"]["shape"] == [1, 1]
    assert "progression" in io["output"]["meaning"]

    info = md.read(files["model.tflite"])
    assert sorted(t.name for t in info.inputs) == sorted(spec.inputs)
    assert all(t.mean is None and t.description == f"{t.name}: float32 []" for t in info.inputs)
    assert info.outputs[0].label_file is None and info.files == {}

    kotlin, swift = files["android/DiabetesModel.kt"].decode(), files["ios/DiabetesModel.swift"].decode()
    readme = files["README.md"].decode()
    for text in (kotlin, swift, readme, files["ios/Podfile"].decode()):
        assert not IMAGE_WORDS.search(text), IMAGE_WORDS.search(text)
        assert "labels.txt" not in text
    assert "fun predict(" + ", ".join(f"{name}: Float" for name in spec.inputs) + "): Float" in kotlin
    assert "func predict(" + ", ".join(f"{name}: Float" for name in spec.inputs) + ") throws -> Float" in swift
    for name in spec.inputs:
        assert f'"{name}" to feedFloats("{name}", floatArrayOf({name}))' in kotlin
        assert f'"{name}": feedFloats("{name}", [{name}])' in swift
        assert f"| `{name}` | float32 | scalar | `serving_default_{name}:0`" in readme
    assert "MetadataExtractor" not in kotlin and "class DiabetesModel(context: Context)" in kotlin

    result = bundle.smoke(path, diabetes["features"], diabetes["expected"], spec,
                          max_value_diff=MAX_VALUE_DIFF[variant])
    assert result["passed"] and result["max_abs_diff"] <= MAX_VALUE_DIFF[variant], result
    assert result["labels_match"] is None and result["argmax_agreement"] is None and result["labels"] is None
    assert result["rows"] == len(diabetes["expected"]) and result["normalization"] == {}
    assert set(result["input_dtypes"]) == set(spec.inputs)
    # the comparison is real: a tolerance below the measured difference fails
    strict = bundle.smoke(path, diabetes["features"], diabetes["expected"], spec,
                          max_value_diff=result["max_abs_diff"] / 2)
    assert not strict["passed"]
    with pytest.raises(ValueError, match="max_value_diff"):
        bundle.smoke(path, diabetes["features"], diabetes["expected"], spec)


# ------------------------------------------------------------------ binary, mixed dtypes
@pytest.fixture(scope="module")
def binary():
    """An untrained binary model over a float scalar, an int64 scalar and a float vector (no
    training: the bundle only has to reproduce it), with rows and its outputs on them."""
    import tf_keras as keras

    spec = modelspec.ModelSpec(module="tests.binary", source_sha256="", task="binary", label="bought",
                               inputs={"amount": ("float32", ()), "visits": ("int64", ()),
                                       "history": ("float32", (3,))},
                               class_names=["keeps browsing", "buys"])
    keras.utils.set_random_seed(0)
    inputs = {"amount": keras.Input(shape=(), name="amount"), "visits": keras.Input(shape=(), name="visits",
                                                                                   dtype="int64"),
              "history": keras.Input(shape=(3,), name="history")}
    visits = keras.layers.Lambda(lambda v: keras.backend.cast(v, "float32"))(inputs["visits"])
    x = keras.layers.Concatenate()([keras.layers.Reshape((1,))(inputs["amount"]), keras.layers.Reshape((1,))(visits),
                                    inputs["history"]])
    outputs = keras.layers.Dense(1, activation="sigmoid", name="bought",
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=0))(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    features = {"amount": rng.normal(size=300).astype(np.float32), "visits": rng.integers(0, 5, 300),
                "history": rng.normal(size=(300, 3)).astype(np.float32)}
    expected = model.predict([features[t.name.split(":")[0]] for t in model.inputs], verbose=0)
    flatbuffers = {"float16": to_tflite(model, "float16"),
                   "int8": to_tflite(model, "int8", {k: v[:100] for k, v in features.items()})}
    return {"spec": spec, "features": features, "expected": expected, "flatbuffers": flatbuffers}


@pytest.mark.parametrize("variant", ["float16", "int8"])
def test_a_binary_bundle_with_mixed_dtypes(binary, tmp_path, variant):
    spec = binary["spec"]
    path = bundle.build(binary["flatbuffers"][variant], tmp_path, "shop-visits", 1, variant, spec,
                        client_normalization={"amount": {"mean": 50.0, "std": 20.0, "description": "basket, EUR"}})
    files = read_bundle(path)
    assert files["labels.txt"].decode().splitlines() == ["keeps browsing", "buys"]
    io = json.loads(files["io.json"])
    dtypes = {e["name"]: e["dtype"] for e in io["inputs"]}
    assert dtypes["visits"] == "int64" and io["inputs"][2]["shape"] == [1, 3]  # int64 is never quantized
    info = md.read(files["model.tflite"])
    # two class names for one probability: not axis labels (the ML binding would refuse them)
    assert (info.outputs[0].label_file, info.outputs[0].label_type) == ("labels.txt", "DESCRIPTIONS")
    amount = next(t for t in info.inputs if t.name == "amount")
    assert (amount.mean, amount.std) == ([50.0], [20.0]) and amount.description.startswith("basket, EUR")
    kotlin, swift = files["android/ShopVisitsModel.kt"].decode(), files["ios/ShopVisitsModel.swift"].decode()
    assert "fun classify(amount: Float, visits: Long, history: FloatArray): Pair<String, Float>" in kotlin
    assert '"visits" to feedLongs("visits", longArrayOf(visits)),' in kotlin and "(p - 50.0f) / 20.0f" in kotlin
    assert "func classify(amount: Float, visits: Int64, history: [Float]) throws" in swift
    assert '"visits": feedLongs([visits]),' in swift and "($0 - 50.0) / 20.0" in swift
    assert "p >= 0.5f" in kotlin and "p >= 0.5 ?" in swift

    features = dict(binary["features"], amount=binary["features"]["amount"] * 20.0 + 50.0)  # as the app has it
    result = bundle.smoke(path, features, binary["expected"], spec)
    assert result["passed"] and result["labels_match"] and result["argmax_agreement"] >= 0.99, result
    assert result["input_dtypes"]["visits"] == "int64" and result["normalization"]["amount"]["mean"] == [50.0]
    mislabeled = modelspec.ModelSpec.from_dict({**spec.to_dict(), "class_names": ["no", "yes"]})
    assert not bundle.smoke(path, features, binary["expected"], mislabeled)["labels_match"]
