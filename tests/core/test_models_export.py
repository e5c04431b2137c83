"""Model build, training on a tiny subset, SavedModel export with its serving signature."""

import json

import numpy as np
import pytest

from tfmlops import data
from tfmlops.models import ModelConfig, TrainConfig, build_model, predict_classes, train


@pytest.fixture(scope="module")
def tiny():
    return data.load_validated("mnist", 784, 10, sample_fraction=0.02)[0]


def test_default_model_is_the_seed_mlp():
    model = build_model(ModelConfig(n_features=784, num_classes=10))
    assert [layer.__class__.__name__ for layer in model.layers] == ["InputLayer", "Dense", "Dense"]
    assert model.layers[1].units == 64 and model.layers[1].activation.__name__ == "relu"
    assert model.output_shape == (None, 10) and model.layers[2].activation.__name__ == "softmax"
    assert model.count_params() == 784 * 64 + 64 + 64 * 10 + 10


def test_training_learns_and_logs_each_epoch(tiny, caplog):
    model = build_model(ModelConfig(n_features=784, num_classes=10, hidden_units=[32, 16], dropout=0.1))
    with caplog.at_level("INFO", logger="tfmlops.models"):
        history = train(model, tiny.x_train, tiny.y_train, TrainConfig(epochs=3, batch_size=32))
    assert [len(history[k]) for k in ("loss", "accuracy", "val_loss")] == [3, 3, 3]
    assert history["loss"][-1] < history["loss"][0]
    assert [r.message.split()[1] for r in caplog.records if r.message.startswith("epoch")] == ["1/3", "2/3", "3/3"]
    accuracy = (predict_classes(model, tiny.x_test) == tiny.y_test).mean()
    assert accuracy > 0.5  # 10 classes: chance is 0.1


def test_saved_model_export_has_serving_signature(tiny, tmp_path):
    import tensorflow as tf

    from tfmlops.export import export_saved_model

    model = build_model(ModelConfig(n_features=784, num_classes=10))
    train(model, tiny.x_train, tiny.y_train, TrainConfig(epochs=1))
    result = export_saved_model(model, tmp_path / "export", tiny.x_test[:4], tiny.x_train[:32])
    assert result["max_abs_diff"] <= 1e-5
    loaded = tf.saved_model.load(str(tmp_path / "export" / "saved_model"))
    signature = loaded.signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["pixels"]
    assert list(signature.structured_outputs) == ["probabilities"]
    probs = signature(pixels=tf.constant(tiny.x_test[:4]))["probabilities"].numpy()
    np.testing.assert_allclose(probs, model(tiny.x_test[:4]).numpy(), atol=1e-6)
    smoke = json.loads((tmp_path / "export" / "smoke.json").read_text())
    np.testing.assert_allclose(smoke["expected"], probs, atol=1e-6)


def test_export_writes_warmup_requests_that_tf_serving_local_replays(tiny, tmp_path):
    """The warmup file holds one PredictRequest of real training rows per batch size; loading the
    version in tf-serving-local replays them (``model_warmup_records_read``); no rows, no export."""
    import shutil
    import urllib.request

    from tensorflow_serving.apis import prediction_log_pb2

    from serving._proc import ServerProcess  # tests/ is on sys.path: tests/serving is a package
    from tfmlops.export import WARMUP_BATCH_SIZES, WARMUP_FILE, export_saved_model
    from tfmlops.serving.servables.warmup import read_tfrecords
    from tfmlops.serving.tensors import make_ndarray

    model = build_model(ModelConfig(n_features=784, num_classes=10))
    with pytest.raises(ValueError, match="warmup rows"):
        export_saved_model(model, tmp_path / "none", tiny.x_test[:4], tiny.x_train[:0])
    result = export_saved_model(model, tmp_path / "export", tiny.x_test[:4], tiny.x_train[:32])
    saved_model = tmp_path / "export" / "saved_model"
    records = [prediction_log_pb2.PredictionLog.FromString(r) for r in read_tfrecords(str(saved_model / WARMUP_FILE))]
    assert result["warmup_records"] == len(records) == len(WARMUP_BATCH_SIZES)
    for size, rec in zip(WARMUP_BATCH_SIZES, records):
        assert rec.predict_log.request.model_spec.signature_name == "serving_default"
        np.testing.assert_array_equal(make_ndarray(rec.predict_log.request.inputs["pixels"], "pixels"),
                                      np.resize(tiny.x_train[:32], (size, 784)))

    shutil.copytree(saved_model, tmp_path / "models" / "mnist" / "1")
    (tmp_path / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    with ServerProcess.running([f"--model_base_path={tmp_path / 'models' / 'mnist'}", "--model_name=mnist",
                                f"--monitoring_config_file={tmp_path / 'monitoring.config'}"]) as srv:
        url = f"http://127.0.0.1:{srv.rest_port}/monitoring/prometheus/metrics"
        page = urllib.request.urlopen(url, timeout=10).read().decode()
    line = [s for s in page.splitlines() if s.startswith(":tensorflow:serving:model_warmup_records_read{")]
    assert line == [f':tensorflow:serving:model_warmup_records_read{{model_path="{tmp_path}/models/mnist/1",'
                    f'status="OK"}} {len(WARMUP_BATCH_SIZES)}']
