"""Bring your own model, end to end: each shipped example module of a kind we did not design the
pipeline around (an image CNN, a tabular binary classifier with string columns, a regressor, a text
classifier on raw strings) goes through ``tf_offline_retrain`` with ``dag.test()`` against the
session's real ``mlflow server`` and tf-serving-local: trained, gated, registered with its spec,
served, answering Predict, Classify / Regress over REST and gRPC like the Keras model on the same rows.

The runs are made once per module (``trained``, in conftest.py) and shared by the tests below; each
example has its own model name. (The MNIST MLP default has its own e2e test.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from .conftest import EXAMPLES, ROOT, ROWS, load_dag, states

pytestmark = pytest.mark.e2e


def rows(name: str):
    """The example's spec, module and first test rows (what the Keras model and the server both get)."""
    from tfmlops import model_data, modelspec

    spec = modelspec.read_spec(f"tfmlops_examples.{name}")
    module = modelspec.import_module(spec.module)
    data, _ = model_data.load(spec, module, EXAMPLES[name][0])
    return spec, data.test.head(ROWS)


def keras_outputs(mlflow_server, name, spec, split) -> np.ndarray:
    """What the registered Keras model says on ``split``, in the served signature's form."""
    from tfmlops import registry, trainer

    model = registry.load_keras_model(mlflow_server, f"models:/byom_{name}@champion")
    out = trainer.predict(spec, model, split.features)
    return np.stack([1 - out, out], axis=1) if spec.task == "binary" else out


def json_rows(spec, split, examples: bool = False) -> list[dict]:
    """The rows as REST row-format instances (arrays nested as their shape) or, with ``examples``,
    JSON tf.Examples (a feature is a flat list of values); strings as text."""
    out = []
    for i in range(len(split)):
        row = {}
        for key in spec.inputs:
            value = split.features[key][i]
            row[key] = value.decode() if isinstance(value, bytes) else (
                np.asarray(value).reshape(-1) if examples else np.asarray(value)).tolist()
        out.append(row)
    return out


