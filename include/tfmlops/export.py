"""SavedModel export with a named ``serving_default`` signature, checked by loading it back, and
with the warmup requests TF Serving replays while it loads a version.

Warmup: ``assets.extra/tf_serving_warmup_requests``, a TFRecord file of
``tensorflow.serving.PredictionLog`` records (TF Serving's ``saved_model_warmup_util.cc`` reads
it; TFX's InfraValidator writes it the same way, ``RequestSpec.make_warmup``). One Predict request
per entry of :data:`WARMUP_BATCH_SIZES` for each signature, built from real rows the caller passes
(training rows), so a newly loaded version has run its graph at the batch sizes clients send
before the first client request. Every export writes it: there is no export without warmup rows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

import tfmlops  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow as tf

SIGNATURE = "serving_default"
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
SMOKE_FILE = "smoke.json"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
WARMUP_BATCH_SIZES = (1, 8, 32)


class ExportError(RuntimeError):
    """The exported artifact does not reproduce the source model."""


def write_warmup_requests(saved_model_dir: str | Path, rows: np.ndarray,
                          signatures: tuple[str, ...] = (SIGNATURE,)) -> int:
    """``assets.extra/tf_serving_warmup_requests`` of ``saved_model_dir``: a PredictRequest of
    ``pixels`` per batch size and signature, from ``rows``; returns the number of records."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or len(rows) == 0:
        raise ValueError(f"warmup rows must be a non-empty 2-D array of inputs, got shape {rows.shape}")
    path = Path(saved_model_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature in signatures:
            for size in WARMUP_BATCH_SIZES:
                batch = np.resize(rows, (size, rows.shape[1]))  # repeats rows when there are fewer
                request = predict_pb2.PredictRequest()
                request.model_spec.signature_name = signature
                request.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(batch))
                log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString())
                n += 1
    return n


def export_saved_model(model, path: str | Path, smoke_inputs: np.ndarray, warmup_inputs: np.ndarray,
                       tolerance: float = 1e-5) -> dict:
    """Write ``model`` as a SavedModel at ``path`` whose ``serving_default`` signature maps
    ``pixels`` (float32 [batch, n_features]) to ``probabilities``, with warmup requests built from
    ``warmup_inputs`` (:func:`write_warmup_requests`); load it back with ``tf.saved_model.load``
    and compare with the in-memory model on ``smoke_inputs``.

    Next to the SavedModel, ``smoke.json`` keeps those inputs and the expected outputs, so a
    deploy step can check a served version without importing TensorFlow.
    """
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    n_features = int(model.inputs[0].shape[-1])

    @tf.function(input_signature=[tf.TensorSpec([None, n_features], tf.float32, name=INPUT_NAME)])
    def serve(pixels):
        return {OUTPUT_NAME: model(pixels, training=False)}

    saved_model_dir = path / "saved_model"
    tf.saved_model.save(model, str(saved_model_dir), signatures={SIGNATURE: serve})
    warmup_records = write_warmup_requests(saved_model_dir, warmup_inputs)

    x = np.asarray(smoke_inputs, dtype=np.float32)
    expected = model(x, training=False).numpy()
    loaded = tf.saved_model.load(str(saved_model_dir)).signatures[SIGNATURE]
    got = loaded(**{INPUT_NAME: tf.constant(x)})[OUTPUT_NAME].numpy()
    max_diff = float(np.max(np.abs(got - expected)))
    if max_diff > tolerance:
        raise ExportError(f"{saved_model_dir}: reloaded SavedModel differs from the model by {max_diff:.3g} "
                          f"(tolerance {tolerance:g})")
    (path / SMOKE_FILE).write_text(json.dumps({
        "signature_name": SIGNATURE, "input": INPUT_NAME, "output": OUTPUT_NAME,
        "instances": x.tolist(), "expected": got.tolist(), "tolerance": tolerance}))
    return {"path": str(path), "max_abs_diff": max_diff, "smoke_rows": len(x), "warmup_records": warmup_records}
