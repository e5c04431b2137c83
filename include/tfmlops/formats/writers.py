"""Write a model in each format. Each writer takes the model (a tf_keras model, or TFLite bytes
for the quantized variants) and an empty output folder, and returns that folder."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from pathlib import Path


import tfmlops  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from tfmlops.export import export_saved_model
from tfmlops.formats import NotApplicable

TFJS_QUANTIZATION = {"tfjs_layers": None, "tfjs_layers_uint8": {"uint8": True},
                     "tfjs_layers_float16": {"float16": True}}
ONNX_OPSET = 17


def _fresh(out: Path) -> Path:
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def _input_specs(model, spec) -> list:
    """The raw signature's inputs (never the ``tf.Example`` one: ``ParseExampleV2`` converts to no
    other runtime), in the order of the model's inputs."""
    import tensorflow as tf

    from tfmlops.export import _tf_dtype

    order = [t.name.split(":")[0] for t in model.inputs]
    return [tf.TensorSpec([None, *spec.inputs[name][1]], _tf_dtype(spec.inputs[name][0]), name=name)
            for name in order]


def reason(exc: BaseException) -> str:
    """What a converter's or runtime's error says is unsupported, in one line."""
    text = str(exc)
    select = re.search(r"TF Select ops: ([^\n]+)", text)
    if select:
        return f"needs TF Select ops, which are no TFLite builtins: {select.group(1).strip()}"
    layer = re.search(r"Received a model or layer (\w+) with weights", text)
    if layer:
        return f"{layer.group(1)} keeps state that is no tf.Variable (an adapted vocabulary): the h5 weights " \
               "format, which the TF.js layers converter writes too, cannot store it"
    node = re.search(r"failed \(exit \d+\): (.+)", text)  # a TF.js script's own message
    if node:
        return node.group(1).strip()[:300]
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"{type(exc).__name__}: {first[:300]}"


def _converting(fmt: str):
    """Errors of a conversion say the format does not apply to this model (with what is unsupported)."""
    @contextlib.contextmanager
    def guard():
        try:
            yield
        except NotApplicable:
            raise
        except Exception as exc:  # noqa: BLE001 — every converter raises its own types
            raise NotApplicable(f"{fmt}: {reason(exc)}") from exc
    return guard()


def write_saved_model(model, out: Path, smoke_inputs, spec) -> Path:
    """The serving SavedModel (``serving_default`` on the named inputs, Classify/Regress on
    ``tf.Example``) + smoke.json."""
    export_saved_model(model, out, smoke_inputs, warmup_inputs=smoke_inputs, spec=spec)
    return Path(out)


def write_keras(model, out: Path) -> Path:
    with _converting("keras"):
        model.save(str(_fresh(out) / "model.keras"))
    return Path(out)


def write_h5(model, out: Path) -> Path:
    with _converting("h5"):
        model.save(str(_fresh(out) / "model.h5"), save_format="h5")
    return Path(out)


def write_tflite(content: bytes, out: Path) -> Path:
    (_fresh(out) / "model.tflite").write_bytes(content)
    return Path(out)


def write_onnx(model, out: Path, spec) -> Path:
    """tf2onnx ``from_keras`` on the raw signature's inputs (works on tf_keras models; fails on Keras 3)."""
    import tf2onnx

    out = _fresh(out)
    with _converting("onnx"):
        tf2onnx.convert.from_keras(model, input_signature=_input_specs(model, spec), opset=ONNX_OPSET,
                                   output_path=str(out / "model.onnx"))
    return out


def write_tfjs_layers(model, out: Path, quantization: dict | None = None) -> Path:
    """TF.js layers model (``model.json`` + weight shards); ``quantization`` e.g. ``{"uint8": True}``."""
    from tfmlops.tfjs_compat import import_tensorflowjs

    tfjs = import_tensorflowjs()
    out = _fresh(out)
    with _converting("tfjs layers"):
        tfjs.converters.save_keras_model(model, str(out), quantization_dtype_map=quantization)
    return out


