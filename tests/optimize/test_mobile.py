"""Mobile bundles: TFLite metadata written and read back, every file of the bundle, and the bundle
run from its own files against the float model."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from tfmlops import optimize
from tfmlops.formats.runtimes import LiteRTModel
from tfmlops.mobile import bundle
from tfmlops.mobile import metadata as md

FILES = {"model.tflite", "labels.txt", "io.json", "android/build.gradle.kts", "android/DigitClassifier.kt",
         "ios/Podfile", "ios/DigitClassifier.swift", "README.md"}


@pytest.fixture(scope="module")
def flatbuffers(small, float_model):
    return {"int8": optimize.to_tflite(float_model, "int8", optimize.representative_sample(small.x_train, 100)),
            "float16": optimize.to_tflite(float_model, "float16")}


@pytest.mark.parametrize("variant", ["int8", "float16"])
def test_bundle_runs_from_its_own_files_like_the_float_model(small, float_predict, flatbuffers, tmp_path, variant):
    path = bundle.build(flatbuffers[variant], tmp_path, "digits", 4, variant)
    assert path.name == f"digits-v4-{variant}-mobile.zip"
    with zipfile.ZipFile(path) as archive:
        assert set(archive.namelist()) == FILES
        model, spec = archive.read("model.tflite"), json.loads(archive.read("io.json"))
        kotlin, swift = archive.read("android/DigitClassifier.kt").decode(), archive.read("ios/DigitClassifier.swift")

    info = md.read(model)  # the metadata the apps read
    assert info.min_parser_version == "1.0.0" and info.version == "4"
    assert (info.inputs[0].name, info.inputs[0].mean, info.inputs[0].std) == ("pixels", [0.0], [255.0])
    assert info.outputs[0].label_file == "labels.txt"
    assert info.files["labels.txt"].decode().split() == [str(d) for d in range(10)]
    # the metadata and the appended zip change nothing for the interpreter
    x = np.ascontiguousarray(small.x_test, np.float32)
    assert np.array_equal(LiteRTModel(model)(x), LiteRTModel(flatbuffers[variant])(x))

    if variant == "int8":
        assert spec["input"]["dtype"] == "int8" and spec["input"]["quantization"]["scale"] > 0
        assert spec["output"]["dtype"] == "int8" and "DataType.INT8" in kotlin
    else:
        assert spec["input"]["dtype"] == "float32" and spec["input"]["quantization"] is None
    assert spec["input"]["shape"] == [1, 784] and spec["output"]["shape"] == [1, 10]
    assert "(p - 0.0f) / 255.0f" in kotlin and b"($0 - 0.0) / 255.0" in swift

    pixels = np.round(x * 255.0)
    result = bundle.smoke(path, pixels, float_predict(pixels / 255.0))
    assert result["passed"] and result["labels_match"] and result["argmax_agreement"] >= 0.99, result
    assert bundle.build(flatbuffers[variant], tmp_path / "again", "digits", 4, variant).read_bytes() == \
        path.read_bytes()  # reproducible


def test_smoke_reads_the_normalization_from_the_metadata(small, float_predict, flatbuffers, tmp_path, monkeypatch):
    """A bundle whose metadata says the wrong normalization (mean 255 instead of 0: inverted pixels)
    fails its smoke run: the check really takes the preprocessing from the model file."""
    monkeypatch.setattr(bundle, "PIXEL_MEAN", 255.0)
    path = bundle.build(flatbuffers["float16"], tmp_path, "digits", 4, "float16")
    pixels = np.round(np.asarray(small.x_test, np.float32) * 255.0)
    result = bundle.smoke(path, pixels, float_predict(pixels / 255.0))
    assert not result["passed"] and result["argmax_agreement"] < 0.5 and result["normalization"]["mean"] == [255.0]


def test_metadata_errors_are_clear(flatbuffers):
    with pytest.raises(md.MetadataError, match="no TFLITE_METADATA"):
        md.read(flatbuffers["int8"])
    with pytest.raises(md.MetadataError, match="not a TFLite flatbuffer"):
        md.read(b"PK\x03\x04 definitely not a model")
    info = md.ModelInfo("m", "", "1", "", "", [md.TensorInfo("pixels", "")],
                        [md.TensorInfo("probabilities", "", label_file="labels.txt")])
    with pytest.raises(md.MetadataError, match="labels.txt"):
        md.populate(flatbuffers["int8"], info)
    with pytest.raises(ValueError, match="unknown mobile target"):
        bundle.build(flatbuffers["int8"], ".", "m", 1, "dynamic_range")
