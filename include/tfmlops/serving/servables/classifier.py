"""The Classify API on a loaded version, mirroring TF Serving's
``tensorflow_serving/servables/tensorflow/classifier.cc`` (``GetClassificationSignatureDef``,
``PreProcessClassification``, ``PostProcessClassificationResult``, ``RunClassify``), with its
error messages. The pre/post-processing halves are shared with :mod:`.multi_inference`.
"""

from __future__ import annotations

import numpy as np

from ..errors import invalid_argument
from .util import (CLASSIFY_METHOD, check_method_name, dtype_name, examples_signature, timed_run,
                   serialized_examples)

CLASSIFY_INPUTS = "inputs"
CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"


def pre_process_classification(sig):
    """``PreProcessClassification``: (input tensor name, output tensor names)."""
    check_method_name(sig, CLASSIFY_METHOD, "classification")
    if len(sig.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(sig.outputs)}")
    if CLASSIFY_INPUTS not in sig.inputs:
        raise invalid_argument(f"No classification inputs found in SignatureDef: {sig.proto}")
    if CLASSIFY_OUTPUT_CLASSES not in sig.outputs and CLASSIFY_OUTPUT_SCORES not in sig.outputs:
        raise invalid_argument(
            'Expected classification signature outputs to contain at least one of "classes" or '
            f'"scores". Signature was: {sig.proto}')
    fetches = tuple(sig.outputs[a].tensor_name for a in (CLASSIFY_OUTPUT_CLASSES, CLASSIFY_OUTPUT_SCORES)
                    if a in sig.outputs)
    return sig.inputs[CLASSIFY_INPUTS].tensor_name, fetches


def get_classification_signature(signatures: dict, signature_name: str):
    sig = examples_signature(signatures, signature_name, CLASSIFY_METHOD, "classification")
    pre_process_classification(sig)
    return sig


def post_process_classification(sig, n: int, outputs: dict):
    """``PostProcessClassificationResult``: ``outputs`` maps fetched tensor names to arrays.
    Returns (list of [(label, score), ...] per example, has classes, has scores)."""
    def output(alias):
        spec = sig.outputs.get(alias)
        return outputs.get(spec.tensor_name) if spec is not None else None

    classes, scores = output(CLASSIFY_OUTPUT_CLASSES), output(CLASSIFY_OUTPUT_SCORES)
    for label, t, want in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if t is None:
            continue
        if t.ndim != 2:
            raise invalid_argument(
                f"Expected Tensor shape: [batch_size num_classes] but got [{','.join(map(str, t.shape))}]")
        ok = t.dtype == object if want == "DT_STRING" else t.dtype == np.float32
        if not ok:
            raise invalid_argument(f"Expected {label} Tensor of {want}. Got: {dtype_name(t)}")
        if t.shape[0] != n:
            raise invalid_argument(f"Expected {label} output batch size of {n}. Got: {t.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(
            "Tensors class and score should match in dim_size(1). Got "
            f"{classes.shape[1]} vs. {scores.shape[1]}")
    num_classes = (classes if classes is not None else scores).shape[1]
    result = []
    for i in range(n):
        row = []
        for c in range(num_classes):
            lab = classes[i, c] if classes is not None else b""
            row.append((lab if isinstance(lab, bytes) else str(lab).encode(),
                        float(scores[i, c]) if scores is not None else 0.0))
        result.append(row)
    return result, classes is not None, scores is not None


def run_classify(servable, signature_name: str, input_proto, timeout_ms=None):
    """Returns (signature name, list of [(label, score), ...] per example, has classes, has scores)."""
    sig = examples_signature(servable.signatures, signature_name, CLASSIFY_METHOD, "classification")
    feed, fetches = pre_process_classification(sig)
    examples = serialized_examples(input_proto)
    outs = dict(zip(fetches, timed_run(servable, "Classify", (feed,), [examples], fetches, timeout_ms)))
    return (sig.name, *post_process_classification(sig, len(examples), outs))
