"""Port of TF Serving's ``tensorflow_serving/model_servers/server_core_test.cc`` as black-box tests
against a running ``tf-serving-local``:

* ``ServerCore::Create(options with config)`` is starting the server with ``--model_config_file``
  (a failed Create is a server that exits with "Failed to start server. Error: <status>");
  ``ReloadConfig`` is the gRPC ``ModelService.HandleReloadConfigRequest`` (or, where upstream
  reloads a config the gRPC API refuses, a config-file poll); ``ListAvailableServableIds`` and the
  servable state monitor are ``GetModelStatus``; ``GetServableHandle(model_spec)`` is a Predict
  with that model spec, whose answer names the version that served it.
* Upstream runs most cases on a fake platform (a loader that only records its path); here the
  model is a real ``tensorflow`` one: ``test_model`` at ``testdata/saved_model_half_plus_two_cpu``
  (upstream's TensorFlow ``cc/saved_model/testdata/half_plus_two`` has the same model as version
  123) and, for ``SwitchToHalfPlusTwoWith2Versions``, ``testdata/saved_model_half_plus_two_2_versions``
  with ``model_version_policy { all {} }``.
* ``TEST_P``'s ``PrefixPathsWithURIScheme`` (``file://`` base paths) is a parameter of the cases
  that resolve base paths (``uri``); the others run with plain paths.

Upstream cases that need C++ hooks are in :data:`NOT_APPLICABLE` (skipped, with the reason).
"""
# ruff: noqa: N816 - upstream's C++ constant names (kTestModelName, ...) are kept


from __future__ import annotations

import contextlib
import shutil
import time

import grpc
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from .._proc import ServerProcess
from ._upstream import TESTDATA

# black-box against tf-serving-local processes started per case (~4 min): an end-to-end run
pytestmark = pytest.mark.e2e

kTestModelName = "test_model"
kTestModelVersion = 123
kTestModelLargerVersion = 124
kTestModelBogusVersion = 777
kAspiredVersions = {kTestModelVersion, kTestModelLargerVersion}
AVAILABLE, END = get_model_status_pb2.ModelVersionStatus.AVAILABLE, get_model_status_pb2.ModelVersionStatus.END

NOT_APPLICABLE = {
    "PreLoadHook": "ServerCore::Options::pre_load_hook is a C++ callback",
    "ErroringModel": "the error is injected by a test source adapter (StoragePathErrorInjectingSourceAdapter); "
                     "see test_ErroringModel_black_box for a model that fails to load",
    "IllegalReconfigurationFromCustomConfig": "needs a custom_model_config_loader; tensorflow_model_server's "
                                              "LOG(FATAL)s 'ModelServer does not yet support custom model config.'",
    "AbsoluteAndRelativePathsWithOptionsSucceed": "ServerCore::Options::model_config_list_root_dir is not a flag",
    "AbsolutePathWithEmptyPathFails": "ServerCore::Options::model_config_list_root_dir is not a flag",
    "RelativePathWithOptionsSucceeds": "ServerCore::Options::model_config_list_root_dir is not a flag",
    "MultiplePlatforms": "fake platforms registered through ServerCore::Options::platform_config_map",
    "MultiplePlatformsWithConfigChange": "fake platforms registered through ServerCore::Options::platform_config_map",
    "RequestLoggingOff": "ServerCore::Log / StartLoggingStream with mock request loggers",
    "RequestLoggingOn": "ServerCore::Log / StartLoggingStream with mock request loggers",
    "AssignExistingLabelToUnavailableVersionAllowed": "ServerCore::Options::"
                                                      "force_allow_any_version_labels_for_unavailable_models "
                                                      "is not a flag",
    "VersionLabelsNotAllowed": "ServerCore::Options::allow_version_labels is not a flag (always true in "
                               "tensorflow_model_server)",
    "StoragePathPrefixOption": "ServerCore::Options::storage_path_prefix is not a flag",
}


@pytest.mark.parametrize("case", sorted(NOT_APPLICABLE))
def test_not_applicable(case):
    pytest.skip(f"{case}: {NOT_APPLICABLE[case]}")


# ------------------------------------------------------------------ configs (server_core_test_util.cc)
def base_path(path, uri: bool) -> str:
    return f"file://{path}" if uri else str(path)


