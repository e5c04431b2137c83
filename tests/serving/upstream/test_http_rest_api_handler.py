"""Port of TF Serving's ``tensorflow_serving/model_servers/http_rest_api_handler_test.cc`` as
black-box tests: each ``handler_.ProcessRequest(method, path, body)`` is that HTTP request to a
running ``tf-serving-local``; ``absl::IsInvalidArgument``/``IsNotFound`` are the HTTP statuses TF
Serving maps them to (400/404), ``status.message()`` is the ``error`` of the JSON answer.

The server is set up as ``CreateServerCore``: model ``saved_model_half_plus_two_2_versions``,
version policy ``specific { versions: 123 }``, then a config reload (gRPC
``HandleReloadConfigRequest``) that adds the version label ``Version_Label`` -> 123.
Substitution: upstream's base path is TensorFlow's ``cc/saved_model/testdata/half_plus_two``
(not in TF Serving's tree); TF Serving's ``saved_model_half_plus_two_2_versions`` (vendored) has
the same model as its version 123, and upstream's expected metadata file
(``saved_model_half_plus_two_2_versions_metadata.json``) describes it.

Every TEST_F is ported:

=============================  ============================================================
upstream TEST_F                here
=============================  ============================================================
kPathRegex                     ``test_kPathRegex``: paths the REST regex matches reach the API,
                               others are not found (the regex itself is internal)
UnsupportedApiCalls            ``test_UnsupportedApiCalls``
PredictModelNameVersionErrors  ``test_PredictModelNameVersionErrors``
PredictRequestErrors           ``test_PredictRequestErrors``
Predict                        ``test_Predict``
Regress                        ``test_Regress``
Classify                       ``test_Classify``
GetStatus                      ``test_GetStatus``
GetModelMetadata               ``test_GetModelMetadata``
=============================  ============================================================
"""
# ruff: noqa: N816 - upstream's C++ constant names (kTestModelName, ...) are kept


from __future__ import annotations

import json

import grpc
import pytest
import requests
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from .._proc import ServerProcess
from ._upstream import TESTDATA

kTestModelBasePath = TESTDATA / "saved_model_half_plus_two_2_versions"
kTestModelName = "saved_model_half_plus_two_2_versions"
kTestModelVersion1 = 123
kTestModelVersionLabel = "Version_Label"
kNonexistentModelVersionLabel = "Version_Nonexistent"
UINT64_MAX = (1 << 64) - 1

CONFIG = f"""model_config_list {{ config {{
  name: "{kTestModelName}" base_path: "{kTestModelBasePath}" model_platform: "tensorflow"
  model_version_policy {{ specific {{ versions: {kTestModelVersion1} }} }}
  {{labels}}
}} }}"""


@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    """``HttpRestApiHandlerTest::SetUpTestSuite``: a server with the model, then the label reload."""
    cfg = tmp_path_factory.mktemp("http_rest_api_handler") / "models.config"
    cfg.write_text(CONFIG.replace("{labels}", ""))
    with ServerProcess.running([f"--model_config_file={cfg}"]) as srv:
        reload = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(CONFIG.replace("{labels}", f'version_labels {{ key: "{kTestModelVersionLabel}" '
                                                       f'value: {kTestModelVersion1} }}'), reload.config)
        with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as ch:
            model_service_pb2_grpc.ModelServiceStub(ch).HandleReloadConfigRequest(reload, timeout=60)
        with requests.Session() as s:
            def process_request(method, path, body=""):
                return s.request(method, f"http://127.0.0.1:{srv.rest_port}{path}", data=body, timeout=60)
            yield process_request


def _error(resp) -> str:
    """``GetJsonErrorMsg``: the ``error`` of a JSON answer."""
    return resp.json()["error"]


def assert_invalid_argument(resp, message):
    assert resp.status_code == 400, resp.text
    assert message in _error(resp)


def assert_ok_json(resp, expected: dict):
    """``TF_EXPECT_OK`` + ``CompareJson`` (numbers compare by value) + the Content-Type header."""
    assert resp.status_code == 200, resp.text
    assert json.loads(resp.text) == expected
    assert resp.headers["Content-Type"] == "application/json"


def test_kPathRegex(handler):
    assert_invalid_argument(handler("GET", "/v1/models"), "Missing model name")  # matched: the API answers
    for path in ("/statuspage", "/index"):  # not matched: no handler
        assert handler("GET", path).status_code == 404


def test_UnsupportedApiCalls(handler):
    assert_invalid_argument(handler("GET", "/v1/foo"), "Malformed request")
    assert_invalid_argument(handler("POST", "/v1/foo"), "Malformed request")
    assert_invalid_argument(handler("GET", "/v1/models"), "Missing model name")
    assert_invalid_argument(handler("GET", "/v1/models/debug/model_name"), "Malformed request")
    assert_invalid_argument(handler("POST", "/v1/models"), "Malformed request")
    assert_invalid_argument(handler("GET", "/v1/models/foo:predict"), "Malformed request")
    assert_invalid_argument(handler("GET", "/v1/models/foo/version/50:predict"), "Malformed request")
    assert_invalid_argument(handler("POST", "/v1/models/foo/version/50:regress"), "Malformed request")
    assert_invalid_argument(handler("POST", "/v1/models/foo/versions/HELLO:regress"), "Malformed request")
    assert_invalid_argument(handler("POST", f"/v1/models/foo/versions/{UINT64_MAX}:regress"),
                            "Failed to convert version")
    assert_invalid_argument(handler("POST", "/v1/models/foo/metadata"), "Malformed request")
    assert_invalid_argument(handler("POST", "/v1/models/foo/label/some_label:regress"), "Malformed request")
    assert_invalid_argument(handler("POST", "/v1/models/foo/versions/50/labels/some_label:regress"),
                            "Malformed request")
    assert_invalid_argument(handler("POST", "/v1/models/foo/versions/some_label:regress"), "Malformed request")


