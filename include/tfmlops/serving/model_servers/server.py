"""Wiring, mirroring TF Serving's ``tensorflow_serving/model_servers/server.cc`` (``Server::BuildAndStart``):
ServerCore + (optional) batching + gRPC + REST + config-file polling, with its startup checks
and messages."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from ..config import (BatchingOptions, ConfigError, build_single_model_config, load_batching_parameters,
                      load_config, load_monitoring_config)
from .. import tensors
from ..errors import Code, StatusError
from ..servables.util import set_signature_method_name_check_feature

log = logging.getLogger("tfmlops.serving")

M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (what ``MALLOC_ARENA_MAX`` does, which only works when set before
    the process starts): with one arena per thread, every large request handled on a new thread
    left its own heap behind (RSS grew ~64 MB per large request, up to ~1 GB)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):  # not glibc: nothing to cap
        pass


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    grpc_port: int = 8500
    http_port: int = 0
    http_timeout_in_ms: int = 30000
    http_max_body_bytes: int = 64 * 1024 * 1024
    # tf-serving-local's bounds for hostile clients (see http_server, grpc_server, tensors)
    grpc_max_message_bytes: int = 64 * 1024 * 1024
    max_decoded_tensor_bytes: int = 64 * 1024 * 1024
    http_max_connections: int = 256
    http_idle_timeout_s: float = 60.0
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 60.0
    reload_wait_timeout_s: float = 300.0
    request_log_max_file_bytes: int = 64 * 1024 * 1024
    request_log_max_file_age_s: float = 300.0
    grpc_max_threads: int = 64
    enable_batching: bool = False
    batching_parameters_file: str = ""
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    fs_model_config_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    allow_version_labels_for_unavailable_models: bool = False
    enable_model_warmup: bool = True
    # more of TF Serving's Server::Options (main.cc flags)
    grpc_socket_path: str = ""
    grpc_channel_arguments: str = ""
    monitoring_config_file: str = ""
    saved_model_tags: str = "serve"
    prefer_tflite_model: bool = False
    num_tflite_pools: int = 0
    num_request_iterations_for_warmup: int = 0
    enable_signature_method_name_check: bool = False
    use_alts_credentials: bool = False
    ssl_config_file: str = ""
    tensorflow_session_parallelism: int = 0
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0


def parse_grpc_channel_args(text: str) -> list[tuple[str, int | str]]:
    """``parseGrpcChannelArgs``: ``"k=v,k2=v2"`` -> [(k, v)], a value that is an int32 passed as an int."""
    args = []
    for item in text.split(",") if text else ():
        key, eq, value = item.partition("=")
        if not eq:
            raise StatusError(Code.INVALID_ARGUMENT, f"Invalid gRPC channel argument: '{item}' (expected key=value)")
        value = value.split("=", 1)[0]
        try:
            number = int(value.strip())
            args.append((key, number if -2**31 <= number < 2**31 else value))
        except ValueError:
            args.append((key, value))
    return args


def _check_tf_serving_options(o: ServerOptions) -> None:
    """The checks of ``Server::BuildAndStart`` that come before the models are loaded."""
    if not o.grpc_port and not o.grpc_socket_path:
        raise StatusError(Code.INVALID_ARGUMENT, "At least one of server_options.grpc_port or "
                                                 "server_options.grpc_socket_path must be set.")
    if o.use_alts_credentials and o.ssl_config_file:
        raise StatusError(Code.INVALID_ARGUMENT,
                          "Either use_alts_credentials must be false or ssl_config_file must be empty.")
    if o.use_alts_credentials or o.ssl_config_file:  # deviation: no secure gRPC here
        raise StatusError(Code.UNIMPLEMENTED, "tf-serving-local serves gRPC in plaintext only: "
                                              "--use_alts_credentials and --ssl_config_file are not supported")
    if o.tensorflow_intra_op_parallelism > 0 and o.tensorflow_inter_op_parallelism > 0 \
            and o.tensorflow_session_parallelism > 0:
        raise StatusError(Code.INVALID_ARGUMENT,
                          "Either configure server_options.tensorflow_session_parallelism or "
                          "(server_options.tensorflow_intra_op_parallelism, "
                          "server_options.tensorflow_inter_op_parallelism) separately. You cannot configure all.")


class ModelServer:
    def __init__(self, options: ServerOptions):
        self.options = options
        self.server_core = None
        self.batcher = None
        self.grpc_server = None
        self.rest_server = None
        self.grpc_port = None
        self.http_port = None
        self._config_thread = None
        self._stop = threading.Event()

    def build_and_start(self) -> None:
        o = self.options
        _check_tf_serving_options(o)
        if not o.model_base_path and not o.model_config_file:
            raise StatusError(Code.INVALID_ARGUMENT,
                              "Both server_options.model_base_path and server_options.model_config_file are empty!")
        set_signature_method_name_check_feature(o.enable_signature_method_name_check)
        channel_args = parse_grpc_channel_args(o.grpc_channel_arguments)
        if o.model_config_file:
            config = load_config(o.model_config_file)
        else:
            log.info("Building single TensorFlow model file config:  model_name: %s model_base_path: %s",
                     o.model_name, o.model_base_path)
            config = build_single_model_config(o.model_name, o.model_base_path)
        if o.enable_batching:
            opts = load_batching_parameters(o.batching_parameters_file) if o.batching_parameters_file \
                else BatchingOptions(thread_pool_name="model_server_batch_threads")
            from ..batching import BatchScheduler

            self.batcher = BatchScheduler(opts)
            log.info("Batching enabled: %s", opts)
        elif o.batching_parameters_file:
            raise StatusError(Code.INVALID_ARGUMENT,
                              "server_options.batching_parameters_file is set without setting "
                              "server_options.enable_batching to true.")

        from ..core.server_request_logger import ServerRequestLogger
        from ..servables.saved_model_bundle import servable_factory
        from .grpc_server import make_grpc_server
        from .http_rest_api_handler import RestApi
        from .http_server import RestServer
        from .server_core import ServerCore

        factory = servable_factory(
            tags=[t for t in o.saved_model_tags.split(",") if t], prefer_tflite=o.prefer_tflite_model,
            num_tflite_interpreters=o.num_tflite_pools or None, enable_warmup=o.enable_model_warmup,
            warmup_iterations=max(1, o.num_request_iterations_for_warmup))
        limit_malloc_arenas()
        tensors.MAX_DECODED_BYTES = o.max_decoded_tensor_bytes
        core = self.server_core = ServerCore(
            file_system_poll_wait_seconds=o.file_system_poll_wait_seconds,
            allow_version_labels_for_unavailable_models=o.allow_version_labels_for_unavailable_models,
            batch_scheduler=self.batcher, servable_factory=factory, reload_wait_timeout_s=o.reload_wait_timeout_s,
            request_logger=ServerRequestLogger(max_file_bytes=o.request_log_max_file_bytes,
                                               max_file_age_s=o.request_log_max_file_age_s))
        core.reload_config(config)  # waits for the initial models, like ServerCore::Create
        core.start_polling()
        if o.fs_model_config_poll_wait_seconds > 0 and o.model_config_file:
            self._config_thread = threading.Thread(target=self._poll_config_file, name="fs_model_config_poll",
                                                   daemon=True)
            self._config_thread.start()

        self.grpc_server, self.grpc_port = make_grpc_server(core, o.host, o.grpc_port, o.grpc_max_threads,
                                                            max_message_bytes=o.grpc_max_message_bytes,
                                                            channel_args=channel_args,
                                                            socket_path=o.grpc_socket_path)
        self.grpc_server.start()
        if o.grpc_port:
            log.info("Running gRPC ModelServer at %s:%d ...", o.host, self.grpc_port)
        if o.grpc_socket_path:
            log.info("Running gRPC ModelServer at UNIX socket %s ...", o.grpc_socket_path)
        if o.http_port:
            if o.http_port != o.grpc_port:
                monitoring = load_monitoring_config(o.monitoring_config_file) if o.monitoring_config_file else None
                self.rest_server = RestServer(
                    o.host, o.http_port, RestApi(core, o.http_timeout_in_ms, monitoring_config=monitoring),
                    max_body_bytes=o.http_max_body_bytes,
                    max_connections=o.http_max_connections,
                    timeouts_s={"idle": o.http_idle_timeout_s, "header": o.http_header_timeout_s,
                                "body": o.http_body_timeout_s})
                self.http_port = self.rest_server.server_address[1]
                self.rest_server.start()
                log.info("Exporting HTTP/REST API at:%s:%d ...", o.host, self.http_port)
            else:
                log.error("server_options.http_port cannot be same as grpc_port. Please use a different port for "
                          "HTTP/REST API. Skipped exporting HTTP/REST API.")

    def _poll_config_file(self) -> None:
        path = self.options.model_config_file
        while not self._stop.wait(self.options.fs_model_config_poll_wait_seconds):
            try:
                cfg = load_config(path)
            except ConfigError as exc:
                log.error("Failed to read ModelServerConfig file: %s", exc.message)
                continue
            try:  # no wait for new models here: the next poll must see a fixed file at once
                self.server_core.reload_config(cfg, wait_for_new_models=False)
            except StatusError as exc:
                log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", exc.message)

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop accepting; let in-flight requests finish; unload models."""
        self._stop.set()
        threads = []
        if self.rest_server is not None:
            t = threading.Thread(target=self.rest_server.stop, args=(grace_s,), daemon=True)
            t.start()
            threads.append(t)
        if self.grpc_server is not None:
            ev = self.grpc_server.stop(grace_s)
            ev.wait(grace_s + 1)
        for t in threads:
            t.join(grace_s + 1)
        if self.server_core is not None:
            self.server_core.stop(unload=True)
        if self.batcher is not None:
            self.batcher.stop()
