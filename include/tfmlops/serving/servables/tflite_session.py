"""A TensorFlow Lite model (``<version>/model.tflite``, served with ``--prefer_tflite_model``) run
through LiteRT (``ai_edge_litert``), mirroring TF Serving's
``tensorflow_serving/servables/tensorflow/tflite_session.cc`` (``TfLiteSession``):

* Signatures: the TF ``SignatureDef`` map the TFLite converter stores in the model's
  ``signature_defs_metadata`` (a flexbuffer map of serialized SignatureDefs; tensor names are
  matched to the interpreter's, dropping a ``:0`` suffix when needed, as ``FixTfLiteTensorName``
  does), or, without one, a generated ``serving_default`` (predict) signature whose inputs and
  outputs are the model's tensors keyed by their names without the ``:N`` suffix.
* A run feeds tensors by name; an input whose shape differs from the interpreter's is resized
  (``ResizeInputTensor`` + ``AllocateTensors``), string inputs included, and every requested
  output is returned with the shape the interpreter produced.
* Interpreters are pooled: up to ``--num_tflite_pools`` (default: the number of CPUs), each used by
  one request at a time.

Deviations: LiteRT's Python interpreter has no ``ParseExample`` custom op (TF Serving registers
one), so TFLite models that parse ``tf.Example`` input do not load;
``--num_tflite_interpreters_per_pool`` (TfLiteSession's internal batch scheduler) has no effect;
the ``RunOptions`` timeout does not apply to TFLite runs (as in TF Serving).
"""

from __future__ import annotations

import os
import queue
import threading

import numpy as np

from .. import tensors as T
from ..errors import Code, StatusError, invalid_argument
from ..sources.storage_path import TFLITE_MODEL_FILENAME
from .util import DEFAULT_SIGNATURE, PREDICT_METHOD

SIGNATURE_DEFS_METADATA = "signature_defs_metadata"

# TfLiteTypeToTfType (numpy dtypes the LiteRT interpreter reports)
_DT_OF_NP = {np.dtype(np.float32): T.DT_FLOAT, np.dtype(np.int32): T.DT_INT32, np.dtype(np.uint8): T.DT_UINT8,
             np.dtype(np.int64): T.DT_INT64, np.dtype(np.bool_): T.DT_BOOL, np.dtype(np.int16): T.DT_INT16,
             np.dtype(np.complex64): T.DT_COMPLEX64, np.dtype(np.int8): T.DT_INT8}


def _dt(np_type) -> int:
    dt = np.dtype(np_type)
    if dt.kind in "SOU":
        return T.DT_STRING
    if dt not in _DT_OF_NP:
        raise StatusError(Code.INTERNAL, f"Unknown TfLite type: {dt}")
    return _DT_OF_NP[dt]


def _legacy_name(tf_name: str) -> str:
    """TfToTfLiteLegacyTensorName: ``x:0`` -> ``x``."""
    return tf_name.split(":", 1)[0]


def _fix_name(index: dict, name: str) -> str:
    if name in index:
        return name
    legacy = _legacy_name(name)
    if legacy in index:
        return legacy
    raise StatusError(Code.INTERNAL, f"Unknown tensor '{name}'.")


def _tensor_index(index: dict, name: str, message: str) -> int:
    """The interpreter's index of tensor ``name``; ``message`` formats the error (``{name}``, ``{error}``)."""
    try:
        return index[_fix_name(index, name)]
    except StatusError as exc:
        raise StatusError(exc.code, message.format(name=name, error=exc.message)) from None


def _tensor_info(detail, info) -> None:
    info.name = detail["name"]
    info.dtype = _dt(detail["dtype"])
    for d in detail["shape"]:
        info.tensor_shape.dim.add().size = int(d)


def _metadata_signature_defs(model_bytes: bytes) -> dict:
    """``tflite::GetSignatureDefMap``: {name: SignatureDef} from the model's metadata."""
    from ai_edge_litert import schema_py_generated as schema
    from flatbuffers import flexbuffers
    from tensorflow.core.protobuf import meta_graph_pb2

    model = schema.Model.GetRootAsModel(model_bytes, 0)
    for i in range(model.MetadataLength()):
        md = model.Metadata(i)
        if md.Name() != SIGNATURE_DEFS_METADATA.encode():
            continue
        data = model.Buffers(md.Buffer()).DataAsNumpy().tobytes()
        out = {}
        for name, blob in flexbuffers.Loads(data).items():
            sig = meta_graph_pb2.SignatureDef()
            sig.ParseFromString(blob if isinstance(blob, bytes) else bytes(blob, "latin-1"))
            out[name] = sig
        return out
    return {}