def test_PredictModelNameVersionErrors(handler):
    # 'foo' is not a valid model name.
    assert handler("POST", "/v1/models/foo:predict", '{ "instances": [1] }').status_code == 404
    assert handler("POST", "/v1/models/foo/versions/50:predict", '{ "instances": [1] }').status_code == 404
    # Valid model name, but invalid version number (99).
    assert handler("POST", f"/v1/models/{kTestModelName}99:predict", '{ "instances": [1] }').status_code == 404


def test_PredictRequestErrors(handler):
    req_path = f"/v1/models/{kTestModelName}:predict"
    # Empty document.
    assert_invalid_argument(handler("POST", req_path, ""), "JSON Parse error: The document is empty")
    # Badly formatted JSON.
    assert_invalid_argument(handler("POST", req_path, "instances = [1, 2]"), "JSON Parse error: Invalid value")
    # Incorrect type.
    assert_invalid_argument(handler("POST", req_path, '{ "instances": ["x", "y"] }'), "not of expected type: float")
    # Nonexistent version label.
    assert_invalid_argument(
        handler("POST", f"/v1/models/{kTestModelName}/labels/{kNonexistentModelVersionLabel}:predict",
                '{ "instances": ["x", "y"] }'),
        "Unrecognized servable version label")
    # Incorrect signature_name type.
    assert_invalid_argument(handler("POST", req_path, '{ "signature_name": 100 }'),
                            "'signature_name' key must be a string value.")


def test_Predict(handler):
    # Query latest version.
    assert_ok_json(handler("POST", f"/v1/models/{kTestModelName}:predict", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}'),
                   {"predictions": [[2.5, 3.0], [3.5, 4.0]]})
    # Query specific versions.
    assert_ok_json(handler("POST", f"/v1/models/{kTestModelName}/versions/{kTestModelVersion1}:predict",
                           '{"instances": [1.0, 2.0]}'), {"predictions": [2.5, 3.0]})
    # Query specific versions using a version label.
    assert_ok_json(handler("POST", f"/v1/models/{kTestModelName}/labels/{kTestModelVersionLabel}:predict",
                           '{"instances": [1.0, 2.0]}'), {"predictions": [2.5, 3.0]})
    # Query specific versions with explicit signature_name.
    assert_ok_json(handler("POST", f"/v1/models/{kTestModelName}/versions/{kTestModelVersion1}:predict",
                           '{"signature_name": "serving_default", "instances": [3.0, 4.0]}'),
                   {"predictions": [3.5, 4.0]})
    # Query specific versions with explicit signature_name and columnar inputs.
    assert_ok_json(handler("POST", f"/v1/models/{kTestModelName}/versions/{kTestModelVersion1}:predict",
                           '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}'), {"outputs": [3.5, 4.0]})


def test_Regress(handler):
    body = '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }'
    # Query latest version.
    assert_ok_json(handler("POST", f"/v1/models/{kTestModelName}:regress", body), {"results": [42]})
    # Query specific versions.
    assert_ok_json(handler("POST", f"/v1/models/{kTestModelName}/versions/{kTestModelVersion1}:regress", body),
                   {"results": [42]})
    # Query specific versions using a version label.
    assert_ok_json(handler("POST", f"/v1/models/{kTestModelName}/labels/{kTestModelVersionLabel}:regress", body),
                   {"results": [42]})


def test_Classify(handler):
    # Query latest version.
    assert_ok_json(handler("POST", f"/v1/models/{kTestModelName}:classify",
                           '{"signature_name": "classify_x_to_y", "examples": [ { "x": 20.0 } ] }'),
                   {"results": [[["", 12]]]})
    # Query specific versions using a version label.
    assert_ok_json(handler("POST", f"/v1/models/{kTestModelName}/labels/{kTestModelVersionLabel}:classify",
                           '{"signature_name": "classify_x_to_y", "examples": [ { "x": 10.0 } ] }'),
                   {"results": [[["", 7]]]})


STATUS_123 = {"model_version_status": [
    {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_GetStatus(handler):
    # Get status for all versions.
    assert_ok_json(handler("GET", f"/v1/models/{kTestModelName}"), STATUS_123)
    # Get status of specific version.
    assert_ok_json(handler("GET", f"/v1/models/{kTestModelName}/versions/{kTestModelVersion1}"), STATUS_123)
    # Get status of specific version using a version label.
    assert_ok_json(handler("GET", f"/v1/models/{kTestModelName}/labels/{kTestModelVersionLabel}"), STATUS_123)


def test_GetModelMetadata(handler):
    # Get model metadata without specifying version.
    expected = (TESTDATA / "saved_model_half_plus_two_2_versions_metadata.json").read_text()
    assert_ok_json(handler("GET", f"/v1/models/{kTestModelName}/metadata"), json.loads(expected))
