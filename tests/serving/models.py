"""Tiny SavedModels for the serving tests, built with tf_keras / TF1 builder in a tmp dir."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def build_mlp(path: str, seed: int = 0, scale: float = 1.0) -> None:
    """tf_keras Dense MLP: serving_default x float32 [None,4] -> y [None,3];
    signature "two_outputs" -> {"y", "total"}."""
    import tensorflow as tf
    import tf_keras as keras

    tf.random.set_seed(seed)
    model = keras.Sequential([keras.layers.Input((4,), name="x"),
                              keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    model.layers[-1].set_weights([w * scale for w in model.layers[-1].get_weights()])

    class Mod(tf.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": self.m(x)}

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def two(self, x):
            y = self.m(x)
            return {"y": y, "total": tf.reduce_sum(x, axis=1)}

    mod = Mod(model)
    tf.saved_model.save(mod, path, signatures={"serving_default": mod.serve, "two_outputs": mod.two})


def mlp_reference(path: str, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    return tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x, tf.float32))["y"].numpy()


def build_multi(path: str) -> None:
    """TF1-builder SavedModel with classify / regress / bytes / string signatures.

    * serving_default: classify (inputs: serialized tf.Example with x: float[2]) -> classes, scores
    * regress: regress -> outputs = x0 + 2*x1
    * predict_bytes: data_bytes string[None] -> length int32[None], echo_bytes string[None]
    * predict_text: text string[None] -> upper string[None]
    """
    import tensorflow as tf

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        feats = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([2], tf.float32)})
        x = feats["x"]
        w = tf.constant([[1.0, -1.0], [0.5, 2.0]])
        scores = tf.nn.softmax(tf.matmul(x, w))
        n = tf.shape(x)[0]
        classes = tf.tile(tf.constant([["neg", "pos"]]), tf.stack([n, 1]))
        regress_out = tf.reshape(x[:, 0] + 2.0 * x[:, 1], [-1, 1])
        data = v1.placeholder(tf.string, [None], name="data")
        length = tf.strings.length(data)
        echo = tf.identity(data)
        text = v1.placeholder(tf.string, [None], name="text")
        upper = tf.strings.upper(text)
        u = v1.saved_model.utils.build_tensor_info
        sigs = {
            "serving_default": v1.saved_model.signature_def_utils.classification_signature_def(
                serialized, classes, scores),
            "regress": v1.saved_model.signature_def_utils.regression_signature_def(serialized, regress_out),
            "predict_bytes": v1.saved_model.signature_def_utils.build_signature_def(
                {"data_bytes": u(data)}, {"length": u(length), "echo_bytes": u(echo)},
                "tensorflow/serving/predict"),
            "predict_text": v1.saved_model.signature_def_utils.build_signature_def(
                {"text": u(text)}, {"upper": u(upper)}, "tensorflow/serving/predict"),
        }
        with v1.Session(graph=g) as sess:
            b = v1.saved_model.Builder(path)
            b.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=sigs)
            b.save()


def write_warmup(version_dir: str, requests) -> None:
    """assets.extra/tf_serving_warmup_requests as TFRecord of PredictionLog."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    d = os.path.join(version_dir, "assets.extra")
    os.makedirs(d, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(d, "tf_serving_warmup_requests")) as w:
        for req in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))
            w.write(log.SerializeToString())
