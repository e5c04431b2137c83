"""REST API conformance (tensorflow_serving/g3doc/api_rest.md + http_rest_api_handler.cc)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests


@pytest.fixture(scope="module")
def http(main_server):
    s = requests.Session()
    s.base = f"http://127.0.0.1:{main_server.rest_port}"
    yield s
    s.close()


def post(http, path, body, raw=False):
    data = body if raw else json.dumps(body)
    return http.post(http.base + path, data=data, timeout=60)


# ------------------------------------------------------------------ status
def test_status_all_versions_exact_json(http):
    r = http.get(http.base + "/v1/models/mlp", timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_status_specific_version_and_errors(http):
    assert http.get(http.base + "/v1/models/mlp/versions/1").json()["model_version_status"][0]["version"] == "1"
    r = http.get(http.base + "/v1/models/mlp/versions/9")
    assert r.status_code == 404 and r.json() == {"error": "Could not find version 9 of model mlp"}
    r = http.get(http.base + "/v1/models/nope")
    assert r.status_code == 404 and r.json() == {"error": "Could not find any versions of model nope"}
    r = http.get(http.base + "/v1/models")
    assert r.status_code == 400 and r.json() == {"error": "Missing model name in request."}


def test_status_with_label_lists_all_versions_like_tf_serving(http):
    # GetModelStatusImpl only looks at model_spec.version; a label is not resolved.
    r = http.get(http.base + "/v1/models/mlp/labels/whatever")
    assert r.status_code == 200
    assert [e["version"] for e in r.json()["model_version_status"]] == ["1"]


def test_paths_case_insensitive_and_malformed(http):
    assert http.get(http.base + "/V1/MODELS/mlp").status_code == 200
    r = http.get(http.base + "/v1/foo")
    assert r.status_code == 400 and r.json() == {"error": "Malformed request: GET /v1/foo"}
    r = post(http, "/v1/models/mlp:explain", {"instances": [[1, 2, 3, 4]]})
    assert r.status_code == 400 and r.json()["error"] == "Malformed request: POST /v1/models/mlp:explain"
    r = http.delete(http.base + "/v1/models/mlp")
    assert r.status_code == 400 and r.json()["error"].startswith("Malformed request: DELETE")
    r = http.get(http.base + "/healthz")
    assert r.status_code == 404


# ------------------------------------------------------------------ metadata
def test_metadata(http):
    r = http.get(http.base + "/v1/models/mlp/metadata")
    assert r.status_code == 200
    doc = r.json()
    assert doc["model_spec"] == {"name": "mlp", "signature_name": "", "version": "1"}
    sigs = doc["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) >= {"serving_default", "two_outputs"}
    x = sigs["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in x["tensor_shape"]["dim"]] == ["-1", "4"]
    assert sigs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert set(sigs["two_outputs"]["outputs"]) == {"y", "total"}
    r = http.get(http.base + "/v1/models/mlp/versions/1/metadata")
    assert r.json()["model_spec"]["version"] == "1"


def test_metadata_errors(http):
    r = http.get(http.base + "/v1/models/mlp/versions/7/metadata")
    assert r.status_code == 404 and r.json() == {"error": "Servable not found for request: Specific(mlp, 7)"}
    r = http.get(http.base + "/v1/models/mlp/labels/nolabel/metadata")
    assert r.status_code == 400 and r.json() == {"error": "Unrecognized servable version label: nolabel"}


# ------------------------------------------------------------------ predict
def test_predict_row_format(http, reference):
    r = post(http, "/v1/models/mlp:predict", {"instances": reference["x"].tolist()})
    assert r.status_code == 200, r.text
    pred = np.array(r.json()["predictions"], np.float32)
    np.testing.assert_allclose(pred, reference["mlp_a"], rtol=1e-5, atol=1e-6)


def test_predict_row_named_objects_and_version(http, reference):
    body = {"instances": [{"x": row} for row in reference["x"].tolist()], "signature_name": "serving_default"}
    r = post(http, "/v1/models/mlp/versions/1:predict", body)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["predictions"]), reference["mlp_a"], rtol=1e-5, atol=1e-6)


def test_predict_columnar_format(http, reference):
    for inputs in (reference["x"].tolist(), {"x": reference["x"].tolist()}):
        r = post(http, "/v1/models/mlp:predict", {"inputs": inputs})
        assert r.status_code == 200, r.text
        assert list(r.json()) == ["outputs"]
        np.testing.assert_allclose(np.array(r.json()["outputs"]), reference["mlp_a"], rtol=1e-5, atol=1e-6)


def test_predict_multiple_outputs_row_and_columnar(http, reference):
    x = reference["x"]
    r = post(http, "/v1/models/mlp:predict", {"signature_name": "two_outputs", "instances": x.tolist()})
    preds = r.json()["predictions"]
    assert isinstance(preds, list) and len(preds) == 3 and set(preds[0]) == {"y", "total"}
    np.testing.assert_allclose([p["total"] for p in preds], x.sum(axis=1), rtol=1e-6)
    np.testing.assert_allclose([p["y"] for p in preds], reference["mlp_a"], rtol=1e-5, atol=1e-6)
    r = post(http, "/v1/models/mlp:predict", {"signature_name": "two_outputs", "inputs": {"x": x.tolist()}})
    outs = r.json()["outputs"]
    assert set(outs) == {"y", "total"}
    np.testing.assert_allclose(outs["total"], x.sum(axis=1), rtol=1e-6)


def test_predict_float_output_written_as_shortest_float32(http):
    r = post(http, "/v1/models/mlp:predict", {"signature_name": "two_outputs", "instances": [[0.1, 0.0, 0.0, 0.0]]})
    assert '"total":0.1' in r.text.replace(" ", "")


def test_predict_nan_and_infinity_tokens(http):
    r = post(http, "/v1/models/mlp:predict",
             '{"signature_name": "two_outputs", "instances": [[NaN, 1, 2, 3], [Infinity, 0, 0, 0]]}', raw=True)
    assert r.status_code == 200, r.text
    totals = [p["total"] for p in r.json()["predictions"]]
    assert np.isnan(totals[0]) and totals[1] == float("inf")
    assert "NaN" in r.text and "Infinity" in r.text


@pytest.mark.parametrize("body,status,message", [
    ({"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]}, 400,
     "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"),
    ({"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances' key"),
    ({"instances": []}, 400, "No values in 'instances' array"),
    ({"instances": {"x": 1}}, 400, "Excepting 'instances' to be an list/array"),
    ({"instances": [["a", 2, 3, 4]]}, 400, 'JSON Value: "a" Type: String is not of expected type: float'),
    ({"instances": [[1, 2, 3, 4], [1, 2, 3]]}, 400, "Failed to process element: 1 of 'instances' list"),
    ({"instances": [{"y": [1, 2, 3, 4]}]}, 400, "JSON object: does not have named input: y"),
    ({"inputs": {"z": [[1, 2, 3, 4]]}}, 400, "Missing named input: x in 'inputs' object."),
    ({"instances": [[1, 2, 3, 4]], "signature_name": "nope"}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ({"instances": [[1, 2, 3, 4]], "signature_name": 5}, 400, "'signature_name' key must be a string value."),
    ({"instances": [[1e39, 2, 3, 4]]}, 400, "to float without loss of precision."),
])
def test_predict_errors(http, body, status, message):
    r = post(http, "/v1/models/mlp:predict", body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_predict_wrong_inner_shape_is_invalid_argument(http):
    r = post(http, "/v1/models/mlp:predict", {"instances": [[1, 2, 3]]})
    assert r.status_code == 400 and r.json()["error"]


def test_predict_malformed_json_and_empty_body(http):
    r = post(http, "/v1/models/mlp:predict", "{not json", raw=True)
    assert r.status_code == 400 and r.json()["error"].startswith("JSON Parse error")
    r = post(http, "/v1/models/mlp:predict", "", raw=True)
    assert r.status_code == 400 and r.json()["error"] == "JSON Parse error: The document is empty"
    r = post(http, "/v1/models/mlp:predict", "[1, 2]", raw=True)
    assert r.status_code == 400 and r.json()["error"].endswith("Is not object")


def test_predict_not_found(http):
    r = post(http, "/v1/models/half:predict", {"instances": [1.0, 5.0]})
    assert r.status_code == 404 and r.json() == {"error": "Servable not found for request: Latest(half)"}
    r = post(http, "/v1/models/mlp/versions/5:predict", {"instances": [[1, 2, 3, 4]]})
    assert r.status_code == 404 and r.json() == {"error": "Servable not found for request: Specific(mlp, 5)"}
    r = post(http, "/v1/models/mlp/labels/canary:predict", {"instances": [[1, 2, 3, 4]]})
    assert r.status_code == 400 and r.json() == {"error": "Unrecognized servable version label: canary"}


def test_body_size_cap(http):
    big = json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]] * 60000})
    assert len(big) > 1_000_000
    r = http.post(http.base + "/v1/models/mlp:predict", data=big, timeout=60)
    assert r.status_code == 413 and "error" in r.json()


# ------------------------------------------------------------------ strings / b64
def test_b64_inputs_and_bytes_outputs(http):
    payloads = [b"\x00\xffabc", b"hello"]
    body = {"signature_name": "predict_bytes",
            "instances": [{"data_bytes": {"b64": base64.b64encode(p).decode()}} for p in payloads]}
    r = post(http, "/v1/models/multi:predict", body)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["length"] for p in preds] == [5, 5]
    assert [base64.b64decode(p["echo_bytes"]["b64"]) for p in preds] == payloads
    r = post(http, "/v1/models/multi:predict", {"signature_name": "predict_text", "instances": ["ab", "Cd"]})
    assert r.json() == {"predictions": ["AB", "CD"]}
    r = post(http, "/v1/models/multi:predict", {"signature_name": "predict_text", "inputs": {"text": ["x"]}})
    assert r.json() == {"outputs": ["X"]}
    r = post(http, "/v1/models/multi:predict", {"signature_name": "predict_text", "instances": [1]})
    assert r.status_code == 400 and "is not of expected type: string" in r.json()["error"]


# ------------------------------------------------------------------ classify / regress
def _softmax_scores(x):
    w = np.array([[1.0, -1.0], [0.5, 2.0]], np.float32)
    z = np.asarray(x, np.float32) @ w
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_classify(http):
    xs = [[1.0, 2.0], [0.5, -1.0]]
    r = post(http, "/v1/models/multi:classify", {"examples": [{"x": v} for v in xs]})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    want = _softmax_scores(xs)
    assert [[c[0] for c in row] for row in res] == [["neg", "pos"], ["neg", "pos"]]
    np.testing.assert_allclose([[c[1] for c in row] for row in res], want, rtol=1e-5)


def test_classify_with_context_and_version(http):
    r = post(http, "/v1/models/multi/versions/1:classify",
             {"context": {"x": [1.0, 2.0]}, "examples": [{}, {}]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([c[1] for c in r.json()["results"][0]], _softmax_scores([[1.0, 2.0]])[0], rtol=1e-5)


def test_regress(http):
    r = post(http, "/v1/models/multi:regress", {"signature_name": "regress", "examples": [{"x": [1.0, 2.0]},
                                                                                          {"x": [0.5, 0.25]}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [5.0, 1.0]}


@pytest.mark.parametrize("path,body,message", [
    # TF Serving's default --enable_signature_method_name_check=false: the signature's inputs and
    # outputs are checked instead of its method_name (classifier.cc / regressor.cc PreProcess*)
    ("/v1/models/mlp:classify", {"examples": [{"x": [1.0]}]},
     "No classification inputs found in SignatureDef: "),
    ("/v1/models/multi:regress", {"examples": [{"x": [1.0, 2.0]}]}, "Expected one output Tensor."),
    ("/v1/models/multi:classify", {"signature_name": "nope", "examples": [{"x": [1.0, 2.0]}]},
     "No signature was found with the name: nope"),
    ("/v1/models/multi:classify", {"instances": [1]}, "'examples' is expected and was not found"),
    ("/v1/models/multi:classify", {"examples": []}, "'examples' value is an empty array"),
    ("/v1/models/multi:classify", {"examples": [{"x": [1.0, "a"]}]},
     "Unexpected element type in feature: x expecting type: float"),
    ("/v1/models/multi:classify", {"examples": [{"x": None}]}, "has element with unexpected JSON type: Null"),
])
def test_classify_regress_errors(http, path, body, message):
    r = post(http, path, body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_keep_alive_reuses_connection(main_server):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", main_server.rest_port, timeout=30)
    for _ in range(3):
        conn.request("POST", "/v1/models/mlp:predict", body=json.dumps({"instances": [[1, 2, 3, 4]]}))
        resp = conn.getresponse()
        assert resp.status == 200 and "predictions" in json.loads(resp.read())
    conn.close()
