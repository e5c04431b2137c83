"""Write a model in each format. Each writer takes the model (a tf_keras model, or TFLite bytes
for the quantized variants) and an empty output folder, and returns that folder."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

import tfmlops  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from tfmlops.export import INPUT_NAME, export_saved_model

TFJS_QUANTIZATION = {"tfjs_layers": None, "tfjs_layers_uint8": {"uint8": True},
                     "tfjs_layers_float16": {"float16": True}}
ONNX_OPSET = 17


def _fresh(out: Path) -> Path:
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def _input_spec(model):
    import tensorflow as tf

    return tf.TensorSpec([None, int(model.inputs[0].shape[-1])], tf.float32, name=INPUT_NAME)


def write_saved_model(model, out: Path, smoke_inputs: np.ndarray) -> Path:
    """The serving SavedModel (``serving_default``: ``pixels`` → ``probabilities``) + smoke.json."""
    export_saved_model(model, out, smoke_inputs, warmup_inputs=smoke_inputs)
    return Path(out)


def write_keras(model, out: Path) -> Path:
    model.save(str(_fresh(out) / "model.keras"))
    return Path(out)


def write_h5(model, out: Path) -> Path:
    model.save(str(_fresh(out) / "model.h5"), save_format="h5")
    return Path(out)


def write_tflite(content: bytes, out: Path) -> Path:
    (_fresh(out) / "model.tflite").write_bytes(content)
    return Path(out)


def write_onnx(model, out: Path) -> Path:
    """tf2onnx ``from_keras`` (works on tf_keras models; fails on Keras 3)."""
    import tf2onnx

    out = _fresh(out)
    tf2onnx.convert.from_keras(model, input_signature=[_input_spec(model)], opset=ONNX_OPSET,
                               output_path=str(out / "model.onnx"))
    return out


def write_tfjs_layers(model, out: Path, quantization: dict | None = None) -> Path:
    """TF.js layers model (``model.json`` + weight shards); ``quantization`` e.g. ``{"uint8": True}``."""
    from tfmlops.tfjs_compat import import_tensorflowjs

    tfjs = import_tensorflowjs()
    out = _fresh(out)
    tfjs.converters.save_keras_model(model, str(out), quantization_dtype_map=quantization)
    return out


def write_tfjs_graph(model, out: Path) -> Path:
    """TF.js graph model converted from the serving SavedModel (signature ``serving_default``)."""
    import tensorflow as tf

    from tfmlops.tfjs_compat import import_tensorflowjs

    tfjs = import_tensorflowjs()
    out = _fresh(out)
    with tempfile.TemporaryDirectory() as tmp:
        spec = _input_spec(model)

        @tf.function(input_signature=[spec])
        def serve(pixels):
            return {"probabilities": model(pixels, training=False)}

        tf.saved_model.save(model, tmp, signatures={"serving_default": serve})
        tfjs.converters.convert_tf_saved_model(tmp, str(out), signature_def="serving_default",
                                               saved_model_tags="serve")
    return out


def write(fmt: str, out: Path, model=None, tflite_content: bytes | None = None,
          smoke_inputs: np.ndarray | None = None) -> Path:
    """Write ``model`` (or ``tflite_content`` for a quantized variant) as ``fmt`` into ``out``."""
    if fmt == "tflite":
        if tflite_content is None:
            from tfmlops.optimize import to_tflite

            tflite_content = to_tflite(model)
        return write_tflite(tflite_content, out)
    if model is None:
        raise ValueError(f"format {fmt} needs a Keras model")
    if fmt == "saved_model":
        return write_saved_model(model, out, smoke_inputs)
    if fmt == "keras":
        return write_keras(model, out)
    if fmt == "h5":
        return write_h5(model, out)
    if fmt == "onnx":
        return write_onnx(model, out)
    if fmt in TFJS_QUANTIZATION:
        return write_tfjs_layers(model, out, TFJS_QUANTIZATION[fmt])
    if fmt == "tfjs_graph":
        return write_tfjs_graph(model, out)
    raise ValueError(f"unknown format {fmt!r}")
