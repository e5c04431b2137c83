"""Sampled request logging configured the TF Serving way, mirroring
``tensorflow_serving/core/request_logger.cc`` and ``server_request_logger.cc``: each model's
``logging_config`` (``ModelConfig.logging_config`` in the model config file) gets a
:class:`RequestLogger` (one per distinct config, shared by models with the same one), which keeps
a request with probability ``sampling_config.sampling_rate`` and hands a
``tensorflow.serving.PredictionLog`` (``log_metadata`` + the request and its response) to its log
collector (:mod:`.log_collector`); ``request_log_count{model_name,status_code}`` counts the logged
ones. A config change replaces the loggers (a new config is checked before anything changes);
an unchanged config keeps its logger and file.

Where TF Serving differs: its open-source build has no collector (any ``logging_config`` fails the
config with "No request-logger-creator provided") and never calls the logger from its request
paths; here Predict, Classify, Regress and MultiInference are logged, over gRPC and REST. The
request's id — the ``X-Request-Id`` header (REST) or ``x-request-id`` metadata (gRPC), else a new
random one — is written to ``log_metadata.request_origin``, since ``LogMetadata`` has no request-id
field; labels that arrive later are joined on it. A failure to log is counted and logged, and
never fails the request.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
import uuid

from ..errors import Code, StatusError, invalid_argument
from ..util import monitoring
from .log_collector import DEFAULT_MAX_FILE_AGE_S, DEFAULT_MAX_FILE_BYTES, create_log_collector

log = logging.getLogger("tfmlops.serving")

_request_log_count = monitoring.counter(
    "/tensorflow/serving/request_log_count",
    "The total number of requests logged from the model server sliced down by model_name and status code.",
    "model_name", "status_code")

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id_or_new(value: str | None) -> str:
    """The client's request id when it is a plain token (letters, digits, ``._:-``, at most 128),
    else a new random one."""
    if value and REQUEST_ID_RE.fullmatch(value):
        return value
    return uuid.uuid4().hex


def sampling_rate(logging_config) -> float:
    """The rate RequestLogger uses: the first per-task config that matches this task (no data
    centre and no task index are set here, so: one without ``dc`` and ``task_index``), else
    ``sampling_rate``; it must lie in [0, 1]."""
    rate = logging_config.sampling_config.sampling_rate
    for cfg in logging_config.sampling_config.per_task_sampling_configs:
        if not cfg.dc and not cfg.HasField("task_index"):
            rate = cfg.sampling_rate
            break
    if not 0.0 <= rate <= 1.0:
        raise invalid_argument(f"logging_config.sampling_config.sampling_rate must be in [0, 1], got {rate}")
    return rate


class RequestLogger:
    def __init__(self, logging_config, collector, saved_model_tags=("serve",)):
        self.config = logging_config
        self.rate = sampling_rate(logging_config)
        self.collector = collector
        self.saved_model_tags = list(saved_model_tags)
        self._random = random.Random()

    def sample(self) -> bool:
        """``UniformSampler::Sample``."""
        return self.rate > 0 and (self.rate >= 1 or self._random.random() < self.rate)

    def log(self, model_spec, build, request_id: str | None) -> None:
        """``RequestLogger::Log``: ``build(log_metadata)`` makes the PredictionLog, only when sampled."""
        from tensorflow_serving.apis import logging_pb2

        meta = logging_pb2.LogMetadata()
        meta.model_spec.CopyFrom(model_spec)
        meta.sampling_config.CopyFrom(self.config.sampling_config)
        meta.saved_model_tags.extend(self.saved_model_tags)
        meta.timestamp_secs = int(time.time())
        meta.request_origin = request_id_or_new(request_id)
        code = Code.OK
        try:
            self.collector.collect_message(build(meta))
        except StatusError as exc:
            code = exc.code
            log.warning("request log for %s failed: %s", model_spec.name, exc.message)
        except Exception as exc:  # noqa: BLE001 - logging must never fail the request it logs
            code = Code.INTERNAL
            log.warning("request log for %s failed: %s: %s", model_spec.name, type(exc).__name__, exc)
        _request_log_count.get_cell(model_spec.name, code.name).increment_by(1)


class ServerRequestLogger:
    """Loggers per model name; ``prepare`` + ``apply`` = ``Update`` (``CreateUpdateRequest``,
    ``ApplyUpdateRequest``)."""

    def __init__(self, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 max_file_age_s: float = DEFAULT_MAX_FILE_AGE_S):
        self.collector_options = {"max_file_bytes": max_file_bytes, "max_file_age_s": max_file_age_s}
        self._by_model: dict[str, list[RequestLogger]] = {}
        self._by_config: dict[bytes, RequestLogger] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rotator: threading.Thread | None = None

    def prepare(self, logging_configs: dict) -> tuple[dict, dict]:
        """Loggers for ``{model name: [LoggingConfig, ...]}``, reusing those of unchanged configs;
        raises (changing nothing) on a bad config."""
        by_model: dict[str, list[RequestLogger]] = {}
        by_config: dict[bytes, RequestLogger] = {}
        created: list[RequestLogger] = []
        try:
            for name, configs in logging_configs.items():
                for cfg in configs:
                    key = cfg.SerializeToString(deterministic=True)
                    logger = by_config.get(key) or self._by_config.get(key)
                    if logger is None:
                        logger = RequestLogger(cfg, create_log_collector(cfg.log_collector_config,
                                                                         **self.collector_options))
                        created.append(logger)
                    by_config[key] = logger
                    by_model.setdefault(name, []).append(logger)
        except Exception:
            for logger in created:
                logger.collector.close()
            raise
        return by_model, by_config

    def apply(self, prepared: tuple[dict, dict]) -> None:
        by_model, by_config = prepared
        with self._lock:
            retired = [lg for k, lg in self._by_config.items() if k not in by_config]
            self._by_model, self._by_config = by_model, by_config
        for logger in retired:
            logger.collector.close()
        if by_config and self._rotator is None:  # closes files by age even when no request comes
            self._rotator = threading.Thread(target=self._rotate_loop, name="request_log_rotation", daemon=True)
            self._rotator.start()

    def _rotate_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.rotate_if_due()
            except Exception:  # noqa: BLE001 - a full disk must not end rotation for good
                log.exception("request log rotation failed")

    def loggers(self, model_name: str) -> list[RequestLogger]:
        return self._by_model.get(model_name, [])

    def log(self, model_spec, build, request_id: str | None = None) -> None:
        """Log one answered request of ``model_spec.name`` with every logger that samples it."""
        for logger in self._by_model.get(model_spec.name, ()):
            if logger.sample():
                logger.log(model_spec, build, request_id)

    def rotate_if_due(self) -> None:
        for logger in list(self._by_config.values()):
            logger.collector.rotate_if_due()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            loggers, self._by_model, self._by_config = list(self._by_config.values()), {}, {}
        for logger in loggers:
            logger.collector.close()
