"""gRPC conformance with the official tensorflow-serving-api stubs."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, predict_pb2, regression_pb2)

from tfmlops.serving.tensors import make_ndarray, make_tensor_proto


def _predict_request(model="mlp", x=None, signature=None, version=None, label=None):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    if signature:
        req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    if x is not None:
        make_tensor_proto(x, req.inputs["x"])
    return req


def _code(excinfo):
    return excinfo.value.code()


def test_predict(stubs, reference):
    pred, _ = stubs
    resp = pred.Predict(_predict_request(x=reference["x"]), timeout=30)
    assert resp.model_spec.name == "mlp"
    assert resp.model_spec.version.value == 1
    assert resp.model_spec.signature_name == "serving_default"
    y = resp.outputs["y"]
    assert y.dtype == 1 and [d.size for d in y.tensor_shape.dim] == [3, 3]
    assert len(y.float_val) == 9 and not y.tensor_content  # typed fields, like AsProtoField
    np.testing.assert_allclose(make_ndarray(y), reference["mlp_a"], rtol=1e-5, atol=1e-6)


def test_predict_accepts_tensor_content_and_output_filter(stubs, reference):
    import tensorflow as tf

    pred, _ = stubs
    req = _predict_request(signature="two_outputs")
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(reference["x"]))
    assert req.inputs["x"].tensor_content
    req.output_filter.append("total")
    resp = pred.Predict(req, timeout=30)
    assert list(resp.outputs) == ["total"]
    np.testing.assert_allclose(tf.make_ndarray(resp.outputs["total"]), reference["x"].sum(axis=1), rtol=1e-6)


@pytest.mark.parametrize("mutate,code,message", [
    (lambda r: r.model_spec.__setattr__("name", "nope"), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    (lambda r: r.model_spec.version.__setattr__("value", 42), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Specific(mlp, 42)"),
    (lambda r: r.model_spec.__setattr__("version_label", "zzz"), grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: zzz"),
    (lambda r: r.model_spec.__setattr__("signature_name", "nope"), grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
    (lambda r: make_tensor_proto(np.ones((1, 4), np.float32), r.inputs["extra"]), grpc.StatusCode.INVALID_ARGUMENT,
     "input size does not match signature: 2!=1 len({extra,x}) != len({x}). Sent extra: {extra}. "
     "Missing but required: {}."),
    (lambda r: r.inputs["x"].CopyFrom(make_tensor_proto(np.ones((1, 4), np.float64))),
     grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be float but double is provided"),
    (lambda r: r.output_filter.append("nah"), grpc.StatusCode.INVALID_ARGUMENT,
     "output tensor alias not found in signature: nah"),
    (lambda r: r.model_spec.__setattr__("name", ""), grpc.StatusCode.INVALID_ARGUMENT,
     "ModelSpec has no name specified."),
])
def test_predict_errors(stubs, mutate, code, message):
    pred, _ = stubs
    req = _predict_request(x=np.ones((1, 4), np.float32))
    mutate(req)
    with pytest.raises(grpc.RpcError) as ei:
        pred.Predict(req, timeout=30)
    assert _code(ei) == code
    assert message in ei.value.details()


def test_predict_wrong_shape_invalid_argument(stubs):
    pred, _ = stubs
    with pytest.raises(grpc.RpcError) as ei:
        pred.Predict(_predict_request(x=np.ones((1, 3), np.float32)), timeout=30)
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT


def test_get_model_metadata(stubs):
    pred, _ = stubs
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "multi"
    req.metadata_field.append("signature_def")
    resp = pred.GetModelMetadata(req, timeout=30)
    assert resp.model_spec.name == "multi" and resp.model_spec.version.value == 1
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sigs)
    assert sigs.signature_def["serving_default"].method_name == "tensorflow/serving/classify"
    assert sigs.signature_def["regress"].method_name == "tensorflow/serving/regress"
    req2 = get_model_metadata_pb2.GetModelMetadataRequest()
    req2.model_spec.name = "multi"
    with pytest.raises(grpc.RpcError) as ei:
        pred.GetModelMetadata(req2, timeout=30)
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT
    req2.metadata_field.append("foo")
    with pytest.raises(grpc.RpcError) as ei:
        pred.GetModelMetadata(req2, timeout=30)
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT and "foo" in ei.value.details()


def _examples(input_proto, xs):
    for x in xs:
        ex = input_proto.example_list.examples.add()
        ex.features.feature["x"].float_list.value.extend(x)


def test_classify_and_regress(stubs):
    pred, _ = stubs
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = "multi"
    _examples(req.input, [[1.0, 2.0], [0.5, -1.0]])
    resp = pred.Classify(req, timeout=30)
    assert resp.model_spec.signature_name == "serving_default" and resp.model_spec.version.value == 1
    assert len(resp.result.classifications) == 2
    labels = [[c.label for c in cl.classes] for cl in resp.result.classifications]
    assert labels == [["neg", "pos"], ["neg", "pos"]]
    assert abs(sum(c.score for c in resp.result.classifications[0].classes) - 1) < 1e-5

    rreq = regression_pb2.RegressionRequest()
    rreq.model_spec.name = "multi"
    rreq.model_spec.signature_name = "regress"
    _examples(rreq.input, [[1.0, 2.0], [0.5, 0.25]])
    rresp = pred.Regress(rreq, timeout=30)
    assert [r.value for r in rresp.result.regressions] == [5.0, 1.0]

    empty = classification_pb2.ClassificationRequest()
    empty.model_spec.name = "multi"
    with pytest.raises(grpc.RpcError) as ei:
        pred.Classify(empty, timeout=30)
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT


def test_multi_inference_without_tasks(stubs):
    # multi_inference_helper.cc: the model spec of the first task, here none -> no model name
    pred, _ = stubs
    req = inference_pb2.MultiInferenceRequest()
    with pytest.raises(grpc.RpcError) as ei:
        pred.MultiInference(req, timeout=30)
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT and ei.value.details() == "ModelSpec has no name specified."


def test_get_model_status(stubs):
    _, model = stubs
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "warm"
    resp = model.GetModelStatus(req, timeout=30)
    (st,) = resp.model_version_status
    assert st.version == 1 and st.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert st.status.error_code == 0 and st.status.error_message == ""
    req.model_spec.version.value = 3
    with pytest.raises(grpc.RpcError) as ei:
        model.GetModelStatus(req, timeout=30)
    assert _code(ei) == grpc.StatusCode.NOT_FOUND
    assert ei.value.details() == "Could not find version 3 of model warm"
    with pytest.raises(grpc.RpcError) as ei:
        model.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(), timeout=30)
    assert _code(ei) == grpc.StatusCode.INVALID_ARGUMENT and ei.value.details() == "Missing ModelSpec"


def test_client_predict_grpc_and_rest_agree(client, reference):
    g = client.predict_grpc("mlp", reference["x"])
    r = client.predict_rest("mlp", reference["x"])
    np.testing.assert_allclose(g["y"], r, rtol=1e-6, atol=1e-6)
    both = client.predict_rest("mlp", {"x": reference["x"]}, signature_name="two_outputs")
    assert set(both) == {"y", "total"}
    from tfmlops.deploy.client import ServingError

    with pytest.raises(ServingError) as ei:
        client.predict_grpc("nope", reference["x"])
    assert ei.value.grpc_code == "NOT_FOUND"
    with pytest.raises(ServingError) as ei:
        client.predict_rest("nope", reference["x"])
    assert ei.value.http_status == 404 and "Latest(nope)" in ei.value.message
