"""TF Serving's REST API, mirroring ``tensorflow_serving/model_servers/http_rest_api_handler.cc``:
the routes, each turned into the call TF Serving makes, and the JSON answers (the HTTP/1.1
server itself is :mod:`.http_server`).

Routes (case-insensitive, as TF Serving's regexes):
  GET  /v1/models/{m}[/versions/{n}|/labels/{l}]            model status
  GET  /v1/models/{m}[/versions/{n}|/labels/{l}]/metadata   signature defs
  POST /v1/models/{m}[/versions/{n}|/labels/{l}]:(predict|classify|regress)
Other paths under /v1/ -> 400 "Malformed request: METHOD PATH"; paths outside /v1/ -> 404
with an empty body, like TF Serving. With ``--monitoring_config_file`` enabling
``prometheus_config``, its ``path`` (default ``/monitoring/prometheus/metrics``) answers 200 with a
Prometheus text body (``http_server.cc`` ``ProcessPrometheusRequest``; the metrics themselves are
not exported yet, so the body is empty). One extra, non-TF path:
  GET  /monitoring/tfmlops/batching  -> batching counters (JSON), for tests/benchmarks.

JSON that does not parse is reported with rapidjson's messages, as TF Serving does
(``JSON Parse error: Invalid value. at offset: 0``).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, input_pb2, model_pb2

from .. import json_tensor as J
from ..errors import Code, StatusError, invalid_argument
from .get_model_metadata_impl import SIGNATURE_DEF_FIELD, get_model_metadata
from .get_model_status_impl import get_model_status
from .server_core import ServerCore

log = logging.getLogger("tfmlops.serving")

PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
V1_RE = re.compile(r"/v1/.*", re.I | re.S)
DEBUG_BATCHING_PATH = "/monitoring/tfmlops/batching"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
_INT64_MAX = (1 << 63) - 1

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

    def handle(self, method: str, path: str, body: bytes) -> tuple:
        """``(HTTP status, body)``, or ``(status, body, content type)`` when it is not JSON."""
        if path == self.prometheus_path:  # a valid, empty Prometheus text exposition (metrics: issue 16)
            return 200, b"", "text/plain; version=0.0.4"
        if not V1_RE.fullmatch(path):
            if method == "GET" and path == DEBUG_BATCHING_PATH:
                b = self.core.batcher
                return 200, J.dumps(b.stats() if b is not None else {"enabled": False})
            return 404, b""
        try:
            return 200, self._dispatch(method, path, body)
        except StatusError as exc:
            if exc.code != Code.NOT_FOUND:
                log.debug("REST %s %s failed: %s", method, path, exc)
            return exc.http_status, J.dumps({"error": exc.message})
        except Exception as exc:  # pragma: no cover - defensive
            log.exception("REST %s %s crashed", method, path)
            return 500, J.dumps({"error": f"{type(exc).__name__}: {exc}"})

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

    def _dispatch(self, method: str, path: str, body: bytes) -> bytes:
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        if method == "POST":
            m = PREDICT_RE.fullmatch(path)
            if not m:
                raise malformed
            name, version, label = self._model_info(m)
            verb = m.group(4)
            if verb == "predict":
                return self._predict(name, version, label, body)
            if verb == "classify":
                return self._classify_regress(name, version, label, body, classify=True)
            if verb == "regress":
                return self._classify_regress(name, version, label, body, classify=False)
            raise malformed  # e.g. ":PREDICT" matches the regex but not the dispatch
        if method == "GET":
            m = STATUS_RE.fullmatch(path)
            if not m:
                raise malformed
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

    def _predict(self, name, version, label, body) -> bytes:
        doc = J.parse_json(body)
        sig_name = J.signature_name(doc)
        servable = self.core.acquire(name, version, label)
        try:
            key = sig_name or "serving_default"
            sig = servable.signatures.get(key)
            if sig is None:
                raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
            inputs, fmt = J.predict_inputs(doc, sig)
            _, outputs = servable.predict(sig_name, inputs, (), self.timeout_ms)
        finally:
            servable.release()
        return J.predict_outputs_json(outputs, fmt)

    def _classify_regress(self, name, version, label, body, classify: bool) -> bytes:
        doc = J.parse_json(body)
        sig_name = J.signature_name(doc)
        inp = input_pb2.Input()
        J.classify_regress_input(doc, inp)
        servable = self.core.acquire(name, version, label)
        try:
            if classify:
                _, rows, _, _ = servable.classify(sig_name, inp, self.timeout_ms)
            else:
                _, values = servable.regress(sig_name, inp, self.timeout_ms)
        finally:
            servable.release()
        return J.classification_json(rows) if classify else J.regression_json(values)
