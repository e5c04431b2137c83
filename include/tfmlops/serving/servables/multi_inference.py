"""The MultiInference API on a loaded version, mirroring TF Serving's
``tensorflow_serving/servables/tensorflow/multi_inference.cc`` (``TensorFlowMultiInferenceRunner::
Infer``): Classify and Regress tasks on signatures of one model, all fed the same serialized
``tf.Example`` input in one session run, with its error messages.
"""

from __future__ import annotations

from ..errors import Code, StatusError, invalid_argument
from .classifier import post_process_classification, pre_process_classification
from .regressor import post_process_regression, pre_process_regression
from .util import (CLASSIFY_METHOD, DEFAULT_SIGNATURE, REGRESS_METHOD, record_request_example_count,
                   serialized_examples)

_PRE = {CLASSIFY_METHOD: pre_process_classification, REGRESS_METHOD: pre_process_regression}


def run_multi_inference(servable, request, timeout_ms=None) -> list:
    """Returns one ``(task, signature, result)`` per task, ``result`` being
    :func:`~.classifier.post_process_classification`'s or :func:`~.regressor.post_process_regression`'s."""
    model_name = ""
    seen, feeds, fetches, plans = set(), set(), set(), []
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid_argument("Found ModelSpec with an empty model name.")
        if not model_name:
            model_name = task.model_spec.name
        elif model_name != task.model_spec.name:
            raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if name in seen:
            raise invalid_argument(f"Duplicate evaluation of signature: {name}")
        seen.add(name)
        sig = servable.signatures.get(name)
        if sig is None:
            raise invalid_argument(f"Requested signature not found in model graph: {name}")
        pre = _PRE.get(task.method_name)
        if pre is None:
            raise StatusError(Code.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}")
        feed, outs = pre(sig)
        feeds.add(feed)
        fetches.update(outs)
        plans.append((task, sig))
    examples = serialized_examples(request.input)
    feeds, fetches = tuple(sorted(feeds)), tuple(sorted(fetches))
    outputs = dict(zip(fetches, servable.run(feeds, [examples] * len(feeds), fetches, timeout_ms)))
    n = len(examples)
    record_request_example_count(servable.name, n)
    results = []
    for task, sig in plans:
        if task.method_name == CLASSIFY_METHOD:
            results.append((task, sig, post_process_classification(sig, n, outputs)))
        else:
            results.append((task, sig, post_process_regression(sig, n, outputs)))
    return results
