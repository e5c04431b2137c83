"""TF Serving's command line (``tensorflow_serving/model_servers/main.cc`` and the checks of
``server.cc``'s ``Server::BuildAndStart``) on ``tf-serving-local``: every flag is accepted with
its type, the flags that have a meaning here act as in TF Serving, the others are logged as
having no effect. Not an upstream test file: upstream tests these flags only through
``tensorflow_model_server_test.py`` (ported in ``test_tensorflow_model_server.py``).
"""

from __future__ import annotations

import subprocess

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc, regression_pb2

from tfmlops.serving.model_servers import main as cli

from .._proc import ServerProcess, server_cmd
from ._upstream import TESTDATA, VerifyPredictRequest

# main.cc's flags (commit in testdata/README.md), with the C++ type of their Server::Options field
MAIN_CC_FLAGS = {
    "port": int, "grpc_socket_path": str, "rest_api_port": int, "rest_api_num_threads": int,
    "rest_api_timeout_in_ms": int, "rest_api_enable_cors_support": bool, "enable_batching": bool,
    "allow_version_labels_for_unavailable_models": bool, "batching_parameters_file": str,
    "enable_per_model_batching_parameters": bool, "model_config_file": str,
    "model_config_file_poll_wait_seconds": int, "model_name": str, "model_base_path": str,
    "num_load_threads": int, "num_unload_threads": int, "max_num_load_retries": int,
    "load_retry_interval_micros": int, "file_system_poll_wait_seconds": int, "flush_filesystem_caches": bool,
    "tensorflow_session_parallelism": int, "tensorflow_session_config_file": str,
    "tensorflow_intra_op_parallelism": int, "tensorflow_inter_op_parallelism": int, "use_alts_credentials": bool,
    "ssl_config_file": str, "platform_config_file": str, "per_process_gpu_memory_fraction": float,
    "saved_model_tags": str, "grpc_channel_arguments": str, "grpc_max_threads": int, "enable_model_warmup": bool,
    "num_request_iterations_for_warmup": int, "version": bool, "monitoring_config_file": str,
    "remove_unused_fields_from_bundle_metagraph": bool, "prefer_tflite_model": bool, "num_tflite_pools": int,
    "num_tflite_interpreters_per_pool": int, "enable_signature_method_name_check": bool,
    "xla_cpu_compilation_enabled": bool, "xla_gpu_compilation_enabled": bool, "enable_profiler": bool,
    "thread_pool_factory_config_file": str, "mixed_precision": str, "skip_initialize_tpu": bool,
    "enable_grpc_healthcheck_service": bool, "enable_serialization_as_tensor_content": bool,
}
HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu"
HALF_PLUS_TWO_TF2 = TESTDATA / "saved_model_half_plus_two_tf2_cpu"


def test_every_main_cc_flag_is_accepted_with_its_type():
    assert {n: cli.FLAGS[n][0] for n in MAIN_CC_FLAGS if n in cli.FLAGS} == MAIN_CC_FLAGS
    # TF Serving's defaults (server.h) where they are observable
    assert cli.FLAGS["saved_model_tags"][1] == "serve" and cli.FLAGS["enable_signature_method_name_check"][1] is False
    assert cli.FLAGS["enable_model_warmup"][1] is True and cli.FLAGS["file_system_poll_wait_seconds"][1] == 1
    values = cli.parse_flags(["--per_process_gpu_memory_fraction=0.5", "--xla_cpu_compilation_enabled",
                              "--mixed_precision=bfloat16", "--grpc_socket_path", "/tmp/x.sock"])
    assert values["per_process_gpu_memory_fraction"] == 0.5 and values["xla_cpu_compilation_enabled"] is True
    assert values["mixed_precision"] == "bfloat16" and values["grpc_socket_path"] == "/tmp/x.sock"


def _run(*flags) -> subprocess.CompletedProcess:
    return subprocess.run(server_cmd() + list(flags), capture_output=True, text=True, timeout=120)


def test_version():
    p = _run("--version")
    assert p.returncode == 0 and p.stdout.startswith("TensorFlow ModelServer: ") and "TensorFlow Library: " in p.stdout


