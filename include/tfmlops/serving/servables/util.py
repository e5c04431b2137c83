"""What the per-API modules share, mirroring TF Serving's
``tensorflow_serving/servables/tensorflow/util.cc`` (``InputToSerializedExampleTensor``, the
per-model metrics and their ``Record*`` functions) and the signature checks that
``classifier.cc`` and ``regressor.cc`` both start with.

The signature constants are TensorFlow's (``tensorflow/cc/saved_model/signature_constants.h``).

``--enable_signature_method_name_check`` is a process-wide switch, as in TF Serving
(``SetSignatureMethodNameCheckFeature``): off by default, so Classify/Regress/Predict accept a
signature whatever its ``method_name`` (native TF2 models export every signature as
``tensorflow/serving/predict``) as long as its inputs and outputs fit the API.
"""

from __future__ import annotations

import time

import numpy as np

from .. import tensors as T
from ..errors import Code, StatusError, invalid_argument
from ..util import monitoring

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

_signature_method_name_check = False

# util.cc's metrics: names, descriptions, labels and buckets as TF Serving defines them.
_example_counts = monitoring.sampler(
    "/tensorflow/serving/request_example_counts", "The number of tensorflow.Examples per request.",
    ("model",), monitoring.exponential_buckets(1, 2, 15))
_example_count_total = monitoring.counter(
    "/tensorflow/serving/request_example_count_total", "The total number of tensorflow.Examples.", "model")
_model_request_status_count_total = monitoring.counter(
    "/tensorflow/serving/request_count", "The total number of requests.", "model_name", "status")
_runtime_latency = monitoring.sampler(
    "/tensorflow/serving/runtime_latency", "Distribution of wall time (in microseconds) for Tensorflow runtime.",
    ("model_name", "API", "runtime"), monitoring.exponential_buckets(10, 1.8, 33))
_request_latency = monitoring.sampler(
    "/tensorflow/serving/request_latency",
    "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
    ("model_name", "API", "entrypoint"), monitoring.exponential_buckets(10, 1.8, 33))


def record_model_request_count(model_name: str, code: Code) -> None:
    """``RecordModelRequestCount``: one request of ``model_name`` ended with ``code``."""
    _model_request_status_count_total.get_cell(model_name, Code(code).name).increment_by(1)


def record_request_example_count(model_name: str, count: int) -> None:
    _example_counts.get_cell(model_name).add(count)
    _example_count_total.get_cell(model_name).increment_by(count)


def record_runtime_latency(model_name: str, api: str, runtime: str, latency_usec: float) -> None:
    _runtime_latency.get_cell(model_name, api, runtime).add(latency_usec)


def timed_run(servable, api: str, feeds: tuple, values: list, fetches: tuple, timeout_ms=None) -> list:
    """``servable.run`` with its wall time recorded as ``runtime_latency{api, runtime="TF1"}``, as
    ``predict_util.cc`` / ``classifier.cc`` / ``regressor.cc`` record their session runs."""
    start = time.monotonic()
    results = servable.run(feeds, values, fetches, timeout_ms)
    record_runtime_latency(servable.name, api, "TF1", (time.monotonic() - start) * 1e6)
    return results


def record_request_latency(model_name: str, api: str, entrypoint: str, latency_usec: float) -> None:
    _request_latency.get_cell(model_name, api, entrypoint).add(latency_usec)


def set_signature_method_name_check_feature(enabled: bool) -> None:
    global _signature_method_name_check
    _signature_method_name_check = bool(enabled)


def signature_method_name_check_feature() -> bool:
    return _signature_method_name_check


def dtype_name(arr: np.ndarray) -> str:
    """``DataType_Name`` of an output array's type (``DT_FLOAT``, ...)."""
    try:
        return T.DTYPE_NAMES[T.dt_of_numpy(arr)]
    except StatusError:
        return str(arr.dtype)


def serialized_examples(input_proto) -> np.ndarray:
    """The ``tensorflow.serving.Input`` of a Classify/Regress request as a 1-D array of serialized
    ``tf.Example`` protos."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        ser = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        ctx = input_proto.example_list_with_context.context.SerializeToString()
        # Concatenated serializations == proto merge (context fields first).
        ser = [ctx + e.SerializeToString() for e in input_proto.example_list_with_context.examples]
    else:
        ser = []
    if not ser:
        raise invalid_argument("Input is empty.")
    arr = np.empty(len(ser), dtype=object)
    arr[:] = ser
    return arr


def examples_signature(signatures: dict, signature_name: str, method: str, kind: str):
    """The signature a Classify/Regress request names (``serving_default`` if none): it must exist
    (and, with the method-name check on, have the API's ``method`` name). ``kind``
    ("classification", "regression") goes into the error message."""
    name = signature_name or DEFAULT_SIGNATURE
    sig = signatures.get(name)
    if sig is None:
        raise invalid_argument(f"No signature was found with the name: {name}")
    return sig


def check_method_name(sig, method: str, kind: str) -> None:
    """The first check of ``PreProcessClassification``/``PreProcessRegression``, then the input count."""
    if _signature_method_name_check and sig.method_name != method:
        raise invalid_argument(f"Expected {kind} signature method_name to be {method}. Was: {sig.method_name}")
    if len(sig.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
