"""Client for TensorFlow Serving (the real one or ``tf-serving-local``): REST via a
``requests.Session`` and gRPC via a cached channel with the official stubs.

Only documented TF Serving APIs are used, so the same code works in production. The gRPC
parts import ``tensorflow_serving.apis`` lazily (those modules import TensorFlow), so the
REST-only methods stay cheap to import and call (no Airflow, no TensorFlow import).

Every request carries a request id starting with :data:`REQUEST_ID_PREFIX` (``X-Request-Id``
header, ``x-request-id`` gRPC metadata; servers ignore what they do not use): where the server
logs requests, the project's own traffic (rollout checks, monitoring probes) is told apart from
the clients' and left out of live-traffic measurements.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from typing import Any

import numpy as np
import requests

from tfmlops.serving import tensors as T

__all__ = ["REQUEST_ID_PREFIX", "ServingClient", "ServingError", "ModelNotAvailableError"]

REQUEST_ID_PREFIX = "tfmlops-"


def own_request_id() -> str:
    return REQUEST_ID_PREFIX + uuid.uuid4().hex


class ServingError(Exception):
    """A request the server answered with an error (or that could not reach it).

    ``http_status`` is set for REST errors, ``grpc_code`` (a ``grpc.StatusCode`` name such as
    ``"NOT_FOUND"``) for gRPC errors; ``message`` is the server's error text.
    """

    def __init__(self, message: str, *, http_status: int | None = None, grpc_code: str | None = None,
                 url: str | None = None):
        self.message = message
        self.http_status = http_status
        self.grpc_code = grpc_code
        self.url = url
        where = f" [{url}]" if url else ""
        code = f"HTTP {http_status}" if http_status is not None else (f"gRPC {grpc_code}" if grpc_code else "error")
        super().__init__(f"{code}: {message}{where}")


class ModelNotAvailableError(ServingError):
    """A model version that ended in an error (state END) or did not become AVAILABLE in time."""

    def __init__(self, model: str, version: int | None, state: str | None, error_code: str | None = None,
                 error_message: str | None = None, timed_out: bool = False, waited_s: float = 0.0):
        self.model, self.version, self.state = model, version, state
        self.error_code, self.error_message = error_code, error_message
        self.timed_out, self.waited_s = timed_out, waited_s
        what = f"model {model!r} version {version}" if version is not None else f"model {model!r}"
        if timed_out:
            msg = f"{what} not AVAILABLE after {waited_s:.1f}s (last state: {state or 'not found'}"
            msg += f", last error: {error_code}: {error_message})" if error_message else ")"
        else:
            msg = f"{what} failed to load: state {state}, error {error_code}: {error_message}"
        ServingError.__init__(self, msg)


def _encode_value(v):
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "SO":
            return _encode_value(v.tolist())
        return v.tolist()
    if isinstance(v, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(v)).decode("ascii")}
    if isinstance(v, (list, tuple)):
        return [_encode_value(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _decode_value(v):
    if isinstance(v, dict) and len(v) == 1 and "b64" in v:
        return base64.b64decode(v["b64"])
    if isinstance(v, list) and v and isinstance(v[0], (list, dict)):
        return [_decode_value(x) for x in v]
    return v


def _to_array(v) -> np.ndarray:
    v = _decode_value(v)
    arr = np.asarray(v)
    if arr.dtype.kind == "U":
        arr = arr.astype(object)
    return arr


class ServingClient:
    def __init__(self, host: str = "127.0.0.1", rest_port: int | None = 8501, grpc_port: int | None = 8500,
                 timeout: float = 30.0):
        self.host = host
        self.rest_port = rest_port
        self.grpc_port = grpc_port
        self.timeout = timeout
        self._session = requests.Session()
        self._channel = None
        self._stubs = None
        self._lock = threading.Lock()
        self._input_names: dict = {}

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        self._session.close()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._stubs = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def rest_base(self) -> str:
        if not self.rest_port:
            raise ServingError("REST port not configured")
        return f"http://{self.host}:{self.rest_port}"

    def _model_url(self, model: str, version=None, label=None) -> str:
        if version is not None and label is not None:
            raise ValueError("give either version or label, not both")
        url = f"{self.rest_base}/v1/models/{requests.utils.quote(model, safe='')}"
        if version is not None:
            url += f"/versions/{int(version)}"
        elif label is not None:
            url += f"/labels/{requests.utils.quote(label, safe='')}"
        return url

    def _request(self, method: str, url: str, body: dict | None = None) -> dict:
        try:
            if body is None:
                r = self._session.request(method, url, timeout=self.timeout)
            else:
                data = json.dumps(body, allow_nan=True).encode()
                r = self._session.request(method, url, data=data, timeout=self.timeout,
                                          headers={"Content-Type": "application/json",
                                                   "X-Request-Id": own_request_id()})
        except requests.RequestException as exc:
            raise ServingError(f"request failed: {exc}", url=url) from exc
        try:
            payload = r.json() if r.content else {}
        except ValueError:
            payload = {"error": r.text}
        if r.status_code != 200:
            msg = payload.get("error") if isinstance(payload, dict) else None
            raise ServingError(msg or r.reason or "error", http_status=r.status_code, url=url)
        return payload

    def _grpc(self):
        if self._stubs is None:
            with self._lock:
                if self._stubs is None:
                    import grpc
                    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

                    if not self.grpc_port:
                        raise ServingError("gRPC port not configured")
                    self._channel = grpc.insecure_channel(
                        f"{self.host}:{self.grpc_port}",
                        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
                    self._stubs = (prediction_service_pb2_grpc.PredictionServiceStub(self._channel),
                                   model_service_pb2_grpc.ModelServiceStub(self._channel))
        return self._stubs

    def _call(self, fn, request):
        import grpc

        try:
            return fn(request, timeout=self.timeout, metadata=(("x-request-id", own_request_id()),))
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") and exc.code() is not None else "UNKNOWN"
            raise ServingError(exc.details() or str(exc), grpc_code=code,
                               url=f"{self.host}:{self.grpc_port}") from None

    @staticmethod
    def _spec(spec, model, version, label, signature_name=None):
        if version is not None and label is not None:
            raise ValueError("give either version or label, not both")
        spec.name = model
        if version is not None:
            spec.version.value = int(version)
        elif label is not None:
            spec.version_label = label
        if signature_name:
            spec.signature_name = signature_name

    # ------------------------------------------------------------------ REST
    def status(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        """GET /v1/models/{model}[/versions/{v}|/labels/{l}] (GetModelStatusResponse JSON).

        Note: TF Serving ignores the label for status and returns every version."""
        return self._request("GET", self._model_url(model, version, label))

    def metadata(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        return self._request("GET", self._model_url(model, version, label) + "/metadata")

    def predict_rest(self, model: str, instances, version: int | None = None, label: str | None = None,
                     signature_name: str | None = None):
        """Row format for arrays/lists (``instances``), columnar for a dict of named inputs
        (``inputs``). Returns an ndarray for a single output, else {name: ndarray}."""
        body: dict[str, Any] = {}
        if signature_name:
            body["signature_name"] = signature_name
        if isinstance(instances, dict):
            body["inputs"] = {k: _encode_value(np.asarray(v) if not isinstance(v, (bytes, list)) else v)
                              for k, v in instances.items()}
            out = self._request("POST", self._model_url(model, version, label) + ":predict", body)["outputs"]
            if isinstance(out, dict) and not (len(out) == 1 and "b64" in out):
                return {k: _to_array(v) for k, v in out.items()}
            return _to_array(out)
        body["instances"] = _encode_value(instances)
        preds = self._request("POST", self._model_url(model, version, label) + ":predict", body)["predictions"]
        if preds and isinstance(preds[0], dict) and not (len(preds[0]) == 1 and "b64" in preds[0]):
            return {k: _to_array([p[k] for p in preds]) for k in preds[0]}
        return _to_array(preds)

    # ------------------------------------------------------------------ gRPC
    def _single_input_name(self, model, version, label, signature_name) -> str:
        key = (model, version, label, signature_name)
        name = self._input_names.get(key)
        if name is None:
            from tensorflow_serving.apis import get_model_metadata_pb2

            req = get_model_metadata_pb2.GetModelMetadataRequest()
            self._spec(req.model_spec, model, version, label)
            req.metadata_field.append("signature_def")
            resp = self._call(self._grpc()[0].GetModelMetadata, req)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            resp.metadata["signature_def"].Unpack(sig_map)
            sig = sig_map.signature_def.get(signature_name or "serving_default")
            if sig is None:
                raise ServingError(f"signature {signature_name!r} not found in model {model!r}")
            if len(sig.inputs) != 1:
                raise ValueError(f"signature {signature_name!r} has inputs {sorted(sig.inputs)}; pass a dict")
            name = next(iter(sig.inputs))
            self._input_names[key] = name
        return name

    def predict_grpc(self, model: str, inputs, version: int | None = None, label: str | None = None,
                     signature_name: str = "serving_default", output_filter=None) -> dict:
        from tensorflow_serving.apis import predict_pb2

        if not isinstance(inputs, dict):
            inputs = {self._single_input_name(model, version, label, signature_name): inputs}
        req = predict_pb2.PredictRequest()
        self._spec(req.model_spec, model, version, label, signature_name)
        for k, v in inputs.items():
            T.make_tensor_proto(np.asarray(v) if not isinstance(v, np.ndarray) else v, req.inputs[k])
        if output_filter:
            req.output_filter.extend(output_filter)
        resp = self._call(self._grpc()[0].Predict, req)
        return {k: T.make_ndarray(v, k) for k, v in resp.outputs.items()}

    def predict_grpc_response(self, model: str, inputs: dict, version=None, label=None,
                              signature_name: str = "serving_default"):
        """Like predict_grpc but returns the raw PredictResponse (model_spec included)."""
        from tensorflow_serving.apis import predict_pb2

        req = predict_pb2.PredictRequest()
        self._spec(req.model_spec, model, version, label, signature_name)
        for k, v in inputs.items():
            T.make_tensor_proto(np.asarray(v), req.inputs[k])
        return self._call(self._grpc()[0].Predict, req)

    def status_grpc(self, model: str, version: int | None = None):
        from tensorflow_serving.apis import get_model_status_pb2

        req = get_model_status_pb2.GetModelStatusRequest()
        self._spec(req.model_spec, model, version, None)
        return self._call(self._grpc()[1].GetModelStatus, req)

    def reload_config(self, model_server_config) -> None:
        """ModelService.HandleReloadConfigRequest. Accepts a ModelServerConfig or its text form."""
        from google.protobuf import text_format
        from tensorflow_serving.apis import model_management_pb2
        from tensorflow_serving.config import model_server_config_pb2

        if isinstance(model_server_config, str):
            cfg = model_server_config_pb2.ModelServerConfig()
            text_format.Parse(model_server_config, cfg)
        else:
            cfg = model_server_config
        req = model_management_pb2.ReloadConfigRequest()
        req.config.CopyFrom(cfg)
        resp = self._call(self._grpc()[1].HandleReloadConfigRequest, req)
        if resp.status.error_code != 0:
            raise ServingError(resp.status.error_message, grpc_code=str(resp.status.error_code))

    # ------------------------------------------------------------------ waiting
    def wait_until_available(self, model: str, version: int, timeout_s: float = 120.0, poll_s: float = 0.5) -> None:
        """Poll the status API until ``version`` is AVAILABLE.

        Raises ModelNotAvailableError if the version reaches END with an error, or on timeout
        (the exception names model, version, last state and last error)."""
        start = time.monotonic()
        state = code = message = None
        while True:
            try:
                if self.rest_port:
                    entries = self.status(model, version=version).get("model_version_status", [])
                    entry = next((e for e in entries if int(e.get("version", -1)) == int(version)), None)
                    if entry is not None:
                        state = entry.get("state")
                        st = entry.get("status") or {}
                        code, message = st.get("error_code", "OK"), st.get("error_message", "")
                else:
                    from tensorflow_serving.apis import get_model_status_pb2
                    from tensorflow_serving.util import status_pb2  # noqa: F401  (registers enum)

                    resp = self.status_grpc(model, version)
                    e = resp.model_version_status[0]
                    state = get_model_status_pb2.ModelVersionStatus.State.Name(e.state)
                    code, message = str(e.status.error_code), e.status.error_message
            except ServingError as exc:
                if exc.http_status != 404 and exc.grpc_code != "NOT_FOUND":
                    raise
            if state == "AVAILABLE":
                return
            if state == "END" and code not in (None, "OK", "0") and message:
                raise ModelNotAvailableError(model, version, state, code, message,
                                             waited_s=time.monotonic() - start)
            waited = time.monotonic() - start
            if waited >= timeout_s:
                raise ModelNotAvailableError(model, version, state, code if message else None, message or None,
                                             timed_out=True, waited_s=waited)
            time.sleep(min(poll_s, max(timeout_s - waited, 0.01)))