@pytest.mark.parametrize("flags,message", [
    (["--port=0"], "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set."),
    (["--use_alts_credentials", "--ssl_config_file=/x"],
     "Either use_alts_credentials must be false or ssl_config_file must be empty."),
    (["--ssl_config_file=/x"], "UNIMPLEMENTED: tf-serving-local serves gRPC in plaintext only"),
    (["--tensorflow_session_parallelism=1", "--tensorflow_intra_op_parallelism=1",
      "--tensorflow_inter_op_parallelism=1"], "You cannot configure all."),
    (["--grpc_channel_arguments=grpc.max_receive_message_length"], "Invalid gRPC channel argument"),
])
def test_build_and_start_checks(flags, message):
    p = _run(*flags, f"--model_base_path={HALF_PLUS_TWO}")
    assert p.returncode == 1 and "Failed to start server. Error: " in p.stderr and message in p.stderr, p.stderr


def test_grpc_socket_only_and_flags_without_effect(tmp_path):
    """``--port=0 --grpc_socket_path=...``: gRPC on the Unix socket only; tuning flags logged once."""
    sock = tmp_path / "tfs.sock"
    srv = ServerProcess([f"--grpc_socket_path={sock}", "--model_name=default", f"--model_base_path={HALF_PLUS_TWO}",
                         "--tensorflow_session_parallelism=2", "--enable_profiler=false",
                         "--rest_api_num_threads=4", "--xla_cpu_compilation_enabled",
                         "--port=0"], rest=False)  # the last --port wins, as with TF Serving's parser
    try:
        srv.wait_ready()
        assert "Running gRPC ModelServer at UNIX socket" in srv.log
        assert "Running gRPC ModelServer at 127.0.0.1" not in srv.log
        VerifyPredictRequest(f"unix:{sock}", expected_output=3.0, expected_version=123)
        for flag in ("tensorflow_session_parallelism", "enable_profiler", "rest_api_num_threads",
                     "xla_cpu_compilation_enabled"):
            assert srv.log.count(f"flag --{flag} has no effect in tf-serving-local") == 1
    finally:
        srv.terminate()


@pytest.fixture(scope="module")
def method_name_check_server():
    """TF2 half_plus_two with --enable_signature_method_name_check and a 1000-byte gRPC receive limit."""
    with ServerProcess.running(["--model_name=default", f"--model_base_path={HALF_PLUS_TWO_TF2}",
                                "--enable_signature_method_name_check=true",
                                "--grpc_channel_arguments=grpc.max_receive_message_length=1000"], rest=False) as srv:
        with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as ch:
            yield prediction_service_pb2_grpc.PredictionServiceStub(ch)


def test_enable_signature_method_name_check(method_name_check_server):
    """classifier.cc / regressor.cc with the check on: TF2 signatures (method_name predict) are refused."""
    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name = "default"
    creq.model_spec.signature_name = "classify_x_to_y"
    creq.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    with pytest.raises(grpc.RpcError) as ei:
        method_name_check_server.Classify(creq, timeout=30)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ei.value.details() == ("Expected classification signature method_name to be tensorflow/serving/classify. "
                                  "Was: tensorflow/serving/predict")
    rreq = regression_pb2.RegressionRequest()
    rreq.model_spec.name = "default"
    rreq.model_spec.signature_name = "regress_x_to_y"
    rreq.input.CopyFrom(creq.input)
    with pytest.raises(grpc.RpcError) as ei:
        method_name_check_server.Regress(rreq, timeout=30)
    assert ei.value.details() == ("Expected regression signature method_name to be tensorflow/serving/regress. "
                                  "Was: tensorflow/serving/predict")


def test_grpc_channel_arguments_apply(method_name_check_server):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "default"
    small = req.inputs["x"]
    small.dtype = 1
    small.tensor_shape.dim.add().size = 1
    small.float_val.append(2.0)
    assert method_name_check_server.Predict(req, timeout=30).outputs["y"].float_val == [3.0]
    small.tensor_shape.dim[0].size = 1000
    small.float_val.extend(np.ones(999, np.float32).tolist())  # > 1000 bytes
    with pytest.raises(grpc.RpcError) as ei:
        method_name_check_server.Predict(req, timeout=30)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_saved_model_tags(tmp_path):
    p = _run("--port=9", f"--model_base_path={HALF_PLUS_TWO}", "--saved_model_tags=serve,gpu")
    assert p.returncode == 1 and "did not become available" in p.stderr and "gpu" in p.stderr, p.stderr[-3000:]
