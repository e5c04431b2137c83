"""The Predict API on a loaded version, mirroring TF Serving's
``tensorflow_serving/servables/tensorflow/predict_util.cc`` (``RunPredict``): signature (and,
with ``--enable_signature_method_name_check``, method-name) check, inputs matched to the signature
by alias with TF Serving's error messages, optional ``output_filter``, one session run (through the
batcher when batching is on). Input shapes are not checked against the signature: like TF
Serving's ``Session::Run``, the graph's ops decide what they accept.
"""

from __future__ import annotations

from .. import tensors as T
from ..errors import Code, StatusError, invalid_argument
from .util import (CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD, timed_run,
                   signature_method_name_check_feature)


def run_predict(servable, signature_name: str, inputs: dict, output_filter=(), timeout_ms=None):
    """Returns (resolved signature name, {alias: ndarray})."""
    sig = servable.signature(signature_name)
    if signature_method_name_check_feature() and sig.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD,
                                                                         REGRESS_METHOD):
        raise StatusError(Code.INTERNAL, (
            "Expected prediction signature method_name to be one of {"
            f"{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {sig.method_name}"))
    if len(inputs) != len(sig.inputs):
        req = sorted(inputs)
        sig_in = list(sig.sorted_input_aliases)
        extra = sorted(set(req) - set(sig_in))
        missing = sorted(set(sig_in) - set(req))
        raise invalid_argument(
            f"input size does not match signature: {len(inputs)}!={len(sig_in)} "
            f"len({{{','.join(req)}}}) != len({{{','.join(sig_in)}}}). "
            f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.")
    feeds, values = [], []
    for i, alias in enumerate(sorted(inputs)):
        spec = sig.inputs.get(alias)
        if spec is None:
            raise invalid_argument(
                f"input tensor alias not found in signature: {alias}. Inputs expected to be in "
                f"the set {{{','.join(sig.sorted_input_aliases)}}}.")
        arr = inputs[alias]
        want = T.NP_OF_DT.get(spec.dtype)
        if want is not None and arr.dtype != want:
            if spec.dtype == T.DT_STRING and arr.dtype.kind in ("U", "S"):
                arr = T.to_string_array(arr)
            else:
                got = T.DTYPE_SHORT.get(T.dt_of_numpy(arr), str(arr.dtype))
                raise invalid_argument(
                    f"Expects arg[{i}] to be {T.DTYPE_SHORT.get(spec.dtype)} but {got} is provided")
        feeds.append(spec.tensor_name)
        values.append(arr)
    if output_filter:
        aliases, seen = [], set()
        for alias in output_filter:
            if alias not in sig.outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {alias} Outputs expected to be "
                    f"in the set {{{','.join(sorted(sig.outputs))}}}.")
            if alias in seen:
                raise invalid_argument(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
            aliases.append(alias)
    else:
        aliases = sorted(sig.outputs)
    fetches = tuple(sig.outputs[a].tensor_name for a in aliases)
    results = timed_run(servable, "Predict", tuple(feeds), values, fetches, timeout_ms)
    return sig.name, dict(zip(aliases, results))
