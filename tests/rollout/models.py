"""Tiny SavedModels for the rollout tests: a 4 → 3 tf_keras MLP whose last layer is scaled to make
distinguishable versions with the same argmax, plus the smoke batch (``smoke.json``) of each."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

X_SMOKE = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.25, 2.0], [-2.0, 0.0, 1.0, -1.0]], np.float32)


def build(path: str, seed: int, scale: float = 1.0, fault: str | None = None) -> dict:
    """SavedModel with serving_default ``x`` float32 [None,4] → ``y`` [None,3]; returns its smoke
    batch (what ``tfmlops.export`` writes next to a registered model's SavedModel).

    ``fault`` injects a defect that only live traffic meets (single-row requests; the smoke batch
    has three rows, so the version passes its smoke check): ``"error"`` fails them
    (INVALID_ARGUMENT), ``"slow"`` answers them ~60 ms late. ``"wrong_classes"`` answers every
    request as fast and without error, but with the classes rotated by one (class k's score goes
    to k + 1): its smoke batch is its own outputs, so only the classes users get tell it apart."""
    import tensorflow as tf
    import tf_keras as keras

    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.layers.Input((4,), name="x"), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    for layer, factor in zip(model.layers, (1.0, scale)):  # explicit weights: same seed, same model
        layer.set_weights([rng.normal(size=w.shape).astype(np.float32) * factor for w in layer.get_weights()])

    def slow(y):
        t0 = tf.timestamp()
        spin = tf.while_loop(lambda i: tf.timestamp() - t0 < 0.06, lambda i: i + 1, [tf.constant(0)])[0]
        with tf.control_dependencies([spin]):
            return tf.identity(y)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def serve(x):
        y = model(x, training=False)
        if fault == "error":
            check = tf.debugging.assert_greater(tf.shape(x)[0], 1, message="injected fault: single-row request")
            with tf.control_dependencies([check]):
                y = tf.identity(y)
        elif fault == "slow":
            y = tf.cond(tf.shape(x)[0] == 1, lambda: slow(y), lambda: y)
        elif fault == "wrong_classes":
            y = tf.roll(y, shift=1, axis=1)
        return {"y": y}

    tf.saved_model.save(model, path, signatures={"serving_default": serve})
    expected = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(X_SMOKE))["y"].numpy()
    smoke = {"signature_name": "serving_default", "input": "x", "output": "y", "instances": X_SMOKE.tolist(),
             "expected": expected.tolist(), "tolerance": 1e-5}
    with open(os.path.join(path, "..", os.path.basename(path) + ".smoke.json"), "w") as fh:
        json.dump(smoke, fh)
    return smoke


def predict(path: str, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    return tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x, tf.float32))["y"].numpy()


def corrupt_copy(src: str, dst: str) -> None:
    """A SavedModel whose saved_model.pb is garbage (variables intact): loading it fails."""
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "saved_model.pb"), "wb") as fh:
        fh.write(b"\x08\x01this is not a SavedModel proto" * 50)


def register(tracking_uri: str, zoo, name: str, model: str, smoke: str | None = None) -> int:
    """A registered version of ``model`` whose run holds ``serving/saved_model`` + ``serving/smoke.json``."""
    import tempfile
    from pathlib import Path

    from tfmlops import registry

    with tempfile.TemporaryDirectory() as tmp:
        serving = Path(tmp) / "serving"
        shutil.copytree(zoo.path[name], serving / "saved_model")
        (serving / "smoke.json").write_text(json.dumps(zoo.smoke[smoke or name]))
        run_id = registry.start_run(tracking_uri, model, f"rollout-{name}", {})
        uri = registry.log_files(tracking_uri, run_id, serving, "serving")
    return registry.register(tracking_uri, model, uri, run_id, {})
