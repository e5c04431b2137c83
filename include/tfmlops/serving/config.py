"""ModelServerConfig / BatchingParameters files in protobuf text format (as TF Serving reads them).

* ``load_config(path)`` parses a ``tensorflow.serving.ModelServerConfig`` text file
  (``--model_config_file``); ``write_config(path, cfg)`` writes one atomically (temp file in
  the same directory, fsync, ``os.replace``) so a polling server never sees half a file.
* ``load_batching_parameters(path)`` parses ``--batching_parameters_file``,
  ``load_monitoring_config(path)`` ``--monitoring_config_file``. The ``BatchingParameters``
  (``session_bundle_config.proto``) and ``MonitoringConfig`` (``config/monitoring_config.proto``)
  protos are not shipped in tensorflow-serving-api, so equivalent messages (same names, field
  numbers and types) are built here at import time and parsed with the same text_format parser.
* A file that does not parse fails like TF Serving's ``ParseProtoTextFile``: the parser's
  ``Error parsing text-format <message type>: <line>:<column>: <reason>`` is logged and the
  status is ``Invalid protobuf file: '<path>'``.
* ``validate_model_config_list`` applies ServerCore's checks (unique names, absolute
  base paths or ``file://`` URIs, platform "tensorflow").
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

from .errors import Code, StatusError, invalid_argument

log = logging.getLogger("tfmlops.serving")

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig

TENSORFLOW_PLATFORM = "tensorflow"
FILE_URI_PREFIX = "file://"


class ConfigError(StatusError):
    """A config file that cannot be read or parsed."""


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(Code.NOT_FOUND if isinstance(exc, FileNotFoundError) else Code.UNKNOWN,
                          f"{path}; {exc.strerror or exc}") from exc


def parse_config_text(text: str) -> ModelServerConfig:
    cfg = ModelServerConfig()
    text_format.Parse(text, cfg)
    return cfg


def _load_text_proto(path: str | os.PathLike, parse, message_type: str):
    """``parse(text of path)``, with TF Serving's errors for a missing or malformed file."""
    path = os.fspath(path)
    text = _read_text(path)
    try:
        return parse(text)
    except text_format.ParseError as exc:
        reason = str(exc)
        if exc.GetLine() is not None:  # "L:C : reason" -> protobuf C++'s "L:C: reason"
            reason = f"{exc.GetLine()}:{exc.GetColumn()}: {reason.split(' : ', 1)[-1]}"
        log.error("Error parsing text-format %s: %s", message_type, reason)
        raise ConfigError(Code.INVALID_ARGUMENT, f"Invalid protobuf file: '{path}'") from exc


def load_config(path: str | os.PathLike) -> ModelServerConfig:
    return _load_text_proto(path, parse_config_text, ModelServerConfig.DESCRIPTOR.full_name)


def config_to_text(cfg) -> str:
    return text_format.MessageToString(cfg)