def example_protos(spec, split):
    import tensorflow as tf

    for i in range(len(split)):
        feature = {}
        for key, (dtype, _) in spec.inputs.items():
            values = np.asarray(split.features[key][i]).reshape(-1)
            if dtype == "string":
                feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))
            elif dtype == "int64":
                feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=values.tolist()))
            else:
                feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=values.tolist()))
        yield tf.train.Example(features=tf.train.Features(feature=feature))


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_trains_gates_registers_and_is_served(name, trained, mlflow_server, serving_server):
    from mlflow import MlflowClient

    run, task_states = trained[name]
    assert str(run.state) == "success", {t: s for t, s in task_states.items() if s != "success"}
    assert {t: s for t, s in task_states.items() if s != "success"} == {  # no search asked: its workers skip
        "search_worker": "skipped", "approve_rollout": "skipped", "approve": "skipped", "conclude": "skipped",
        "watcher": "skipped"}, task_states

    mlf = MlflowClient(mlflow_server)
    champion = mlf.get_model_version_by_alias(f"byom_{name}", "champion")
    spec, _ = rows(name)
    tags = champion.tags
    # the registry remembers the module: every later DAG works from the version alone
    assert (tags["model.module"], tags["model.task"]) == (f"tfmlops_examples.{name}", spec.task)
    assert len(tags["model.module_sha256"]) == 64 and json.loads(tags["model.inputs"]) == spec.to_dict()["inputs"]
    assert json.loads(tags["model.class_names"]) == spec.class_names and tags["model.label"] == spec.label
    assert json.loads(tags["model.hparams"])["epochs"] == spec.hparams["epochs"]
    gate_metric = spec.gate["metric"]
    assert f"test_{gate_metric}" in tags
    training = mlf.get_run(champion.run_id)
    assert training.data.tags["gate"] == "passed" and training.data.tags["gate.metric"] == gate_metric
    assert len(mlf.get_metric_history(champion.run_id, "loss")) == spec.hparams["epochs"]
    plots = {a.path for a in mlf.list_artifacts(champion.run_id, "plots")}
    assert {"plots/training_curves.png", f"plots/{EXAMPLES[name][2]}"} <= plots, plots
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    signature = mlflow.models.get_model_info(f"models:/byom_{name}@champion").signature
    assert sorted(signature.inputs.input_names()) == sorted(spec.inputs)  # named TensorSpecs, as INPUTS

    status = requests.get(f"http://127.0.0.1:{serving_server['rest_port']}/v1/models/byom_{name}", timeout=10).json()
    assert [v["state"] for v in status["model_version_status"]] == ["AVAILABLE"]


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_predict_rest_and_grpc_match_the_keras_model(name, trained, mlflow_server, serving_server):
    from tfmlops.deploy.client import ServingClient

    spec, split = rows(name)
    expected = keras_outputs(mlflow_server, name, spec, split)
    url = f"http://127.0.0.1:{serving_server['rest_port']}/v1/models/byom_{name}:predict"
    response = requests.post(url, json={"instances": json_rows(spec, split)}, timeout=30)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.asarray(response.json()["predictions"], dtype=np.float32), expected, atol=1e-5,
                               rtol=1e-5)

    with ServingClient(rest_port=serving_server["rest_port"], grpc_port=serving_server["grpc_port"]) as client:
        inputs = {k: v if v.dtype != object else v.astype(object) for k, v in split.features.items()}
        got = client.predict_grpc(f"byom_{name}", inputs)[spec.output_name]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_classify_or_regress_rest_and_grpc_match_the_keras_model(name, trained, mlflow_server, serving_server):
    import grpc
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc, regression_pb2

    spec, split = rows(name)
    expected = keras_outputs(mlflow_server, name, spec, split)
    base = f"http://127.0.0.1:{serving_server['rest_port']}/v1/models/byom_{name}"
    channel = grpc.insecure_channel(f"127.0.0.1:{serving_server['grpc_port']}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        if spec.task == "regression":
            body = {"signature_name": "regression", "examples": json_rows(spec, split, examples=True)}
            response = requests.post(f"{base}:regress", json=body, timeout=30)
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(np.asarray(response.json()["results"], dtype=np.float32), expected,
                                       atol=1e-4, rtol=1e-5)
            request = regression_pb2.RegressionRequest()
            request.model_spec.name, request.model_spec.signature_name = f"byom_{name}", "regression"
            request.input.example_list.examples.extend(example_protos(spec, split))
            got = [r.value for r in stub.Regress(request, timeout=30).result.regressions]
            np.testing.assert_allclose(np.asarray(got, dtype=np.float32), expected, atol=1e-4, rtol=1e-5)
            return
        body = {"signature_name": "classification", "examples": json_rows(spec, split, examples=True)}
        response = requests.post(f"{base}:classify", json=body, timeout=30)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [[label for label, _ in row] for row in results] == [spec.class_names] * len(split)
        np.testing.assert_allclose(np.asarray([[s for _, s in row] for row in results], np.float32), expected,
                                   atol=1e-5)
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name, request.model_spec.signature_name = f"byom_{name}", "classification"
        request.input.example_list.examples.extend(example_protos(spec, split))
        classifications = stub.Classify(request, timeout=30).result.classifications
        assert [[c.label for c in cl.classes] for cl in classifications] == [spec.class_names] * len(split)
        np.testing.assert_allclose(np.asarray([[c.score for c in cl.classes] for cl in classifications], np.float32),
                                   expected, atol=1e-5)
    finally:
        channel.close()


def readme_module() -> str:
    """The example module of the README's "Bring your own model" section, verbatim."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- readme-example-module -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_module_trains_and_serves(connections, mlflow_server, serving_server, tmp_path,
                                                     monkeypatch):
    package = tmp_path / "readme_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "cancer.py").write_text(readme_module())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TFMLOPS_MODEL_PACKAGES", "readme_models")
    run = load_dag().test(run_conf={"model_name": "byom_readme_cancer", "model_module": "readme_models.cancer"})
    assert str(run.state) == "success", states(run)

    from mlflow import MlflowClient

    from tfmlops import modelspec

    version = MlflowClient(mlflow_server).get_model_version_by_alias("byom_readme_cancer", "champion")
    assert version.tags["model.task"] == "binary" and float(version.tags["test_auc"]) >= 0.9
    spec = modelspec.ModelSpec.from_tags(version.tags)
    module = modelspec.import_module(spec.module)
    features, _ = module.load_data("", "test")
    url = f"http://127.0.0.1:{serving_server['rest_port']}/v1/models/byom_readme_cancer:classify"
    body = {"signature_name": "classification", "examples": [{"measurements": r.tolist()} for r in
                                                              features["measurements"][:4]]}
    response = requests.post(url, json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert [[label for label, _ in r] for r in response.json()["results"]] == [["malignant", "benign"]] * 4

    # the team edits the module afterwards: a later DAG resolving this version says so (both hashes)
    # in its log and on the version's run, and goes on
    from tfmlops.steps.retrain import resolve

    assert "module_changed" not in resolve(mlflow_server, "byom_readme_cancer", "champion")
    (package / "cancer.py").write_text(readme_module() + "\n# tuned the layer sizes\n")
    resolved = resolve(mlflow_server, "byom_readme_cancer", "champion")
    assert spec.source_sha256 in resolved["module_changed"] and "changed since this version was trained" in \
        resolved["module_changed"]
    run_tags = MlflowClient(mlflow_server).get_run(version.run_id).data.tags
    assert run_tags["model.module_changed"] == resolved["module_changed"]


def test_a_broken_module_fails_the_first_task_with_its_message(connections, tmp_path, monkeypatch, capfd):
    package = tmp_path / "team_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "wide.py").write_text(readme_module().replace(
        'keras.layers.Dense(1, activation="sigmoid")', 'keras.layers.Dense(2, activation="softmax")'))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TFMLOPS_MODEL_PACKAGES", "team_models")
    run = load_dag().test(run_conf={"model_name": "byom_broken", "model_module": "team_models.wide"})
    task_states = states(run)
    assert str(run.state) == "failed" and task_states["validate_data"] == "failed", task_states
    assert task_states["train"] in ("upstream_failed", "None"), task_states
    log = "".join(capfd.readouterr())
    assert ("model module 'team_models.wide': a binary model's output must be one sigmoid unit, [batch, 1] or "
            "[batch]; got [batch, 2]") in log
    # not allowed: never imported
    run = load_dag().test(run_conf={"model_name": "byom_broken", "model_module": "os.path"})
    assert states(run)["validate_data"] == "failed"
    assert "package 'os' is not allowed" in "".join(capfd.readouterr())


@pytest.mark.skipif("diabetes" not in EXAMPLES, reason="BYOM_ONLY leaves the regression example out")
def test_canary_holdout_of_a_regressor_is_judged_by_rmse(trained, mlflow_server, serving_server, tmp_path):
    """The canary check on a labelled holdout (named input arrays + y, as the canary_holdout_uri
    .npz holds them) measures a served regressor's RMSE against max_rmse, not an accuracy."""
    from tfmlops import registry, trainer
    from tfmlops.deploy.checks import CanaryChecks, CheckFailed, canary_checks
    from tfmlops.deploy.endpoint import Endpoint
    from tfmlops.steps.rollout import fetch_candidate, load_canary_holdout

    spec, split = rows("diabetes")
    holdout = tmp_path / "holdout.npz"
    np.savez(holdout, y=split.labels, **split.features)
    x, y = load_canary_holdout(str(holdout))
    assert sorted(x) == sorted(spec.inputs)
    model = registry.load_keras_model(mlflow_server, "models:/byom_diabetes@champion")
    expected_rmse = float(np.sqrt(np.mean((trainer.predict(spec, model, split.features) - y) ** 2)))
    candidate = fetch_candidate(mlflow_server, "byom_diabetes", "champion", tmp_path / "candidate")
    assert candidate.smoke["task"] == "regression"
    endpoint = Endpoint("local", "127.0.0.1", serving_server["rest_port"], serving_server["grpc_port"],
                        str(serving_server["models_root"]))
    try:
        checks = CanaryChecks(holdout_x=x, holdout_y=y, min_accuracy=0.9, max_rmse=expected_rmse * 1.01)
        out = canary_checks(endpoint, candidate, checks, label=None)
        assert out["holdout_rmse"] == pytest.approx(expected_rmse, rel=1e-4) and "holdout_accuracy" not in out
        checks.max_rmse = expected_rmse / 2
        with pytest.raises(CheckFailed, match=r"holdout RMSE [\d.]+ > maximum"):
            canary_checks(endpoint, candidate, checks, label=None)
        checks.max_rmse = None
        assert "not run" in canary_checks(endpoint, candidate, checks, label=None)["holdout_check"]
    finally:
        endpoint.close()
