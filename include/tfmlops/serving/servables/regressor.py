"""The Regress API on a loaded version, mirroring TF Serving's
``tensorflow_serving/servables/tensorflow/regressor.cc`` (``GetRegressionSignature``,
``RunRegress`` and the output checks of its ``TensorFlowRegressor``), with its error messages.
"""

from __future__ import annotations

import numpy as np

from ..errors import failed_precondition, invalid_argument
from .util import REGRESS_METHOD, examples_signature, serialized_examples

REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"


def get_regression_signature(signatures: dict, signature_name: str):
    sig = examples_signature(signatures, signature_name, REGRESS_METHOD, "regression")
    if len(sig.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if REGRESS_INPUTS not in sig.inputs:
        raise failed_precondition(f"No regression inputs found in SignatureDef: {sig.proto}")
    if REGRESS_OUTPUTS not in sig.outputs:
        raise failed_precondition(f"No regression outputs found in SignatureDef: {sig.proto}")
    return sig


def run_regress(servable, signature_name: str, input_proto, timeout_ms=None):
    """Returns (signature name, one float per example)."""
    sig = get_regression_signature(servable.signatures, signature_name)
    examples = serialized_examples(input_proto)
    n = len(examples)
    (out,) = servable.run((sig.inputs[REGRESS_INPUTS].tensor_name,), [examples],
                          (sig.outputs[REGRESS_OUTPUTS].tensor_name,), timeout_ms)
    if out.dtype != np.float32:
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {out.dtype}")
    if not (out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1)):
        raise invalid_argument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"[{','.join(map(str, out.shape))}]")
    if out.shape[0] != n:
        raise invalid_argument(f"Input batch size did not match output batch size: {n} vs. {out.shape[0]}")
    return sig.name, [float(v) for v in out.reshape(-1)]
