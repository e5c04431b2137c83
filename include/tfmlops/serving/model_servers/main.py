"""``tf-serving-local``: a TensorFlow Serving-compatible model server (``tensorflow_model_server``
flags), mirroring TF Serving's ``tensorflow_serving/model_servers/main.cc``. Both
``--flag=value`` and ``--flag value`` are accepted; booleans also as bare ``--flag``. Unknown or
unsupported flags are an error (exit status 2).

Deviations: only the flags in :data:`FLAGS` exist; ``--host``, ``--rest_api_max_body_bytes`` and
``--s3_cache_dir`` are tf-serving-local's own.
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

# name -> (type, default, help)
FLAGS = {
    "port": (int, 8500, "TCP port to listen on for gRPC API (0 is an error, as in TF Serving)"),
    "rest_api_port": (int, 0, "Port to listen on for HTTP/REST API. 0 disables the REST API."),
    "rest_api_timeout_in_ms": (int, 30000, "Timeout for HTTP/REST API calls (model runs)."),
    "rest_api_num_threads": (int, 0, "Accepted for compatibility; the REST server uses a thread per connection."),
    "model_name": (str, "default", "name of model (ignored if --model_config_file flag is set)"),
    "model_base_path": (str, "", "path to export (ignored if --model_config_file flag is set)"),
    "model_config_file": (str, "", "ModelServerConfig text proto with the models to serve"),
    "model_config_file_poll_wait_seconds": (int, 0, "Interval in seconds between each poll of the model "
                                                     "config file. 0 means no polling."),
    "file_system_poll_wait_seconds": (int, 1, "Interval in seconds between each poll of the filesystem for "
                                              "new model versions. 0: poll once; <0: never."),
    "enable_batching": (bool, False, "enable batching"),
    "batching_parameters_file": (str, "", "BatchingParameters text proto (requires --enable_batching)"),
    "allow_version_labels_for_unavailable_models": (bool, False, "If true, allows assigning unused version "
                                                                 "labels to models that are not available yet."),
    "enable_model_warmup": (bool, True, "Replay assets.extra/tf_serving_warmup_requests before serving."),
    "grpc_max_threads": (int, 64, "Max gRPC server threads."),
    "host": (str, "127.0.0.1", "Address both servers bind to (tf-serving-local only; TF Serving binds 0.0.0.0)"),
    "rest_api_max_body_bytes": (int, 256 * 1024 * 1024, "Max REST request body (tf-serving-local only)."),
    "s3_cache_dir": (str, "", "Local cache for s3:// base paths (tf-serving-local only; default "
                              "$TF_SERVING_LOCAL_S3_CACHE or a temp dir). S3 endpoint and credentials come "
                              "from the AWS_* environment variables (e.g. AWS_ENDPOINT_URL_S3)."),
}
TRUE, FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


class FlagError(Exception):
    pass


def usage() -> str:
    lines = ["usage: tf-serving-local [--flag=value ...]", "Flags:"]
    for name, (typ, default, doc) in FLAGS.items():
        lines.append(f"\t--{name}={default!s}\t{typ.__name__}\t{doc}")
    return "\n".join(lines)


def parse_flags(argv: list[str]) -> dict:
    values = {name: spec[1] for name, spec in FLAGS.items()}
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
        i += 1
    return values


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
        flags = parse_flags(argv)
    except FlagError as exc:
        if str(exc) == "help":
            print(usage())
            return 0
        print(f"ERROR: {exc}\n{usage()}", file=sys.stderr)
        return USAGE_EXIT

    _setup_logging()
    log = logging.getLogger("tfmlops.serving")
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
        grpc_max_threads=flags["grpc_max_threads"], enable_batching=flags["enable_batching"],
        batching_parameters_file=flags["batching_parameters_file"], model_name=flags["model_name"],
        model_base_path=flags["model_base_path"], model_config_file=flags["model_config_file"],
        fs_model_config_poll_wait_seconds=flags["model_config_file_poll_wait_seconds"],
        file_system_poll_wait_seconds=flags["file_system_poll_wait_seconds"],
        allow_version_labels_for_unavailable_models=flags["allow_version_labels_for_unavailable_models"],
        enable_model_warmup=flags["enable_model_warmup"],
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
