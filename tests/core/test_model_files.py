"""Model files are data: loading one never runs code from it (tfmlops.model_files).

Each hostile file carries a payload that writes a marker file when it runs; the tests show the
payload is real (it runs through the unsafe path) and that the project's loaders refuse the file
with the reason, the marker untouched."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tfmlops.model_files import UnsafeModelError, check_keras_config, load_keras_file


class Payload:
    """Unpickling this writes ``marker`` (what a hostile registry entry would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path(self.marker).write_text, ("pickle payload ran",))


def lambda_model(marker: Path):
    import tf_keras as keras

    def touch(x, path=str(marker)):
        open(path, "w").write("lambda payload ran")  # noqa: SIM115 - the payload
        return x

    return keras.Sequential([keras.Input((4,)), keras.layers.Lambda(touch), keras.layers.Dense(2)])


def plain_model():
    import tf_keras as keras

    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)])


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_lambda_layer_is_refused_before_keras_sees_it(tmp_path, suffix):
    import tf_keras as keras

    marker = tmp_path / "ran"
    model = lambda_model(marker)
    path = tmp_path / f"model{suffix}"
    model.save(path)
    marker.unlink(missing_ok=True)  # building the model above ran it once
    if suffix == ".h5":  # the threat is real: Keras ignores safe_mode for .h5 and runs the bytecode
        keras.models.load_model(path, safe_mode=True)
        assert marker.exists()
        marker.unlink()
    with pytest.raises(UnsafeModelError, match=rf"model{suffix}: refused to load.*Lambda layer"):
        load_keras_file(path)
    assert not marker.exists()


def test_the_format_check_refuses_a_lambda_h5_without_running_it(tmp_path):
    """The verification step of tf_optimize_export loads .h5 exports through the same check."""
    from tfmlops.formats.runtimes import predict_keras

    marker = tmp_path / "ran"
    lambda_model(marker).save(tmp_path / "model.h5")
    marker.unlink(missing_ok=True)
    with pytest.raises(UnsafeModelError, match="Lambda"):
        predict_keras(tmp_path, {"x": np.zeros((2, 4), np.float32)}, None)
    assert not marker.exists()


def test_config_naming_a_foreign_module_is_refused(tmp_path):
    path = tmp_path / "model.keras"
    plain_model().save(path)
    forged = tmp_path / "forged.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(forged, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                config["config"]["layers"][1]["module"] = "os"
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(UnsafeModelError, match="from module 'os' \\(not Keras\\)"):
        load_keras_file(forged)
    model = load_keras_file(path)  # the untouched file loads
    assert model.output_shape == (None, 2)
    check_keras_config({"class_name": "Dense", "module": "keras.layers", "config": {}}, "ok")
    with pytest.raises(UnsafeModelError, match="only .keras and .h5"):
        load_keras_file(tmp_path / "model.pkl")


def test_registered_model_with_a_pickle_payload_is_refused(mlflow_server, tmp_path, monkeypatch):
    import mlflow
    import mlflow.tensorflow
    from mlflow import MlflowClient

    from tfmlops import registry

    marker = tmp_path / "ran"
    local = tmp_path / "mlflow_model"
    mlflow.tensorflow.save_model(plain_model(), local)
    (local / "data" / "custom_objects.cloudpickle").write_bytes(pickle.dumps(Payload(marker)))
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("hostile") or client.get_experiment(client.create_experiment("hostile"))
    run = client.create_run(experiment.experiment_id)
    client.log_artifacts(run.info.run_id, str(local), "model")
    mlflow.set_tracking_uri(mlflow_server)
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "hostile_model").version
    uri = f"models:/hostile_model/{version}"

    with pytest.raises(UnsafeModelError, match=r"custom_objects.cloudpickle.*unpickling runs code"):
        registry.load_keras_model(mlflow_server, uri)
    assert not marker.exists()
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"  # tfmlops' default
    with pytest.raises(mlflow.exceptions.MlflowException, match="cloudpickle is disallowed"):
        mlflow.tensorflow.load_model(uri)  # MLflow's own loader is off too
    assert not marker.exists()
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    with pytest.raises(AttributeError):  # with MLflow 3.17's default the payload runs (then MLflow trips on
        mlflow.tensorflow.load_model(uri)  # what it returned: write_text's int is not a dict)
    assert marker.read_text() == "pickle payload ran"


def test_models_the_project_logs_carry_no_pickle_and_load_back(mlflow_server):
    """tensorflow-model-optimization fills Keras' global custom-object registry on import; MLflow
    would pickle that registry into every logged model. The project's logging leaves it out."""
    import tensorflow_model_optimization  # noqa: F401  (registers its custom objects globally)
    from mlflow import MlflowClient

    from tfmlops import registry
    from tfmlops.models import ModelConfig, build_model

    import mlflow.tensorflow

    assert mlflow.tensorflow.get_global_custom_objects()  # the registry is not empty here
    model = build_model(ModelConfig(n_features=4, num_classes=2, hidden_units=[3]))
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("clean") or client.get_experiment(client.create_experiment("clean"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    uri = registry.log_keras_model(mlflow_server, run_id, model, np.zeros((2, 4), np.float32))
    files = [f.path for f in client.list_logged_model_artifacts(uri.removeprefix("models:/"), "data")]
    assert files and not [f for f in files if f.endswith(".cloudpickle")], files
    loaded = registry.load_keras_model(mlflow_server, uri)
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert mlflow.tensorflow.get_global_custom_objects()  # restored after the save


def test_a_fresh_process_loads_a_logged_model_by_its_models_uri(mlflow_server, tmp_path):
    """A Celery task process loads what another process logged (the production stack's workers):
    no tracking URI set globally, a ``models:/<id>`` URI — resolved by MLflow through the global
    URI, which tfmlops.registry.download sets from the one it is given."""
    import os
    import subprocess
    import sys

    from mlflow import MlflowClient

    from tfmlops import registry
    from tfmlops.models import ModelConfig, build_model

    model = build_model(ModelConfig(n_features=4, num_classes=2, hidden_units=[3]))
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("fresh") or client.get_experiment(client.create_experiment("fresh"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    uri = registry.log_keras_model(mlflow_server, run_id, model, np.zeros((2, 4), np.float32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    code = ("import sys; from tfmlops import registry; "
            "print(registry.load_keras_model(sys.argv[1], sys.argv[2]).count_params())")
    out = subprocess.run([sys.executable, "-c", code, mlflow_server, uri], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) == model.count_params()
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