class TfLiteSession:
    """Signatures and runs of one ``model.tflite`` (the session half of a loaded version)."""

    def __init__(self, path: str, num_interpreters: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        with open(os.path.join(path, TFLITE_MODEL_FILENAME), "rb") as fh:
            model_bytes = fh.read()
        def new_interpreter():
            it = Interpreter(model_content=model_bytes)
            it.allocate_tensors()
            return it, {d["index"]: tuple(d["shape"]) for d in it.get_input_details()}

        self._new_interpreter = new_interpreter
        try:
            first = new_interpreter()
        except (ValueError, RuntimeError) as exc:
            if "op" in str(exc):  # the model parsed; an op has no kernel here
                raise StatusError(Code.INTERNAL, f"Cannot build Interpreter from buffer. {exc}") from None
            raise invalid_argument(f"Cannot build FlatBufferModel from buffer. {exc}") from None
        ins = {d["name"]: d for d in first[0].get_input_details()}
        outs = {d["name"]: d for d in first[0].get_output_details()}
        self._input_index = {n: d["index"] for n, d in ins.items()}
        self._output_index = {n: d["index"] for n, d in outs.items()}
        try:
            sigs = _metadata_signature_defs(model_bytes)
        except Exception as exc:  # noqa: BLE001 - any unreadable metadata is the model's fault
            raise invalid_argument(f"Invalid SignatureDefs found in TfLite model: {exc}") from None
        if sigs:
            for sig in sigs.values():
                for kind, index in (("input", self._input_index), ("output", self._output_index)):
                    for alias, info in (sig.inputs if kind == "input" else sig.outputs).items():
                        try:
                            info.name = _fix_name(index, info.name)
                        except StatusError as exc:
                            raise StatusError(exc.code, f"{exc.message}\n\tSignature {kind} {alias} references "
                                                        "an unknown tensor") from None
        else:
            from tensorflow.core.protobuf import meta_graph_pb2

            sig = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
            for name, d in ins.items():
                _tensor_info(d, sig.inputs[_legacy_name(name)])
            for name, d in outs.items():
                _tensor_info(d, sig.outputs[_legacy_name(name)])
            sigs = {DEFAULT_SIGNATURE: sig}
        self.signature_defs = sigs
        self._pool: queue.LifoQueue = queue.LifoQueue()
        self._pool.put(first)
        self._created = 1
        self._max = max(1, num_interpreters or os.cpu_count() or 1)
        self._pool_lock = threading.Lock()

    def _interpreter(self):
        """An idle (interpreter, {input index: current shape}) pair, created if under the limit."""
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            pass
        with self._pool_lock:
            if self._created < self._max:
                self._created += 1
                return self._new_interpreter()
        return self._pool.get()

    def make_runner(self, feeds: tuple, fetches: tuple):
        """``TfLiteSession::Run`` for these tensor names: ``run(values, timeout_ms=None) -> [arrays]``."""
        inputs = [_tensor_index(self._input_index, name, "{error}\n\tMissing input TFLite tensor: {name}")
                  for name in feeds]
        outputs = [_tensor_index(self._output_index, name, "Missing output TFLite tensor: {name}: {error}")
                   for name in fetches]

        def run(values: list, timeout_ms=None) -> list:
            entry = self._interpreter()
            it, shapes = entry
            try:
                resized = False
                for index, value in zip(inputs, values):
                    if shapes.get(index) != value.shape:
                        it.resize_tensor_input(index, list(value.shape), strict=False)
                        shapes[index] = value.shape
                        resized = True
                if resized:
                    it.allocate_tensors()
                for index, value in zip(inputs, values):
                    it.set_tensor(index, value.astype(np.bytes_) if value.dtype == object else value)
                it.invoke()
                result = []
                for index in outputs:
                    arr = it.get_tensor(index)
                    result.append(arr.astype(object) if arr.dtype.kind in "SU" else arr)
                return result
            except (ValueError, RuntimeError) as exc:
                shapes.clear()  # resize everything on the next run
                raise StatusError(Code.INTERNAL, f"Failed to invoke TfLite interpreter: {exc}") from None
            finally:
                self._pool.put(entry)

        return run

    def close(self) -> None:
        while True:
            try:
                self._pool.get_nowait()
            except queue.Empty:
                return
