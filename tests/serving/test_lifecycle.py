"""Version lifecycle on the main server: policies, polling, partial/corrupt/failed versions,
labels and HandleReloadConfigRequest (tests run in file order and build on each other)."""

from __future__ import annotations

import os
import shutil
import time

import grpc
import numpy as np
import pytest
import requests

from tfmlops.deploy.client import ModelNotAvailableError, ServingError

from .conftest import model_entry


def _config(store, life_extra="", with_life=True, more=""):
    text = "model_config_list {\n" + model_entry("mlp", store.path("mlp")) + model_entry(
        "multi", store.path("multi")) + model_entry("warm", store.path("warm"))
    if with_life:
        text += model_entry("life", store.path("life"), life_extra)
    return text + more + "}\n"


def _versions(client, model="life"):
    return {int(e["version"]): (e["state"], e["status"]["error_code"], e["status"]["error_message"])
            for e in client.status(model)["model_version_status"]}


def _served_version(client, **kw):
    resp = client.predict_grpc_response("life", {"x": np.ones((1, 4), np.float32)}, **kw)
    return resp.model_spec.version.value


def _wait(cond, timeout=20.0, step=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def test_reload_adds_model(client, store):
    client.reload_config(_config(store))
    assert _versions(client) == {1: ("AVAILABLE", "OK", "")}
    assert _served_version(client) == 1


def test_partial_version_directory_is_not_served(client, store):
    # simulate an in-progress copy: saved_model.pb + index present, a variables shard missing
    tmp = store.path("life", ".partial")
    shutil.copytree(store.path("staging", "mlp_b"), tmp)
    var = os.path.join(tmp, "variables")
    shard = next(f for f in os.listdir(var) if f.startswith("variables.data"))
    os.rename(os.path.join(var, shard), os.path.join(store.path("life"), ".shard"))
    os.replace(tmp, store.path("life", "2"))
    time.sleep(2.5)  # > 2 polls
    assert set(_versions(client)) == {1}
    assert _served_version(client) == 1
    # no saved_model.pb at all is ignored too
    os.makedirs(store.path("life", "5", "variables"))
    time.sleep(1.5)
    assert set(_versions(client)) == {1}
    shutil.rmtree(store.path("life", "5"))


def test_failed_version_reports_end_and_old_keeps_serving(client, store, reference):
    d = store.path("life", "3")
    shutil.copytree(store.path("staging", "mlp_a"), d)
    with open(os.path.join(d, "saved_model.pb"), "wb") as fh:
        fh.write(b"this is not a SavedModel")
    with pytest.raises(ModelNotAvailableError) as ei:
        client.wait_until_available("life", 3, timeout_s=20, poll_s=0.25)
    err = ei.value
    assert err.model == "life" and err.version == 3 and err.state == "END" and not err.timed_out
    assert err.error_code != "OK" and err.error_message
    v = _versions(client)
    assert v[1] == ("AVAILABLE", "OK", "") and v[3][0] == "END"
    assert _served_version(client) == 1
    np.testing.assert_allclose(client.predict_rest("life", reference["x"]), reference["mlp_a"], rtol=1e-5, atol=1e-6)


def test_wait_until_available_times_out_with_details(client):
    with pytest.raises(ModelNotAvailableError) as ei:
        client.wait_until_available("life", 99, timeout_s=1.0, poll_s=0.2)
    assert ei.value.timed_out and ei.value.version == 99 and "life" in str(ei.value)


def test_new_version_replaces_old_availability_preserving(client, store, reference):
    # complete the half-written v2 (not aspired: v3 is newer) and publish v4 atomically
    os.rename(os.path.join(store.path("life"), ".shard"),
              os.path.join(store.path("life", "2", "variables"),
                           next(f for f in os.listdir(store.path("staging", "mlp_b", "variables"))
                                if f.startswith("variables.data"))))
    store.publish(store.path("staging", "mlp_b"), "life", 4)
    client.wait_until_available("life", 4, timeout_s=20, poll_s=0.25)
    assert _wait(lambda: _versions(client)[1][0] == "END")
    v = _versions(client)
    assert v[4] == ("AVAILABLE", "OK", "") and v[1] == ("END", "OK", "") and v[3][0] == "END"
    assert 2 not in v  # latest{1} never aspired version 2
    assert _served_version(client) == 4
    np.testing.assert_allclose(client.predict_rest("life", reference["x"]), reference["mlp_b"], rtol=1e-5, atol=1e-5)
    # status keeps TF Serving's order (newest first)
    assert [int(e["version"]) for e in client.status("life")["model_version_status"]] == sorted(v, reverse=True)


def test_policy_specific_then_labels(client, store, reference):
    client.reload_config(_config(store, "model_version_policy { specific { versions: 1 versions: 4 } }"))
    v = _versions(client)
    assert v[1][0] == "AVAILABLE" and v[4][0] == "AVAILABLE"
    assert _served_version(client) == 4 and _served_version(client, version=1) == 1
    labels = ('model_version_policy { specific { versions: 1 versions: 4 } } '
              'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 4 }')
    client.reload_config(_config(store, labels))
    assert _served_version(client, label="stable") == 1
    assert _served_version(client, label="canary") == 4
    np.testing.assert_allclose(client.predict_rest("life", reference["x"], label="stable"), reference["mlp_a"],
                               rtol=1e-5, atol=1e-6)
    r = requests.post(f"{client.rest_base}/v1/models/life/labels/canary:predict",
                      json={"instances": reference["x"].tolist()}, timeout=30)
    np.testing.assert_allclose(r.json()["predictions"], reference["mlp_b"], rtol=1e-5, atol=1e-5)
    meta = client.metadata("life", label="stable")
    assert meta["model_spec"]["version"] == "1"


def test_label_must_point_at_available_version(client, store):
    bad = ('model_version_policy { specific { versions: 1 versions: 4 } } '
           'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 3 }')
    with pytest.raises(ServingError) as ei:
        client.reload_config(_config(store, bad))
    assert ei.value.grpc_code == "FAILED_PRECONDITION"
    assert ei.value.message == ("Request to assign label to version 3 of model life, which is not currently "
                                "available for inference")
    # the previous config stays in force
    assert _served_version(client, label="canary") == 4


def test_policy_all_and_latest_n(client, store):
    client.reload_config(_config(store, "model_version_policy { all {} }"))
    v = _versions(client)
    assert v[1][0] == "AVAILABLE" and v[2][0] == "AVAILABLE" and v[4][0] == "AVAILABLE" and v[3][0] == "END"
    with pytest.raises(ServingError) as ei:
        client.predict_grpc("life", np.ones((1, 4), np.float32), label="stable")
    assert ei.value.grpc_code == "INVALID_ARGUMENT"  # labels were dropped by the new config
    client.reload_config(_config(store, "model_version_policy { latest { num_versions: 2 } }"))
    # latest 2 complete versions: 4 and 3 (3 failed) -> 1 and 2 unloaded only while an aspired one serves
    assert _wait(lambda: _versions(client)[2][0] == "END" and _versions(client)[1][0] == "END")
    assert _versions(client)[4][0] == "AVAILABLE"


def test_reload_new_model_that_fails_to_load(client, store):
    with pytest.raises(ServingError) as ei:
        client.reload_config(_config(store, more=model_entry("badwarm", store.path("badwarm"))))
    assert ei.value.grpc_code == "UNKNOWN"
    assert "1 model(s) did not become available" in ei.value.message
    st = client.status("badwarm")["model_version_status"][0]
    assert st["state"] == "END" and st["status"]["error_code"] == "INVALID_ARGUMENT"
    assert "input tensor alias not found in signature: not_x" in st["status"]["error_message"]


def test_reload_rejects_invalid_configs(client, store):
    with pytest.raises(ServingError) as ei:
        client.reload_config('model_config_list { config { name: "a" base_path: "rel/path" '
                             'model_platform: "tensorflow" } }')
    assert ei.value.grpc_code == "INVALID_ARGUMENT" and "absolute path" in ei.value.message
    dup = model_entry("x", store.path("mlp"))
    with pytest.raises(ServingError) as ei:
        client.reload_config("model_config_list {" + dup + dup + "}")
    assert ei.value.grpc_code == "INVALID_ARGUMENT" and "multiple times" in ei.value.message
    with pytest.raises(ServingError) as ei:
        client.reload_config(_config(store, more='config { name: "p" base_path: "/x" model_platform: "onnx" }'))
    assert ei.value.grpc_code == "INVALID_ARGUMENT"


def test_reload_removes_model(client, store):
    client.reload_config(_config(store, with_life=False))
    assert all(state == "END" for state, _, _ in _versions(client).values())
    with pytest.raises(ServingError) as ei:
        client.predict_grpc("life", np.ones((1, 4), np.float32))
    assert ei.value.grpc_code == "NOT_FOUND"
    # other models untouched
    assert client.status("mlp")["model_version_status"][0]["state"] == "AVAILABLE"


def test_grpc_reload_non_list_config_rejected(stubs):
    from tensorflow_serving.apis import model_management_pb2

    _, model = stubs
    req = model_management_pb2.ReloadConfigRequest()
    req.config.custom_model_config.type_url = "x"
    with pytest.raises(grpc.RpcError) as ei:
        model.HandleReloadConfigRequest(req, timeout=30)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_signatures_are_warmed_while_a_version_loads(store):
    """Loading builds each signature's full-predict session callable and runs it once, so the
    first requests to a new version do not pay TensorFlow's kernel creation (in-process check)."""
    from tfmlops.serving.servables.saved_model_bundle import Servable

    servable = Servable("mlp", 1, store.path("mlp", "1"))
    try:
        assert servable.warmup() == 0  # no warmup file: only the built-in preparation ran
        prepared = set(servable._callables)
        assert len(prepared) == 2  # serving_default (x -> y) and two_outputs (x -> total, y)
        _, out = servable.predict("serving_default", {"x": np.ones((2, 4), np.float32)})
        assert out["y"].shape == (2, 3) and set(servable._callables) == prepared  # the request reused it
    finally:
        servable.close()
