"""The Regress API on a loaded version, mirroring TF Serving's
``tensorflow_serving/servables/tensorflow/regressor.cc`` (``GetRegressionSignatureDef``,
``PreProcessRegression``, ``PostProcessRegressionResult``, ``RunRegress``), with its error
messages. The pre/post-processing halves are shared with :mod:`.multi_inference`.
"""

from __future__ import annotations

import numpy as np

from ..errors import invalid_argument
from .util import (REGRESS_METHOD, check_method_name, dtype_name, examples_signature, timed_run,
                   serialized_examples)

REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"


def pre_process_regression(sig):
    """``PreProcessRegression``: (input tensor name, output tensor names)."""
    check_method_name(sig, REGRESS_METHOD, "regression")
    if len(sig.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if REGRESS_INPUTS not in sig.inputs:
        raise invalid_argument(f"No regression inputs found in SignatureDef: {sig.proto}")
    if REGRESS_OUTPUTS not in sig.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {sig.proto}")
    return sig.inputs[REGRESS_INPUTS].tensor_name, (sig.outputs[REGRESS_OUTPUTS].tensor_name,)


def get_regression_signature(signatures: dict, signature_name: str):
    sig = examples_signature(signatures, signature_name, REGRESS_METHOD, "regression")
    pre_process_regression(sig)
    return sig


def post_process_regression(sig, n: int, outputs: dict) -> list:
    """``PostProcessRegressionResult``: ``outputs`` maps fetched tensor names to arrays; returns
    one float per example."""
    name = sig.outputs[REGRESS_OUTPUTS].tensor_name
    out = outputs.get(name)
    if out is None:
        raise invalid_argument(f"Could not find output tensor '{name}'")
    if not (out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1)):
        raise invalid_argument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"[{','.join(map(str, out.shape))}]")
    if out.shape[0] != n:
        raise invalid_argument(f"Input batch size did not match output batch size: {n} vs. {out.shape[0]}")
    if out.dtype != np.float32:
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {dtype_name(out)}")
    return [float(v) for v in out.reshape(-1)]


def run_regress(servable, signature_name: str, input_proto, timeout_ms=None):
    """Returns (signature name, one float per example)."""
    sig = examples_signature(servable.signatures, signature_name, REGRESS_METHOD, "regression")
    feed, fetches = pre_process_regression(sig)
    examples = serialized_examples(input_proto)
    outs = dict(zip(fetches, timed_run(servable, "Regress", (feed,), [examples], fetches, timeout_ms)))
    return sig.name, post_process_regression(sig, len(examples), outs)
