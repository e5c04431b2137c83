"""What the per-API modules share, mirroring TF Serving's
``tensorflow_serving/servables/tensorflow/util.cc`` (``InputToSerializedExampleTensor``) and
the signature checks that ``classifier.cc`` and ``regressor.cc`` both start with.

The signature constants are TensorFlow's (``tensorflow/cc/saved_model/signature_constants.h``).
"""

from __future__ import annotations

import numpy as np

from ..errors import invalid_argument

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


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
    """The signature a Classify/Regress request names (``serving_default`` if none): it must exist,
    have the API's ``method`` name and one input. ``kind`` ("classification", "regression") goes
    into the error message."""
    name = signature_name or DEFAULT_SIGNATURE
    sig = signatures.get(name)
    if sig is None:
        raise invalid_argument(f"No signature was found with the name: {name}")
    if sig.method_name != method:
        raise invalid_argument(f"Expected {kind} signature method_name to be {method}. Was: {sig.method_name}")
    if len(sig.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    return sig
