"""Port of TF Serving's ``tensorflow_serving/model_servers/get_model_status_impl_test.cc`` as
black-box tests: ``GetModelStatusImpl::GetModelStatus(core, request, &response)`` is the gRPC
``ModelService.GetModelStatus`` of a running ``tf-serving-local`` set up as ``CreateServerCore``
(model ``saved_model_half_plus_two_2_versions``, ``specific { versions: 123 versions: 124 }``).

=================================  ================================================================
upstream TEST_F                    here
=================================  ================================================================
MissingOrEmptyModelSpecFailure     ``test_MissingOrEmptyModelSpecFailure``
InvalidModelNameFailure            ``test_InvalidModelNameFailure``
InvalidModelVersionFailure         ``test_InvalidModelVersionFailure``
AllVersionsSuccess                 ``test_AllVersionsSuccess``
SingleVersionSuccess               ``test_SingleVersionSuccess``
ModelSpecOverride                  ``test_ModelSpecOverride``: ``GetModelStatusWithModelSpec`` is
                                   what the REST handler calls with the model spec of the URL
                                   (the override) and an empty request, so a REST status request
                                   for ``nonexistent_model`` is NOT_FOUND while the gRPC request
                                   for the test model is not
=================================  ================================================================
"""
# ruff: noqa: N816 - upstream's C++ constant names (kTestModelName, ...) are kept


from __future__ import annotations

import grpc
import pytest
import requests
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from .._proc import ServerProcess
from ._upstream import TESTDATA

kTestModelBasePath = TESTDATA / "saved_model_half_plus_two_2_versions"
kTestModelName = "saved_model_half_plus_two_2_versions"
kNonexistentModelName = "nonexistent_model"
kTestModelVersion1 = 123
kTestModelVersion2 = 124
kNonexistentModelVersion = 125
OK = 0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("get_model_status_impl") / "models.config"
    cfg.write_text(f'model_config_list {{ config {{ name: "{kTestModelName}" base_path: "{kTestModelBasePath}" '
                   f'model_platform: "tensorflow" model_version_policy {{ specific {{ '
                   f'versions: {kTestModelVersion1} versions: {kTestModelVersion2} }} }} }} }}')
    with ServerProcess.running([f"--model_config_file={cfg}"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def get_model_status(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        stub = model_service_pb2_grpc.ModelServiceStub(ch)

        def call(request):
            """(gRPC status code, response)."""
            try:
                return grpc.StatusCode.OK, stub.GetModelStatus(request, timeout=30)
            except grpc.RpcError as exc:
                return exc.code(), get_model_status_pb2.GetModelStatusResponse()
        yield call


def test_MissingOrEmptyModelSpecFailure(get_model_status):
    request = get_model_status_pb2.GetModelStatusRequest()
    # Empty request is invalid.
    assert get_model_status(request)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_InvalidModelNameFailure(get_model_status):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = kNonexistentModelName
    # If no versions of model are managed by ServerCore, response is NOT_FOUND error.
    code, response = get_model_status(request)
    assert code == grpc.StatusCode.NOT_FOUND
    assert len(response.model_version_status) == 0


def test_InvalidModelVersionFailure(get_model_status):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = kTestModelName
    request.model_spec.version.value = kNonexistentModelVersion
    # If model version not managed by ServerCore, response is NOT_FOUND error.
    code, response = get_model_status(request)
    assert code == grpc.StatusCode.NOT_FOUND
    assert len(response.model_version_status) == 0


def test_AllVersionsSuccess(get_model_status):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = kTestModelName
    # If two versions of model are managed by ServerCore, succesfully get model status for both versions.
    code, response = get_model_status(request)
    assert code == grpc.StatusCode.OK
    assert len(response.model_version_status) == 2
    assert {s.version for s in response.model_version_status} == {kTestModelVersion1, kTestModelVersion2}
    for s in response.model_version_status:
        assert s.status.error_code == OK
        assert s.status.error_message == ""


def test_SingleVersionSuccess(get_model_status):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = kTestModelName
    request.model_spec.version.value = kTestModelVersion1
    # If model version is managed by ServerCore, succesfully get model status.
    code, response = get_model_status(request)
    assert code == grpc.StatusCode.OK
    assert len(response.model_version_status) == 1
    assert response.model_version_status[0].version == kTestModelVersion1
    assert response.model_version_status[0].status.error_code == OK
    assert response.model_version_status[0].status.error_message == ""


def test_ModelSpecOverride(server, get_model_status):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = kTestModelName
    assert get_model_status(request)[0] != grpc.StatusCode.NOT_FOUND
    r = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/{kNonexistentModelName}", timeout=30)
    assert r.status_code == 404  # NOT_FOUND
