"""SavedModel export with the signatures a model module's contract gives (``serving_default`` on the
named raw inputs, ``classification`` / ``regression`` on serialized ``tf.Example``), checked by
loading it back, and with the warmup requests TF Serving replays while it loads a version.

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

from tfmlops.modelspec import ModelSpec

SIGNATURE = "serving_default"
CLASSIFY_SIGNATURE = "classification"
REGRESS_SIGNATURE = "regression"
INPUT_NAME = "pixels"  # the MNIST example's one input (the formats of tf_optimize_export still assume it)
OUTPUT_NAME = "probabilities"
SMOKE_FILE = "smoke.json"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
CLASS_NAMES_FILE = "assets.extra/class_names.txt"
WARMUP_BATCH_SIZES = (1, 8, 32)


class ExportError(RuntimeError):
    """The exported artifact does not reproduce the source model."""


def legacy_spec(model) -> ModelSpec:
    """The spec of a model exported without one (the MNIST-shaped models of the optimize/online
    DAGs, until they read the registered version's spec): one float input ``pixels`` [n] → class
    probabilities."""
    n_features, n_classes = int(model.inputs[0].shape[-1]), int(model.outputs[0].shape[-1])
    return ModelSpec(module="", source_sha256="", task="multiclass", inputs={INPUT_NAME: ("float32", (n_features,))},
                     label="label", class_names=[str(i) for i in range(n_classes)])


def as_features(spec: ModelSpec, rows) -> dict[str, np.ndarray]:
    """``rows`` as named input arrays: a dict is taken as is; an array is the one input's rows."""
    if isinstance(rows, dict):
        return {k: np.asarray(rows[k]) for k in spec.inputs}
    if len(spec.inputs) != 1:
        raise ValueError(f"model has inputs {sorted(spec.inputs)}: pass a dict of arrays")
    return {next(iter(spec.inputs)): np.asarray(rows)}


def _tf_dtype(dtype: str):
    return tf.string if dtype == "string" else getattr(tf, dtype)


def _np_batch(spec: ModelSpec, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(features[k], dtype=object if d == "string" else d) for k, (d, _) in spec.inputs.items()}


def _call(model, spec: ModelSpec, features: dict):
    from tfmlops.trainer import inputs_for

    out = model(inputs_for(model, features), training=False)
    if spec.task == "multiclass":
        return tf.cast(out, tf.float32)
    value = tf.reshape(tf.cast(out, tf.float32), [-1])
    return tf.stack([1.0 - value, value], axis=1) if spec.task == "binary" else value


def serving_signatures(model, spec: ModelSpec) -> dict:
    """The signatures every model gets, built from the contract (users never write them):

    - ``serving_default`` (Predict): the named raw inputs → ``probabilities`` float32 [B, C]
      (binary: [1-p, p]) or ``outputs`` float32 [B] (regression);
    - ``classification`` (Classify: ``inputs`` = serialized ``tf.Example`` [B] → ``scores`` [B, C]
      + ``classes`` string [B, C]) or ``regression`` (Regress: ``inputs`` → ``outputs`` [B]), as TF
      Serving's ``classifier.cc`` / ``regressor.cc`` expect them.
    """
    names = list(spec.inputs)
    specs = [tf.TensorSpec([None, *shape], _tf_dtype(dtype), name=name)
             for name, (dtype, shape) in spec.inputs.items()]

    def serve(*args):
        return {spec.output_name: _call(model, spec, dict(zip(names, args)))}

    feature_spec = {name: tf.io.FixedLenFeature(shape, _tf_dtype(dtype))
                    for name, (dtype, shape) in spec.inputs.items()}

    def from_examples(inputs):
        return _call(model, spec, tf.io.parse_example(inputs, feature_spec))

    examples = [tf.TensorSpec([None], tf.string, name="inputs")]
    signatures = {SIGNATURE: tf.function(serve, input_signature=specs)}
    if spec.task == "regression":
        signatures[REGRESS_SIGNATURE] = tf.function(lambda inputs: {"outputs": from_examples(inputs)},
                                                    input_signature=examples)
    else:
        class_names = tf.constant(list(spec.class_names))  # binary: [negative, positive], as the scores

        def classify(inputs):
            scores = from_examples(inputs)
            return {"scores": scores, "classes": tf.broadcast_to(class_names, tf.shape(scores))}

        signatures[CLASSIFY_SIGNATURE] = tf.function(classify, input_signature=examples)
    return signatures


def write_warmup_requests(saved_model_dir: str | Path, rows, signatures: tuple[str, ...] = (SIGNATURE,),
                          spec: ModelSpec | None = None) -> int:
    """``assets.extra/tf_serving_warmup_requests`` of ``saved_model_dir``: a PredictRequest of the
    named inputs per batch size and signature, from ``rows`` (a dict of arrays, or the one input's
    rows); returns the number of records."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    if spec is None:
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or len(rows) == 0:
            raise ValueError(f"warmup rows must be a non-empty 2-D array of inputs, got shape {rows.shape}")
        spec = ModelSpec(module="", source_sha256="", task="multiclass", label="label", class_names=["0", "1"],
                         inputs={INPUT_NAME: ("float32", rows.shape[1:])})
    features = _np_batch(spec, as_features(spec, rows))
    n_rows = len(next(iter(features.values())))
    if n_rows == 0:
        raise ValueError("warmup rows are empty")
    path = Path(saved_model_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature in signatures:
            for size in WARMUP_BATCH_SIZES:
                take = np.resize(np.arange(n_rows), size)  # repeats rows when there are fewer
                request = predict_pb2.PredictRequest()
                request.model_spec.signature_name = signature
                for name, values in features.items():
                    request.inputs[name].CopyFrom(tf.make_tensor_proto(values[take]))
                log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString())
                n += 1
    return n


def _jsonable(values: np.ndarray):
    if values.dtype == object:
        return np.vectorize(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v, otypes=[object])(
            values).tolist()
    return values.tolist()


def export_saved_model(model, path: str | Path, smoke_inputs, warmup_inputs, tolerance: float = 1e-5,
                       spec: ModelSpec | None = None) -> dict:
    """Write ``model`` as a SavedModel at ``path`` with the signatures :func:`serving_signatures`
    builds from ``spec`` (without one: :func:`legacy_spec`, ``pixels`` → ``probabilities``), warmup
    requests built from ``warmup_inputs`` (:func:`write_warmup_requests`) and the class names in
    ``assets.extra/class_names.txt``; load it back with ``tf.saved_model.load`` and compare with the
    in-memory model on ``smoke_inputs`` (a dict of arrays, or the one input's rows).

    Next to the SavedModel, ``smoke.json`` keeps those inputs (columnar ``inputs`` by name, and
    ``instances`` for a one-input model) and the expected outputs, so a deploy step can check a
    served version without importing TensorFlow.
    """
    spec = spec or legacy_spec(model)
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    saved_model_dir = path / "saved_model"
    signatures = serving_signatures(model, spec)
    tf.saved_model.save(model, str(saved_model_dir), signatures=signatures)
    warmup_records = write_warmup_requests(saved_model_dir, warmup_inputs, spec=spec)
    if spec.class_names:
        (saved_model_dir / CLASS_NAMES_FILE).write_text("\n".join(spec.class_names) + "\n")

    features = _np_batch(spec, as_features(spec, smoke_inputs))
    expected = signatures[SIGNATURE](*[tf.constant(features[k]) for k in spec.inputs])[spec.output_name].numpy()
    loaded = tf.saved_model.load(str(saved_model_dir)).signatures[SIGNATURE]
    got = loaded(**{k: tf.constant(v) for k, v in features.items()})[spec.output_name].numpy()
    max_diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not max_diff <= tolerance:
        raise ExportError(f"{saved_model_dir}: reloaded SavedModel differs from the model by {max_diff:.3g} "
                          f"(tolerance {tolerance:g})")
    smoke = {"signature_name": SIGNATURE, "output": spec.output_name, "task": spec.task,
             "inputs": {k: _jsonable(v) for k, v in features.items()},
             "input_dtypes": {k: d for k, (d, _) in spec.inputs.items()},
             "expected": got.tolist(), "tolerance": tolerance}
    if len(spec.inputs) == 1 and next(iter(spec.inputs.values()))[0] != "string":
        name = next(iter(spec.inputs))
        smoke.update({"input": name, "instances": features[name].tolist()})
    (path / SMOKE_FILE).write_text(json.dumps(smoke))
    return {"path": str(path), "max_abs_diff": max_diff, "smoke_rows": len(got), "warmup_records": warmup_records}