def model_entry(name=kTestModelName, path=None, uri=False, platform='model_platform: "tensorflow"', extra=""):
    path = TESTDATA / "saved_model_half_plus_two_cpu" if path is None else path
    return f'config {{ name: "{name}" base_path: "{base_path(path, uri)}" {platform} {extra} }}\n'


def GetTestModelServerConfig(uri=False, extra="") -> str:
    """GetTestModelServerConfigForTensorflowPlatform (also stands for ...ForFakePlatform)."""
    return "model_config_list {\n" + model_entry(uri=uri, extra=extra) + "}\n"


def two_version_config(uri=False, labels: dict | None = None) -> str:
    """SwitchToHalfPlusTwoWith2Versions, plus MutateModelConfig(...).SetLabelVersion(...)."""
    extra = "model_version_policy { all {} } " + "".join(
        f'version_labels {{ key: "{k}" value: {v} }} ' for k, v in (labels or {}).items())
    return ("model_config_list {\n"
            + model_entry(path=TESTDATA / "saved_model_half_plus_two_2_versions", uri=uri, extra=extra) + "}\n")


EMPTY_MODEL_CONFIG_LIST = "model_config_list {}\n"




# ------------------------------------------------------------------ a running ServerCore
class Core:
    def __init__(self, srv: ServerProcess):
        self.srv = srv
        self.channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
        self.model_service = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.prediction_service = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def reload_config(self, config_text: str) -> None:
        """ServerCore::ReloadConfig; raises grpc.RpcError with the status of a failed reload."""
        req = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(config_text, req.config)
        self.model_service.HandleReloadConfigRequest(req, timeout=120)

    def states(self, name=kTestModelName) -> dict:
        """The servable state monitor's states of one model: {version: state}."""
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = name
        try:
            resp = self.model_service.GetModelStatus(req, timeout=30)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise
        return {s.version: s for s in resp.model_version_status}

    def available(self, name=kTestModelName) -> list:
        """ListAvailableServableIds for one model: sorted versions."""
        return sorted(v for v, s in self.states(name).items() if s.state == AVAILABLE)

    def wait_until(self, predicate, timeout=60.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; states: {self.states()}"
            time.sleep(0.1)

    def servable_version(self, *, version=None, label=None, name=kTestModelName) -> int:
        """GetServableHandle(model_spec).id().version, through a Predict."""
        req = predict_pb2.PredictRequest()
        req.model_spec.name = name
        if version is not None:
            req.model_spec.version.value = version
        if label is not None:
            req.model_spec.version_label = label
        req.inputs["x"].dtype = 1
        req.inputs["x"].float_val.append(2.0)
        req.inputs["x"].tensor_shape.dim.add().size = 1
        resp = self.prediction_service.Predict(req, timeout=30)
        assert resp.outputs["y"].float_val == [3.0]
        return resp.model_spec.version.value


@contextlib.contextmanager
def create_server_core(tmp_path, config_text: str, *flags: str):
    """CreateServerCore(config, options): a running server (the test fails if Create fails)."""
    cfg = tmp_path / "models.config"
    cfg.write_text(config_text)
    srv = ServerProcess([f"--model_config_file={cfg}", *flags], rest=False)
    try:
        srv.wait_ready()
        core = Core(srv)
        try:
            yield core
        finally:
            core.channel.close()
    finally:
        srv.terminate()


def create_server_core_status(tmp_path, config_text: str, *flags: str) -> str:
    """The status of a ServerCore::Create that must fail: the server's "Failed to start server" line."""
    cfg = tmp_path / "models.config"
    cfg.write_text(config_text)
    srv = ServerProcess([f"--model_config_file={cfg}", *flags], rest=False)
    rc = srv.wait_exit(120)
    lines = [ln for ln in srv.log.splitlines() if "Failed to start server. Error: " in ln]
    assert rc != 0 and lines, srv.log[-3000:]
    return lines[-1].split("Failed to start server. Error: ", 1)[1]


uri_param = pytest.mark.parametrize("uri", [False, True], ids=["path", "file_uri"])


# ------------------------------------------------------------------ the cases
@uri_param
def test_CreateWaitsTillModelsAvailable(tmp_path, uri):
    with create_server_core(tmp_path, GetTestModelServerConfig(uri)) as core:
        assert core.available() == [kTestModelVersion]
        assert core.servable_version(version=kTestModelVersion) == kTestModelVersion
        # Validate monitoring states.
        (state,) = core.states().values()
        assert state.version == kTestModelVersion
        assert state.status.error_code == 0
        assert state.state == AVAILABLE


def test_ReloadConfigWaitsTillModelsAvailable(tmp_path):
    # Create a server with no models, initially.
    with create_server_core(tmp_path, "") as core:
        # Reconfigure it to load our test model.
        core.reload_config(GetTestModelServerConfig())
        assert core.available() == [kTestModelVersion]


def test_ReloadConfigUnloadsModels(tmp_path):
    with create_server_core(tmp_path, GetTestModelServerConfig()) as core:
        assert core.available()
        core.reload_config(EMPTY_MODEL_CONFIG_LIST)
        # Wait for the unload to finish (ReloadConfig() doesn't block on this).
        core.wait_until(lambda: core.states()[kTestModelVersion].state == END)
        # Validate monitoring states.
        assert list(core.states()) == [kTestModelVersion]


def test_ReloadConfigHandlesLoadingAPreviouslyUnloadedModel(tmp_path):
    # Load, and then unload, a servable.
    with create_server_core(tmp_path, GetTestModelServerConfig()) as core:
        core.reload_config(EMPTY_MODEL_CONFIG_LIST)
        core.wait_until(lambda: core.states()[kTestModelVersion].state == END)
        # Re-load the same servable.
        core.reload_config(GetTestModelServerConfig())
        assert core.available() == [kTestModelVersion]


@uri_param
def test_ReloadConfigChangeModelBasePath(tmp_path, uri):
    # Start with the one-version path.
    with create_server_core(tmp_path, GetTestModelServerConfig(uri)) as core:
        assert core.available() == [kTestModelVersion]
        # Switch to the two-version path.
        core.reload_config(two_version_config(uri))
        core.wait_until(lambda: kTestModelLargerVersion in core.available())
        # Revert to the one-version path.
        core.reload_config(GetTestModelServerConfig(uri))
        core.wait_until(lambda: core.available() and core.available()[0] == kTestModelVersion)


def relative_config() -> str:
    """GetTestModelServerConfigWithRelativePath: the base path's directory name stripped off."""
    return "model_config_list {\n" + model_entry(name=f"{kTestModelName}_relative",
                                                 path="saved_model_half_plus_two_cpu") + "}\n"


@uri_param
def test_AbsolutePathSucceeds(tmp_path, uri):
    with create_server_core(tmp_path, GetTestModelServerConfig(uri)):
        pass


def test_RelativePathFails(tmp_path):
    assert create_server_core_status(tmp_path, relative_config()).startswith("INVALID_ARGUMENT")


@uri_param
def test_MixedAbsoluteRelativeFails(tmp_path, uri):
    mixed = ("model_config_list {\n" + model_entry(uri=uri)
             + model_entry(name=f"{kTestModelName}_relative", path="saved_model_half_plus_two_cpu") + "}\n")
    assert create_server_core_status(tmp_path, mixed).startswith("INVALID_ARGUMENT")


def _corrupt_model(tmp_path):
    """A copy of the test model whose saved_model.pb does not parse (stands for the injected error)."""
    path = tmp_path / "corrupt"
    shutil.copytree(TESTDATA / "saved_model_half_plus_two_cpu", path)
    (path / "00000123" / "saved_model.pb").write_bytes(b"\x08not a SavedModel")
    return path


def test_ErroringModel_black_box(tmp_path):
    """Added (ErroringModel without the injected error): Create fails naming the model's error."""
    status = create_server_core_status(tmp_path, "model_config_list {\n" + model_entry(path=_corrupt_model(tmp_path))
                                       + "}\n")
    assert "did not become available" in status and kTestModelName in status


def test_ErroringModel_message(tmp_path):
    status = create_server_core_status(tmp_path, "model_config_list {\n" + model_entry(path=_corrupt_model(tmp_path))
                                       + "}\n")
    assert "1 servable(s) did not become available" in status


def test_IllegalReconfigurationToCustomConfig(tmp_path):
    # Create a ServerCore with ModelConfigList config (polling its file, the reload the gRPC API allows).
    with create_server_core(tmp_path, GetTestModelServerConfig(), "--model_config_file_poll_wait_seconds=1") as core:
        # Reload with a custom config.
        (tmp_path / "models.config").write_text('custom_model_config { type_url: "type.googleapis.com/x" }\n')
        assert core.srv.wait_for_line("Cannot transition to requested config", timeout=30), core.srv.log[-3000:]


def test_IllegalConfigModelTypeAndPlatformSet(tmp_path):
    config = "model_config_list {\n" + model_entry(extra="model_type: TENSORFLOW") + "}\n"
    assert "Illegal setting both" in create_server_core_status(tmp_path, config)


def test_DeprecatedModelTypeConfig(tmp_path):
    config = "model_config_list {\n" + model_entry(platform="model_type: TENSORFLOW") + "}\n"
    with create_server_core(tmp_path, config) as core:
        assert core.available() == [kTestModelVersion]


def test_DuplicateModelNameInConfig(tmp_path):
    config = "model_config_list {\n" + model_entry() + model_entry() + "}\n"
    create_server_core_status(tmp_path, config)  # not ok


def test_UnknownModelPlatform(tmp_path):
    config = "model_config_list {\n" + model_entry(platform='model_platform: "not_a_known_platform"') + "}\n"
    create_server_core_status(tmp_path, config)  # not ok


def test_IllegalToChangeModelPlatform(tmp_path):
    # Configure a model for platform 0 (tensorflow: the only one tensorflow_model_server registers).
    with create_server_core(tmp_path, GetTestModelServerConfig()) as core:
        # Attempt to switch the existing model to platform 1.
        with pytest.raises(grpc.RpcError) as ei:
            core.reload_config("model_config_list {\n" + model_entry(platform='model_platform: "platform_1"') + "}\n")
        assert "Illegal to change a model's platform" in ei.value.details()


@uri_param
def test_ModelSpecMultipleVersionsAvailable(tmp_path, uri):
    with create_server_core(tmp_path, two_version_config(uri)) as core:
        core.wait_until(lambda: set(core.available()) == kAspiredVersions)
        # Do not specify any version number; we should be given the latest version.
        assert core.servable_version() == kTestModelLargerVersion
        # Use ModelSpec::version to request a specific version number.
        assert core.servable_version(version=kTestModelVersion) == kTestModelVersion
        # Assign labels to the two versions of the model.
        core.reload_config(two_version_config(uri, {"A": kTestModelVersion, "B": kTestModelLargerVersion}))
        # Use ModelSpec::version_label to request the version labeled "A".
        assert core.servable_version(label="A") == kTestModelVersion
        # Use ModelSpec::version_label to request the version labeled "B".
        assert core.servable_version(label="B") == kTestModelLargerVersion
        # Use ModelSpec::version_label to request a nonexistent label.
        with pytest.raises(grpc.RpcError) as ei:
            core.servable_version(label="nonexistent label")
        assert "Unrecognized servable version label" in ei.value.details()


def test_AssignLabelToUnavailableVersion(tmp_path):
    with create_server_core(tmp_path, two_version_config()) as core:
        # Wait until both aspired versions of the servable have been loaded.
        core.wait_until(lambda: set(core.available()) == kAspiredVersions)
        # Attempt to assign a label to a version that isn't one of the loaded ones.
        with pytest.raises(grpc.RpcError) as ei:
            core.reload_config(two_version_config(labels={"nice try": kTestModelBogusVersion}))
        assert "not currently available for inference" in ei.value.details()


def test_AssignLabelToUnavailableVersionAllowed(tmp_path):
    with create_server_core(tmp_path, two_version_config(), "--allow_version_labels_for_unavailable_models") as core:
        core.wait_until(lambda: set(core.available()) == kAspiredVersions)
        # Attempt to assign a label to a version that isn't one of the loaded ones.
        core.reload_config(two_version_config(labels={"nice try": kTestModelBogusVersion}))


def test_AssignExistingLabelToUnavailableVersionDisallowed(tmp_path):
    with create_server_core(tmp_path, two_version_config(), "--allow_version_labels_for_unavailable_models") as core:
        core.wait_until(lambda: set(core.available()) == kAspiredVersions)
        core.reload_config(two_version_config(labels={"A": kTestModelVersion, "B": kTestModelLargerVersion}))
        # Attempt to assign an existing label to a different version that isn't one of the loaded ones.
        with pytest.raises(grpc.RpcError) as ei:
            core.reload_config(two_version_config(labels={"A": kTestModelBogusVersion, "B": kTestModelLargerVersion}))
        assert "not currently available for inference" in ei.value.details()
