"""Wiring, mirroring TF Serving's ``tensorflow_serving/model_servers/server.cc`` (``Server::BuildAndStart``):
ServerCore + (optional) batching + gRPC + REST + config-file polling, with its startup checks
and messages."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from ..config import (BatchingOptions, ConfigError, build_single_model_config, load_batching_parameters,
                      load_config)
from ..errors import Code, StatusError

log = logging.getLogger("tfmlops.serving")


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    grpc_port: int = 8500
    http_port: int = 0
    http_timeout_in_ms: int = 30000
    http_max_body_bytes: int = 256 * 1024 * 1024
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
        if not o.grpc_port:
            raise StatusError(Code.INVALID_ARGUMENT, "server_options.grpc_port is not set.")
        if not o.model_base_path and not o.model_config_file:
            raise StatusError(Code.INVALID_ARGUMENT,
                              "Both server_options.model_base_path and server_options.model_config_file are empty!")
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

        from ..servables.saved_model_bundle import Servable
        from .grpc_server import make_grpc_server
        from .http_rest_api_handler import RestApi
        from .http_server import RestServer
        from .server_core import ServerCore

        factory = Servable
        if not o.enable_model_warmup:
            class _NoWarmup(Servable):
                def warmup(self):
                    return 0
            factory = _NoWarmup
        core = self.server_core = ServerCore(
            file_system_poll_wait_seconds=o.file_system_poll_wait_seconds,
            allow_version_labels_for_unavailable_models=o.allow_version_labels_for_unavailable_models,
            batch_scheduler=self.batcher, servable_factory=factory)
        core.reload_config(config)  # waits for the initial models, like ServerCore::Create
        core.start_polling()
        if o.fs_model_config_poll_wait_seconds > 0 and o.model_config_file:
            self._config_thread = threading.Thread(target=self._poll_config_file, name="fs_model_config_poll",
                                                   daemon=True)
            self._config_thread.start()

        self.grpc_server, self.grpc_port = make_grpc_server(core, o.host, o.grpc_port, o.grpc_max_threads)
        self.grpc_server.start()
        log.info("Running gRPC ModelServer at %s:%d ...", o.host, self.grpc_port)
        if o.http_port:
            if o.http_port != o.grpc_port:
                self.rest_server = RestServer(o.host, o.http_port, RestApi(core, o.http_timeout_in_ms),
                                              max_body_bytes=o.http_max_body_bytes)
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
            try:
                self.server_core.reload_config(cfg)
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
