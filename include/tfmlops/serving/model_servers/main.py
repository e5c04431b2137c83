"""``tf-serving-local``: a TensorFlow Serving-compatible model server (``tensorflow_model_server``
flags), mirroring TF Serving's ``tensorflow_serving/model_servers/main.cc``. Every flag of
``main.cc`` is accepted with its type and default. Both ``--flag=value`` and ``--flag value`` are
accepted; booleans also as bare ``--flag``.

Deviations: an unknown flag or a stray argument is an error (exit status 2; TF Serving prints
"unknown argument" and starts anyway). The flags of :data:`NO_EFFECT` are accepted and ignored
(logged once: "flag X has no effect in tf-serving-local"); ``--ssl_config_file`` and
``--use_alts_credentials`` are refused (the gRPC server is plaintext only; serving plaintext where
TLS was asked for would be worse than not starting). ``--host``, ``--rest_api_max_body_bytes``,
``--s3_cache_dir`` and the ``--request_log_*`` rotation bounds are tf-serving-local's own.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

USAGE_EXIT = 2

# name -> (type, default, help); main.cc's flags first, in its order
FLAGS = {
    "port": (int, 8500, "TCP port to listen on for gRPC/HTTP API. Disabled if port set to zero."),
    "grpc_socket_path": (str, "", "If non-empty, listen to a UNIX socket for gRPC API on the given path. Can be "
                                  "either relative or absolute path."),
    "rest_api_port": (int, 0, "Port to listen on for HTTP/REST API. 0 disables the REST API."),
    "rest_api_num_threads": (int, 0, "Accepted for compatibility; the REST server uses a thread per connection."),
    "rest_api_timeout_in_ms": (int, 30000, "Timeout for HTTP/REST API calls (model runs)."),
    "rest_api_enable_cors_support": (bool, False, "Enable CORS headers in response"),
    "enable_batching": (bool, False, "enable batching"),
    "allow_version_labels_for_unavailable_models": (bool, False, "If true, allows assigning unused version "
                                                                 "labels to models that are not available yet."),
    "batching_parameters_file": (str, "", "BatchingParameters text proto (requires --enable_batching)"),
    "enable_per_model_batching_parameters": (bool, False, "Read batching_params.pbtxt from each SavedModel dir."),
    "model_config_file": (str, "", "ModelServerConfig text proto with the models to serve"),
    "model_config_file_poll_wait_seconds": (int, 0, "Interval in seconds between each poll of the model "
                                                     "config file. 0 means no polling."),
    "model_name": (str, "default", "name of model (ignored if --model_config_file flag is set)"),
    "model_base_path": (str, "", "path to export (ignored if --model_config_file flag is set)"),
    "num_load_threads": (int, 0, "Threads of the servable load thread-pool."),
    "num_unload_threads": (int, 0, "Threads of the servable unload thread-pool."),
    "max_num_load_retries": (int, 5, "Load retries after a failure."),
    "load_retry_interval_micros": (int, 60 * 1000 * 1000, "Interval between load retries."),
    "file_system_poll_wait_seconds": (int, 1, "Interval in seconds between each poll of the filesystem for "
                                              "new model versions. 0: poll once; <0: never."),
    "flush_filesystem_caches": (bool, True, "Flush filesystem caches after loads."),
    "tensorflow_session_parallelism": (int, 0, "Threads of a TensorFlow session (0: auto)."),
    "tensorflow_session_config_file": (str, "", "TensorFlow Session ConfigProto text proto."),
    "tensorflow_intra_op_parallelism": (int, 0, "Intra-op threads (0: auto)."),
    "tensorflow_inter_op_parallelism": (int, 0, "Inter-op threads (0: auto)."),
    "use_alts_credentials": (bool, False, "Use Google ALTS credentials (refused by tf-serving-local)"),
    "ssl_config_file": (str, "", "SSLConfig text proto for a secure gRPC channel (refused by tf-serving-local)"),
    "platform_config_file": (str, "", "PlatformConfigMap text proto."),
    "per_process_gpu_memory_fraction": (float, 0.0, "Fraction of GPU memory per process."),
    "saved_model_tags": (str, "serve", "Comma-separated set of tags of the meta graph def to load from SavedModel."),
    "grpc_channel_arguments": (str, "", "A comma separated list of arguments to be passed to the grpc server. "
                                        "(e.g. grpc.max_connection_age_ms=2000)"),
    "grpc_max_threads": (int, 64, "Max gRPC server threads."),
    "enable_model_warmup": (bool, True, "Replay assets.extra/tf_serving_warmup_requests before serving."),
    "num_request_iterations_for_warmup": (int, 0, "Number of times a request is iterated during warmup replay. "
                                                  "This value is used only if > 0."),
    "version": (bool, False, "Display version"),
    "monitoring_config_file": (str, "", "If non-empty, read an ascii MonitoringConfig protobuf from the supplied "
                                        "file name"),
    "remove_unused_fields_from_bundle_metagraph": (bool, True, "Remove unused MetaGraphDef fields."),
    "prefer_tflite_model": (bool, False, "Prefer TensorFlow Lite model from `model.tflite` file in SavedModel "
                                         "directory, instead of the TensorFlow model from `saved_model.pb` file."),
    "num_tflite_pools": (int, os.cpu_count() or 1, "Number of TFLite interpreters of a TFLite model."),
    "num_tflite_interpreters_per_pool": (int, 1, "TFLite interpreters per pool."),
    "enable_signature_method_name_check": (bool, False, "Enable method_name check for SignatureDef. Disable this "
                                                        "if serving native TF2 regression/classification models."),
    "xla_cpu_compilation_enabled": (bool, False, "Enable XLA:CPU JIT."),
    "xla_gpu_compilation_enabled": (bool, False, "Enable XLA:CPU and XLA:GPU JIT."),
    "enable_profiler": (bool, True, "Enable profiler service."),
    "thread_pool_factory_config_file": (str, "", "ThreadPoolConfig text proto."),
    "mixed_precision": (str, "", "specify mixed_precision mode"),
    "skip_initialize_tpu": (bool, False, "Whether to skip auto initializing TPU."),
    "enable_grpc_healthcheck_service": (bool, False, "Enable the standard gRPC healthcheck service."),
    "enable_serialization_as_tensor_content": (bool, False, "Serialize predict responses as tensor content."),
    # tf-serving-local's own
    "host": (str, "127.0.0.1", "Address both servers bind to (tf-serving-local only; TF Serving binds 0.0.0.0)"),
    "rest_api_max_body_bytes": (int, 64 * 1024 * 1024, "Max REST request body (tf-serving-local only)."),
    "s3_cache_dir": (str, "", "Local cache for s3:// base paths (tf-serving-local only; default "
                              "$TF_SERVING_LOCAL_S3_CACHE or a temp dir). S3 endpoint and credentials come "
                              "from the AWS_* environment variables (e.g. AWS_ENDPOINT_URL_S3)."),
    "request_log_max_file_bytes": (int, 64 * 1024 * 1024, "Request log files (logging_config) are closed at this "
                                                          "size (tf-serving-local only)."),
    "request_log_max_file_age_s": (float, 300.0, "... and after this many seconds (tf-serving-local only)."),
}
# Flags of main.cc that tune things tf-serving-local does not have (thread pools, caches, retries,
# TensorFlow session / XLA / GPU / TPU / profiler settings, ...): accepted, logged, ignored.
NO_EFFECT = (
    "rest_api_num_threads", "rest_api_enable_cors_support", "enable_per_model_batching_parameters",
    "num_load_threads", "num_unload_threads", "max_num_load_retries", "load_retry_interval_micros",
    "flush_filesystem_caches", "tensorflow_session_parallelism", "tensorflow_session_config_file",
    "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism", "platform_config_file",
    "per_process_gpu_memory_fraction", "remove_unused_fields_from_bundle_metagraph",
    "num_tflite_interpreters_per_pool", "xla_cpu_compilation_enabled", "xla_gpu_compilation_enabled",
    "enable_profiler", "thread_pool_factory_config_file", "mixed_precision", "skip_initialize_tpu",
    "enable_grpc_healthcheck_service", "enable_serialization_as_tensor_content",
)
TRUE, FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


class FlagError(Exception):
    pass


def usage() -> str:
    lines = ["usage: tf-serving-local [--flag=value ...]", "Flags:"]
    for name, (typ, default, doc) in FLAGS.items():
        lines.append(f"\t--{name}={default!s}\t{typ.__name__}\t{doc}")
    return "\n".join(lines)


def parse_flags(argv: list[str]) -> dict:
    return parse_flags_given(argv)[0]


def parse_flags_given(argv: list[str]) -> tuple[dict, list[str]]:
    """(every flag's value, the names given on the command line in order)."""
    values = {name: spec[1] for name, spec in FLAGS.items()}
    given: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help", "--helpfull"):
            raise FlagError("help")
        if not arg.startswith("-") or arg in ("-", "--"):
            raise FlagError(f"Unexpected argument: {arg}")
        body = arg.lstrip("-")
        name, eq, raw = body.partition("=")
        if name not in FLAGS:
            raise FlagError(f"Unknown command line flag '{name}'")
        typ = FLAGS[name][0]
        if typ is bool:
            if not eq:
                if i + 1 < len(argv) and argv[i + 1].lower() in TRUE | FALSE:
                    raw, i = argv[i + 1], i + 1
                else:
                    raw = "true"
            if raw.lower() not in TRUE | FALSE:
                raise FlagError(f"Illegal value '{raw}' for boolean flag --{name}")
            values[name] = raw.lower() in TRUE
        else:
            if not eq:
                if i + 1 >= len(argv):
                    raise FlagError(f"Missing value for flag --{name}")
                raw, i = argv[i + 1], i + 1
            try:
                values[name] = typ(raw)
            except ValueError:
                raise FlagError(f"Illegal value '{raw}' for flag --{name} ({typ.__name__})") from None
        if name not in given:
            given.append(name)
        i += 1
    return values, given


def version_text() -> str:
    """``--version``: the TF Serving API version this server implements and TensorFlow's."""
    from importlib.metadata import PackageNotFoundError, version

    def v(dist):
        try:
            return version(dist)
        except PackageNotFoundError:
            return "unknown"

    return (f"TensorFlow ModelServer: {v('tensorflow-serving-api')} (tf-serving-local)\n"
            f"TensorFlow Library: {v('tensorflow')}")


def _setup_logging() -> None:
    level = os.environ.get("TF_SERVING_LOCAL_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname).1s tf-serving-local] %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("tfmlops.serving")
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        flags, given = parse_flags_given(argv)
    except FlagError as exc:
        if str(exc) == "help":
            print(usage())
            return 0
        print(f"ERROR: {exc}\n{usage()}", file=sys.stderr)
        return USAGE_EXIT
    if flags["version"]:
        print(version_text())
        return 0

    _setup_logging()
    log = logging.getLogger("tfmlops.serving")
    for name in given:
        if name in NO_EFFECT:
            log.warning("flag --%s has no effect in tf-serving-local", name)
    if flags["s3_cache_dir"]:
        os.environ["TF_SERVING_LOCAL_S3_CACHE"] = flags["s3_cache_dir"]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    from ..errors import StatusError
    from .server import ModelServer, ServerOptions

    options = ServerOptions(
        host=flags["host"], grpc_port=flags["port"], http_port=flags["rest_api_port"],
        http_timeout_in_ms=flags["rest_api_timeout_in_ms"], http_max_body_bytes=flags["rest_api_max_body_bytes"],
        request_log_max_file_bytes=flags["request_log_max_file_bytes"],
        request_log_max_file_age_s=flags["request_log_max_file_age_s"],
        grpc_max_threads=flags["grpc_max_threads"], enable_batching=flags["enable_batching"],
        batching_parameters_file=flags["batching_parameters_file"], model_name=flags["model_name"],
        model_base_path=flags["model_base_path"], model_config_file=flags["model_config_file"],
        fs_model_config_poll_wait_seconds=flags["model_config_file_poll_wait_seconds"],
        file_system_poll_wait_seconds=flags["file_system_poll_wait_seconds"],
        allow_version_labels_for_unavailable_models=flags["allow_version_labels_for_unavailable_models"],
        enable_model_warmup=flags["enable_model_warmup"],
        grpc_socket_path=flags["grpc_socket_path"], grpc_channel_arguments=flags["grpc_channel_arguments"],
        monitoring_config_file=flags["monitoring_config_file"], saved_model_tags=flags["saved_model_tags"],
        prefer_tflite_model=flags["prefer_tflite_model"], num_tflite_pools=flags["num_tflite_pools"],
        num_request_iterations_for_warmup=flags["num_request_iterations_for_warmup"],
        enable_signature_method_name_check=flags["enable_signature_method_name_check"],
        use_alts_credentials=flags["use_alts_credentials"], ssl_config_file=flags["ssl_config_file"],
        tensorflow_session_parallelism=flags["tensorflow_session_parallelism"],
        tensorflow_intra_op_parallelism=flags["tensorflow_intra_op_parallelism"],
        tensorflow_inter_op_parallelism=flags["tensorflow_inter_op_parallelism"],
    )
    server = ModelServer(options)
    try:
        server.build_and_start()
    except StatusError as exc:
        log.error("Failed to start server. Error: %s", exc)
        server.stop(grace_s=0)
        _exit(1)
    except Exception as exc:  # noqa: BLE001
        log.exception("Failed to start server. Error: %s", exc)
        server.stop(grace_s=0)
        _exit(1)
    if stop.is_set():  # signalled during startup
        server.stop()
        _exit(0)
    while not stop.wait(3600):
        pass
    log.info("Received shutdown signal; draining in-flight requests")
    server.stop()
    log.info("Server stopped")
    _exit(0)
    return 0


def _exit(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip slow/fragile interpreter teardown with TF + gRPC threads


if __name__ == "__main__":
    sys.exit(main())
