"""Port of TF Serving's ``tensorflow_serving/model_servers/test_util/tensorflow_model_server_test_base.py``
(commit in ``testdata/README.md``): :func:`RunServer` starts ``tf-serving-local`` with the exact
command line upstream gives ``tensorflow_model_server``, :func:`VerifyPredictRequest` and the
other helpers assert what upstream asserts.

Differences, all in the harness, none in what is asserted:

* every server gets its own ``--grpc_socket_path`` (upstream shares ``/tmp/tf-serving.sock``
  between all servers of a run; here several test runs may share the machine);
* ``WaitForServerReady`` probes every 0.25 s instead of every second, and stops early when the
  server process has exited;
* the cache of running servers (upstream: one per distinct argument set, for the whole run) keeps
  the last :data:`MAX_CACHED_SERVERS` and is emptied at the end of each test module, to bound the
  memory of a run;
* ``tf.test.TestCase.get_temp_dir`` is pytest's ``tmp_path``; ``TEST_SRCDIR`` is this directory.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from .._proc import ServerProcess

TESTDATA = Path(__file__).resolve().parent / "testdata"

RPC_TIMEOUT = 5.0
HTTP_REST_TIMEOUT_MS = 5000
CHANNEL_WAIT_TIMEOUT = 5.0
WAIT_FOR_SERVER_READY_INT_SECS = 60
DEFAULT_SERVING_SIGNATURE_DEF_KEY = "serving_default"
DT_FLOAT = 1
MAX_CACHED_SERVERS = 3


def WaitForServerReady(port, proc: ServerProcess | None = None):
    """Waits for a server on the localhost to become ready."""
    deadline = time.monotonic() + WAIT_FOR_SERVER_READY_INT_SECS
    while time.monotonic() < deadline:
        time.sleep(0.25)
        if proc is not None and proc.proc.poll() is not None:
            return
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "intentionally_missing_model"
        try:
            # Send empty request to missing model
            with grpc.insecure_channel(f"localhost:{port}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                stub.Predict(request, RPC_TIMEOUT)
        except grpc.RpcError as error:
            # Missing model error will have details containing 'Servable'
            if "Servable" in (error.details() or ""):
                print("Server is ready")
                return


def CallREST(url, req, max_attempts=60):
    """Returns HTTP response body from a REST API call."""
    for attempt in range(max_attempts):
        try:
            print(f"Attempt {attempt}: Sending request to {url} with data:\n{req}")
            json_data = json.dumps(req).encode("utf-8") if req is not None else None
            resp = urllib.request.urlopen(urllib.request.Request(url, data=json_data))
            resp_data = resp.read()
            print(f"Received response:\n{resp_data}")
            resp.close()
            return resp_data
        except Exception as e:  # noqa: BLE001 - upstream retries on any failure
            print(f"Failed attempt {attempt}. Error: {e}")
            if attempt == max_attempts - 1:
                raise
            print("Retrying...")
            time.sleep(1)


def SortedObject(obj):
    """Returns sorted object (with nested list/dictionaries)."""
    if isinstance(obj, dict):
        return sorted((k, SortedObject(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return sorted(SortedObject(x) for x in obj)
    if isinstance(obj, tuple):
        return list(sorted(SortedObject(x) for x in obj))
    return obj


class _Servers:
    """Running servers by argument set (upstream's ``model_servers_dict``)."""

    def __init__(self):
        self.running: collections.OrderedDict = collections.OrderedDict()

    def get(self, key):
        hostports = self.running.get(key)
        if hostports is not None:
            self.running.move_to_end(key)
        return hostports

    def put(self, key, hostports) -> None:
        self.running[key] = hostports
        while len(self.running) > MAX_CACHED_SERVERS:
            _, (proc, _, _) = self.running.popitem(last=False)
            _stop(proc)

    def stop_all(self) -> None:
        while self.running:
            _, (proc, _, _) = self.running.popitem(last=False)
            _stop(proc)


def _stop(proc: ServerProcess) -> None:
    proc.terminate()
    shutil.rmtree(proc.socket_dir, ignore_errors=True)


SERVERS = _Servers()


def RunServer(model_name, model_path, model_server_path="model_servers", model_type="tf",
              model_config_file=None, monitoring_config_file=None, batching_parameters_file=None,
              grpc_channel_arguments="", wait_for_server_ready=True, pipe=None,
              model_config_file_poll_period=None):
    """Run tf-serving-local with upstream's command line for ``tensorflow_model_server``.

    Returns 3-tuple (<ServerProcess>, <grpc host:port>, <rest host:port>); the process's output is
    in ``proc.log`` (``pipe`` is accepted for upstream's signature: output is always captured).
    """
    args_key = (model_name, str(model_path), model_server_path, model_type, str(model_config_file),
                str(monitoring_config_file), str(batching_parameters_file), grpc_channel_arguments,
                wait_for_server_ready, pipe, model_config_file_poll_period)
    cached = SERVERS.get(args_key)
    if cached is not None:
        return cached
    socket_dir = tempfile.mkdtemp(prefix="tfs-")
    args = [f"--rest_api_timeout_in_ms={HTTP_REST_TIMEOUT_MS}",
            f"--grpc_socket_path={os.path.join(socket_dir, 'tf-serving.sock')}"]
    if model_config_file:
        args.append(f"--model_config_file={model_config_file}")
    elif model_path:
        args += [f"--model_name={model_name}", f"--model_base_path={model_path}"]
    else:
        raise ValueError("Both model_config_file and model_path cannot be empty!")
    if model_type == "tflite":
        args.append("--prefer_tflite_model=true")
    if monitoring_config_file:
        args.append(f"--monitoring_config_file={monitoring_config_file}")
    if model_config_file_poll_period is not None:
        args.append(f"--model_config_file_poll_wait_seconds={model_config_file_poll_period}")
    if batching_parameters_file:
        args += ["--enable_batching", f"--batching_parameters_file={batching_parameters_file}"]
    args_list = [arg for arg in [grpc_channel_arguments, "grpc.so_reuseaddr=1"] if arg]
    args.append("--grpc_channel_arguments=" + ",".join(args_list))

    proc = ServerProcess(args)  # --port=P --rest_api_port=R first, as upstream
    proc.socket_dir = socket_dir
    proc.socket_path = os.path.join(socket_dir, "tf-serving.sock")
    print(" ".join(proc.argv))
    if wait_for_server_ready:
        WaitForServerReady(proc.grpc_port, proc)
    hostports = (proc, f"localhost:{proc.grpc_port}", f"localhost:{proc.rest_port}")
    SERVERS.put(args_key, hostports)
    return hostports


def VerifyModelSpec(actual_model_spec, exp_model_name, exp_signature_name, exp_version):
    """Verifies model_spec matches expected model name, signature, version."""
    assert actual_model_spec.name == exp_model_name
    assert actual_model_spec.signature_name == exp_signature_name
    assert actual_model_spec.version.value == exp_version


def VerifyPredictRequest(model_server_address, expected_output, expected_version, model_name="default",
                         specify_output=True, batch_input=False,
                         signature_name=DEFAULT_SERVING_SIGNATURE_DEF_KEY, rpc_timeout=RPC_TIMEOUT):
    """Send PredictionService.Predict request and verify output."""
    print("Sending Predict request...")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    request.inputs["x"].dtype = DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    dim = request.inputs["x"].tensor_shape.dim.add()
    dim.size = 1
    if batch_input:
        request.inputs["x"].tensor_shape.dim.add().size = 1
    if specify_output:
        request.output_filter.append("y")
    with grpc.insecure_channel(model_server_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        result = stub.Predict(request, rpc_timeout)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == DT_FLOAT
    assert len(result.outputs["y"].float_val) == 1
    assert result.outputs["y"].float_val[0] == expected_output
    VerifyModelSpec(result.model_spec, request.model_spec.name, signature_name, expected_version)


def GetModelVersion(model_path):
    """Version of the model in ``model_path`` (exactly one integer-named directory)."""
    return int(os.listdir(model_path)[0])


def SavedModelBundlePath():
    return TESTDATA / "saved_model_half_plus_two_cpu"


def SavedModelHalfPlusTwoTf2():
    return TESTDATA / "saved_model_half_plus_two_tf2_cpu"


def SavedModelHalfPlusThreePath():
    return TESTDATA / "saved_model_half_plus_three"


def TfLiteModelPath():
    return TESTDATA / "saved_model_half_plus_two_tflite"


def TfLiteModelWithSigDefPath():
    return TESTDATA / "saved_model_half_plus_two_tflite_with_sigdef"


def GoodModelConfigTemplate():
    return TESTDATA / "good_model_config.txt"


def BadModelConfigFile():
    return TESTDATA / "bad_model_config.txt"


def BatchingParametersFile():
    return TESTDATA / "batching_config.txt"


def ModelMetadataFile():
    return TESTDATA / "half_plus_two_model_metadata.json"


def MonitoringConfigFile():
    return TESTDATA / "monitoring_config.txt"


def TestPredict(model_path, batching_parameters_file=None, signature_name=DEFAULT_SERVING_SIGNATURE_DEF_KEY,
                model_server_path="model_servers"):
    """Helper method to test prediction (upstream ``_TestPredict``)."""
    model_server_address = RunServer("default", model_path, batching_parameters_file=batching_parameters_file,
                                     model_server_path=model_server_path)[1]
    expected_version = GetModelVersion(model_path)
    VerifyPredictRequest(model_server_address, expected_output=3.0, expected_version=expected_version,
                         signature_name=signature_name)
    VerifyPredictRequest(model_server_address, expected_output=3.0, specify_output=False,
                         expected_version=expected_version, signature_name=signature_name)


def run_python(code: str, timeout: float = 300) -> None:
    """Run ``code`` in a fresh Python (model exports that configure TensorFlow's devices)."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