def _serving_root(model, function):
    """The object to save for the TF.js graph converter: the model's variables and only the lookup
    tables ``function`` uses. The converter maps every table of the SavedModel to an input of the
    signature, so a table only ``adapt()`` used (a StringLookup's ``token_counts``) must not be in it
    (it fails with ``Identity is not in graph``)."""
    import tensorflow as tf
    from tensorflow.python.checkpoint.trackable_view import TrackableView
    from tensorflow.python.trackable.resource import TrackableResource

    captured = {t._id for t in function.get_concrete_function().captured_inputs}
    root = tf.Module()
    root.model_variables = list(model.variables)
    root.tables = [obj for obj in TrackableView(model).descendants()
                   if isinstance(obj, TrackableResource) and obj.resource_handle._id in captured]
    return root


def write_tfjs_graph(model, out: Path, spec) -> Path:
    """TF.js graph model converted from a SavedModel of the raw signature (``serving_default``:
    the named inputs → the model's own output)."""
    import tensorflow as tf

    from tfmlops.tfjs_compat import import_tensorflowjs

    tfjs = import_tensorflowjs()
    out = _fresh(out)
    specs = _input_specs(model, spec)
    names = [s.name for s in specs]

    def serve(*args):
        from tfmlops.trainer import inputs_for

        return {spec.output_name: model(inputs_for(model, dict(zip(names, args))), training=False)}

    with tempfile.TemporaryDirectory() as tmp, _converting("tfjs graph"):
        function = tf.function(serve, input_signature=specs)
        tf.saved_model.save(_serving_root(model, function), tmp, signatures={"serving_default": function})
        tfjs.converters.convert_tf_saved_model(tmp, str(out), signature_def="serving_default",
                                               saved_model_tags="serve")
    lookups = _lookups_by_non_flat_keys(model)
    if lookups:
        raise NotApplicable(f"tfjs graph: TF.js looks tables up by 1-D keys only (its HashTable.find returns one "
                            f"value per key, flattened), and {', '.join(lookups)} look up keys of a higher rank")
    return out


def _lookups_by_non_flat_keys(model) -> list[str]:
    """The lookup layers (StringLookup, IntegerLookup, …: a ``lookup_table``) whose keys are not
    [batch]: TF.js's ``LookupTableFindV2`` (tfjs-converter ``HashTable.find``, ``tf.stack`` of one
    value per key) would return them flattened and the model's next op fails on the rank."""
    found = []
    for layer in getattr(model, "submodules", ()):
        if not hasattr(layer, "lookup_table"):
            continue
        try:
            shape = layer.input_shape
        except (AttributeError, RuntimeError):  # never called on its own (inside TextVectorization)
            continue
        if isinstance(shape, tuple) and len(shape) > 1:
            found.append(f"{layer.name} {['batch', *shape[1:]]}")
    return found


def write(fmt: str, out: Path, spec, model=None, tflite_content: bytes | None = None, smoke_inputs=None) -> Path:
    """Write ``model`` (or ``tflite_content`` for a quantized variant) as ``fmt`` into ``out``.
    Raises :class:`~tfmlops.formats.NotApplicable` when the format's converter cannot take the model."""
    if fmt == "tflite":
        if tflite_content is None:
            from tfmlops.optimize import to_tflite

            with _converting("tflite"):
                tflite_content = to_tflite(model)
        return write_tflite(tflite_content, out)
    if model is None:
        raise ValueError(f"format {fmt} needs a Keras model")
    if fmt == "saved_model":
        return write_saved_model(model, out, smoke_inputs, spec)
    if fmt == "keras":
        return write_keras(model, out)
    if fmt == "h5":
        return write_h5(model, out)
    if fmt == "onnx":
        return write_onnx(model, out, spec)
    if fmt in TFJS_QUANTIZATION:
        return write_tfjs_layers(model, out, TFJS_QUANTIZATION[fmt])
    if fmt == "tfjs_graph":
        return write_tfjs_graph(model, out, spec)
    raise ValueError(f"unknown format {fmt!r}")
