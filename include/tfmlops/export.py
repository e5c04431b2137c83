"""SavedModel export with a named ``serving_default`` signature, checked by loading it back."""

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


class ExportError(RuntimeError):
    """The exported artifact does not reproduce the source model."""


def export_saved_model(model, path: str | Path, smoke_inputs: np.ndarray, tolerance: float = 1e-5) -> dict:
    """Write ``model`` as a SavedModel at ``path`` whose ``serving_default`` signature maps
    ``pixels`` (float32 [batch, n_features]) to ``probabilities``; load it back with
    ``tf.saved_model.load`` and compare with the in-memory model on ``smoke_inputs``.

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
    return {"path": str(path), "max_abs_diff": max_diff, "smoke_rows": len(x)}