def write_config(path: str | os.PathLike, cfg) -> None:
    """Write a text-format proto atomically: temp file in the same dir + fsync + os.replace."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(config_to_text(cfg))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def build_single_model_config(model_name: str, model_base_path: str) -> ModelServerConfig:
    """What TF Serving builds from --model_name/--model_base_path."""
    cfg = ModelServerConfig()
    mc = cfg.model_config_list.config.add()
    mc.name = model_name
    mc.base_path = model_base_path
    mc.model_platform = TENSORFLOW_PLATFORM
    return cfg


def model_platform(mc: ModelConfig) -> str:
    # ServerCore GetPlatform(): model_type is deprecated; TENSORFLOW == 1
    if mc.model_type != 0:
        if mc.model_platform:
            raise invalid_argument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) "
                f"and ModelServerConfig::model_platform, model name is {mc.name}")
        if mc.model_type == 1:
            return TENSORFLOW_PLATFORM
        raise invalid_argument(f"ModelServerConfig::model_type choice {mc.model_type} not supported.")
    if not mc.model_platform:
        raise invalid_argument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) "
            f"nor ModelServerConfig::model_platform, model name is {mc.name}")
    return mc.model_platform


def _is_relative(uri: str) -> bool:
    return "://" not in uri and not os.path.isabs(uri)


def validate_model_config_list(cfg: ModelServerConfig, *, check_platforms: bool = True) -> None:
    """ServerCore's ``ValidateModelConfigList`` (unique names, absolute base paths), then (unless
    ``check_platforms`` is false) :func:`check_model_platforms`, which TF Serving applies later,
    after ``ValidateNoModelsChangePlatforms`` (a reload that changes a model's platform reports
    that first)."""
    names = set()
    for mc in cfg.model_config_list.config:
        if mc.name in names:
            raise invalid_argument(f"Illegal to list model {mc.name} multiple times in config list")
        names.add(mc.name)
    for mc in cfg.model_config_list.config:
        if _is_relative(mc.base_path):
            raise invalid_argument(
                f"Expected model {mc.name} to have an absolute path or URI; got base_path()={mc.base_path}")
    if check_platforms:
        check_model_platforms(cfg)


def check_model_platforms(cfg: ModelServerConfig) -> None:
    """``CreateStoragePathRoutes``: every model's platform is one this server has (``tensorflow``)
    and its base path one it can read."""
    for mc in cfg.model_config_list.config:
        platform = model_platform(mc)
        if platform != TENSORFLOW_PLATFORM:
            raise invalid_argument(f"Model {mc.name} requests unsupported platform {platform}")
        if "://" in mc.base_path and not mc.base_path.startswith(FILE_URI_PREFIX):
            raise invalid_argument(
                f"Model {mc.name}: only local file system base paths are supported by this server; "
                f"got {mc.base_path}")


# --------------------------------------------------------------------------------------
# BatchingParameters (tensorflow_serving/servables/tensorflow/session_bundle_config.proto)
# --------------------------------------------------------------------------------------

def _build_message_classes() -> dict:
    """Message classes equivalent to TF Serving protos missing from tensorflow-serving-api."""
    pool = descriptor_pool.DescriptorPool()
    wrappers_fdp = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers_fdp)
    pool.Add(wrappers_fdp)

    fdp = descriptor_pb2.FileDescriptorProto()
    fdp.name = "tfmlops/serving/tf_serving_config_subset.proto"
    fdp.package = "tensorflow.serving"
    fdp.syntax = "proto3"
    fdp.dependency.append("google/protobuf/wrappers.proto")
    fp = descriptor_pb2.FieldDescriptorProto
    optional, repeated = fp.LABEL_OPTIONAL, fp.LABEL_REPEATED
    int64v, boolv, strv = ".google.protobuf.Int64Value", ".google.protobuf.BoolValue", ".google.protobuf.StringValue"
    messages = {  # name -> [(field, number, label, type, type_name)]
        # servables/tensorflow/session_bundle_config.proto
        "BatchingParameters": [
            ("max_batch_size", 1, optional, fp.TYPE_MESSAGE, int64v),
            ("batch_timeout_micros", 2, optional, fp.TYPE_MESSAGE, int64v),
            ("max_enqueued_batches", 3, optional, fp.TYPE_MESSAGE, int64v),
            ("num_batch_threads", 4, optional, fp.TYPE_MESSAGE, int64v),
            ("thread_pool_name", 5, optional, fp.TYPE_MESSAGE, strv),
            ("allowed_batch_sizes", 6, repeated, fp.TYPE_INT64, None),
            ("pad_variable_length_inputs", 7, optional, fp.TYPE_BOOL, None),
            ("enable_large_batch_splitting", 8, optional, fp.TYPE_MESSAGE, boolv),
            ("max_execution_batch_size", 9, optional, fp.TYPE_MESSAGE, int64v),
        ],
        # config/monitoring_config.proto
        "PrometheusConfig": [
            ("enable", 1, optional, fp.TYPE_BOOL, None),
            ("path", 2, optional, fp.TYPE_STRING, None),
        ],
        "MonitoringConfig": [
            ("prometheus_config", 1, optional, fp.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig"),
        ],
    }
    for msg_name, fields in messages.items():
        msg = fdp.message_type.add()
        msg.name = msg_name
        for name, number, label, typ, type_name in fields:
            f = msg.field.add()
            f.name, f.number, f.label, f.type = name, number, label, typ
            if type_name:
                f.type_name = type_name
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in messages}


_MESSAGES = _build_message_classes()
BatchingParametersProto = _MESSAGES["BatchingParameters"]
MonitoringConfigProto = _MESSAGES["MonitoringConfig"]


@dataclass
class BatchingOptions:
    """Effective batching options (defaults of SharedBatchScheduler / BatchingSession)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: list[int] = field(default_factory=list)
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None

    @classmethod
    def from_proto(cls, p) -> "BatchingOptions":
        o = cls()
        if p.HasField("max_batch_size"):
            o.max_batch_size = p.max_batch_size.value
        if p.HasField("batch_timeout_micros"):
            o.batch_timeout_micros = p.batch_timeout_micros.value
        if p.HasField("max_enqueued_batches"):
            o.max_enqueued_batches = p.max_enqueued_batches.value
        if p.HasField("num_batch_threads"):
            o.num_batch_threads = p.num_batch_threads.value
        if p.HasField("thread_pool_name"):
            o.thread_pool_name = p.thread_pool_name.value
        o.allowed_batch_sizes = list(p.allowed_batch_sizes)
        o.pad_variable_length_inputs = p.pad_variable_length_inputs
        if p.HasField("enable_large_batch_splitting"):
            o.enable_large_batch_splitting = p.enable_large_batch_splitting.value
        if p.HasField("max_execution_batch_size"):
            o.max_execution_batch_size = p.max_execution_batch_size.value
        o.validate()
        return o

    def validate(self) -> None:
        if self.max_batch_size <= 0:
            raise invalid_argument("max_batch_size must be positive")
        if self.batch_timeout_micros < 0:
            raise invalid_argument("batch_timeout_micros must be non-negative")
        if self.num_batch_threads <= 0:
            raise invalid_argument("num_batch_threads must be positive")
        if self.max_enqueued_batches <= 0:
            raise invalid_argument("max_enqueued_batches must be positive")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] <= 0:
                raise invalid_argument("allowed_batch_sizes entries must be monotonically increasing")
            limit = self.max_execution_batch_size if self.enable_large_batch_splitting and \
                self.max_execution_batch_size else self.max_batch_size
            if sizes[-1] != limit:
                raise invalid_argument(
                    "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                    f"{sizes[-1]}; expected {limit}")


def parse_batching_parameters(text: str) -> BatchingOptions:
    p = BatchingParametersProto()
    text_format.Parse(text, p)
    return BatchingOptions.from_proto(p)


def load_batching_parameters(path: str | os.PathLike) -> BatchingOptions:
    return _load_text_proto(path, parse_batching_parameters, "tensorflow.serving.BatchingParameters")


def load_monitoring_config(path: str | os.PathLike):
    """``--monitoring_config_file``: a ``tensorflow.serving.MonitoringConfig``."""
    def parse(text):
        cfg = MonitoringConfigProto()
        text_format.Parse(text, cfg)
        return cfg

    return _load_text_proto(path, parse, "tensorflow.serving.MonitoringConfig")
