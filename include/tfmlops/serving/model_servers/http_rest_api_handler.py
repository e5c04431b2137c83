"""TF Serving's REST API, mirroring ``tensorflow_serving/model_servers/http_rest_api_handler.cc``:
the routes, each turned into the call TF Serving makes, and the JSON answers (the HTTP/1.1
server itself is :mod:`.http_server`).

Routes (case-insensitive, as TF Serving's regexes):
  GET  /v1/models/{m}[/versions/{n}|/labels/{l}]            model status
  GET  /v1/models/{m}[/versions/{n}|/labels/{l}]/metadata   signature defs
  POST /v1/models/{m}[/versions/{n}|/labels/{l}]:(predict|classify|regress)
Other paths under /v1/ -> 400 "Malformed request: METHOD PATH"; paths outside /v1/ -> 404
with an empty body, like TF Serving. With ``--monitoring_config_file`` enabling
``prometheus_config``, its ``path`` (default ``/monitoring/prometheus/metrics``) answers 200 with
TF Serving's metrics as Prometheus text (``http_server.cc`` ``ProcessPrometheusRequest``,
:mod:`..util.prometheus_exporter`). As ``http_server.cc``'s ``ProcessRequest``, every ``/v1/``
request counts in ``request_count{model_name,status}`` and a successful one adds its wall time to
``request_latency{model_name,API,entrypoint="REST"}`` (API: the verb, empty for GETs).
One extra, non-TF path:
  GET  /monitoring/tfmlops/batching  -> batching counters (JSON), for tests/benchmarks.

Request logging (``logging_config`` of the model's config, :mod:`..core.server_request_logger`):
a sampled predict/classify/regress is logged with the id of the ``X-Request-Id`` header (or a
new one).

JSON that does not parse is reported with rapidjson's messages, as TF Serving does
(``JSON Parse error: Invalid value. at offset: 0``).
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import unquote

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, input_pb2, model_pb2, prediction_log_pb2

from .. import json_tensor as J
from .. import tensors as T
from ..errors import Code, StatusError, invalid_argument
from ..servables.util import record_model_request_count, record_request_latency
from ..util.prometheus_exporter import PROMETHEUS_PATH, generate_page
from .get_model_metadata_impl import SIGNATURE_DEF_FIELD, get_model_metadata
from .get_model_status_impl import get_model_status
from .prediction_service_impl import fill_classifications
from .server_core import ServerCore

log = logging.getLogger("tfmlops.serving")

PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
V1_RE = re.compile(r"/v1/.*", re.I | re.S)
DEBUG_BATCHING_PATH = "/monitoring/tfmlops/batching"
_INT64_MAX = (1 << 63) - 1


def _spec(name: str, version: int, signature_name: str):
    spec = model_pb2.ModelSpec(name=name, signature_name=signature_name)
    spec.version.value = version
    return spec

def status_json(resp) -> bytes:
    return json_format.MessageToJson(resp, always_print_fields_with_no_presence=True, indent=1).encode() + b"\n"


def metadata_json(resp) -> bytes:
    """http_rest_api_util.cc ToJsonString(GetModelMetadataResponse)."""
    spec = json_format.MessageToJson(resp.model_spec, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True, indent=1)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    if not resp.metadata[SIGNATURE_DEF_FIELD].Unpack(sig_map):
        raise StatusError(Code.INTERNAL, "Failed to unpack 'Any' object to 'SignatureDefMap'.")
    sigs = json_format.MessageToJson(sig_map, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True, indent=1)
    return ("{\n\"model_spec\":" + spec + ",\n\"metadata\": {\"signature_def\": " + sigs + "}\n}\n").encode()


class RestApi:
    def __init__(self, core: ServerCore, timeout_ms: int = 30000, monitoring_config=None):
        self.core = core
        self.timeout_ms = timeout_ms if timeout_ms and timeout_ms > 0 else None
        prometheus = monitoring_config.prometheus_config if monitoring_config is not None else None
        self.prometheus_path = (prometheus.path or PROMETHEUS_PATH) if prometheus and prometheus.enable else None

    def handle(self, method: str, path: str, body: bytes, request_id: str | None = None) -> tuple:
        """``(HTTP status, body)``, or ``(status, body, content type)`` when it is not JSON."""
        if path == self.prometheus_path:
            return 200, generate_page().encode(), "text/plain"
        if not V1_RE.fullmatch(path):
            if method == "GET" and path == DEBUG_BATCHING_PATH:
                b = self.core.batcher
                return 200, J.dumps(b.stats() if b is not None else {"enabled": False})
            return 404, b""
        start = time.monotonic()
        info = ["", ""]  # model name, API: what ParseModelInfo found
        code = Code.OK
        try:
            return 200, self._dispatch(method, path, body, info, request_id)
        except StatusError as exc:
            code = exc.code
            if exc.code != Code.NOT_FOUND:
                log.debug("REST %s %s failed: %s", method, path, exc)
            return exc.http_status, J.dumps({"error": exc.message})
        except Exception as exc:  # pragma: no cover - defensive
            code = Code.INTERNAL
            log.exception("REST %s %s crashed", method, path)
            return 500, J.dumps({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            if code == Code.OK:
                record_request_latency(info[0], info[1], "REST", (time.monotonic() - start) * 1e6)
            record_model_request_count(info[0], code)

    @staticmethod
    def _model_info(m):
        name = unquote(m.group(1)) if m.group(1) else ""
        version = None
        if m.group(2):
            version = int(m.group(2))
            if version > _INT64_MAX:
                raise invalid_argument(f"Failed to convert version: {m.group(2)} to numeric.")
        label = unquote(m.group(3)) if m.group(3) else None
        return name, version, label

    def _dispatch(self, method: str, path: str, body: bytes, info: list, request_id=None) -> bytes:
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        if method == "POST":
            m = PREDICT_RE.fullmatch(path)
            if not m:
                raise malformed
            info[0], info[1] = unquote(m.group(1)), m.group(4)
            name, version, label = self._model_info(m)
            verb = m.group(4)
            if verb == "predict":
                return self._predict(name, version, label, body, request_id)
            if verb == "classify":
                return self._classify_regress(name, version, label, body, True, request_id)
            if verb == "regress":
                return self._classify_regress(name, version, label, body, False, request_id)
            raise malformed  # e.g. ":PREDICT" matches the regex but not the dispatch
        if method == "GET":
            m = STATUS_RE.fullmatch(path)
            if not m:
                raise malformed
            info[0] = unquote(m.group(1)) if m.group(1) else ""
            name, version, label = self._model_info(m)
            if not name:
                raise invalid_argument("Missing model name in request.")
            if m.group(4) == "metadata":
                spec = model_pb2.ModelSpec(name=name)
                if version is not None:
                    spec.version.value = version
                elif label is not None:
                    spec.version_label = label
                return metadata_json(get_model_metadata(self.core, spec, ["signature_def"]))
            if m.group(4):
                raise malformed
            return status_json(get_model_status(self.core, name, version))
        raise malformed

    def _predict(self, name, version, label, body, request_id=None) -> bytes:
        doc = J.parse_json(body)
        sig_name = J.signature_name(doc)
        servable = self.core.acquire(name, version, label)
        try:
            key = sig_name or "serving_default"
            sig = servable.signatures.get(key)
            if sig is None:
                raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
            inputs, fmt = J.predict_inputs(doc, sig)
            used_sig, outputs = servable.predict(sig_name, inputs, (), self.timeout_ms)
        finally:
            servable.release()
        if self.core.request_logger.loggers(name):
            spec = _spec(name, servable.version, used_sig)

            def build(meta):  # the PredictRequest/Response TF Serving's REST handler converts JSON to
                plog = prediction_log_pb2.PredictionLog(log_metadata=meta)
                plog.predict_log.request.model_spec.CopyFrom(spec)
                for k, v in inputs.items():
                    T.make_tensor_proto(v, plog.predict_log.request.inputs[k])
                plog.predict_log.response.model_spec.CopyFrom(spec)
                for k, v in outputs.items():
                    T.make_tensor_proto(v, plog.predict_log.response.outputs[k])
                return plog
            self.core.request_logger.log(spec, build, request_id)
        return J.predict_outputs_json(outputs, fmt)

    def _classify_regress(self, name, version, label, body, classify: bool, request_id=None) -> bytes:
        doc = J.parse_json(body)
        sig_name = J.signature_name(doc)
        inp = input_pb2.Input()
        J.classify_regress_input(doc, inp)
        servable = self.core.acquire(name, version, label)
        try:
            if classify:
                used_sig, rows, has_classes, has_scores = servable.classify(sig_name, inp, self.timeout_ms)
            else:
                used_sig, values = servable.regress(sig_name, inp, self.timeout_ms)
        finally:
            servable.release()
        if self.core.request_logger.loggers(name):
            spec = _spec(name, servable.version, used_sig)

            def build(meta):
                plog = prediction_log_pb2.PredictionLog(log_metadata=meta)
                entry = plog.classify_log if classify else plog.regress_log
                entry.request.model_spec.CopyFrom(spec)
                entry.request.input.CopyFrom(inp)
                entry.response.model_spec.CopyFrom(spec)
                if classify:
                    fill_classifications(entry.response.result, rows, has_classes, has_scores)
                else:
                    for v in values:
                        entry.response.result.regressions.add().value = v
                return plog
            self.core.request_logger.log(spec, build, request_id)
        return J.classification_json(rows) if classify else J.regression_json(values)
