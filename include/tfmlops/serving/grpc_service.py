"""gRPC front end: ``tensorflow.serving.PredictionService`` and ``tensorflow.serving.ModelService``
with the official messages/stubs from tensorflow-serving-api.

Errors are returned as gRPC status codes equal to the TF Status codes TF Serving would
return (messages over 1024 characters are truncated with "...TRUNCATED", as
``grpc_status_util.cc`` does). A client deadline becomes the session RunOptions timeout.
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from tensorflow_serving.apis import (classification_pb2, model_management_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc, regression_pb2)

from . import tensors as T
from .errors import GRPC_MESSAGE_LIMIT, Code, StatusError, invalid_argument
from .service import ServingCore

log = logging.getLogger("tfmlops.serving")

_GRPC_CODES = {c.value[0]: c for c in grpc.StatusCode}
MAX_MESSAGE = 2**31 - 1


def _abort(context, exc: StatusError):
    msg = exc.message
    if len(msg) > GRPC_MESSAGE_LIMIT:
        msg = msg[:GRPC_MESSAGE_LIMIT] + "...TRUNCATED"
    context.abort(_GRPC_CODES.get(int(exc.code), grpc.StatusCode.UNKNOWN), msg)


def _timeout_ms(context):
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e8:
        return None
    return max(int(remaining * 1000), 1)


def _guard(fn):
    def wrapper(self, request, context):
        try:
            return fn(self, request, context)
        except StatusError as exc:
            _abort(context, exc)
        except Exception as exc:  # pragma: no cover - defensive
            if isinstance(exc, grpc.RpcError) or type(exc).__name__ == "_AbortionException":
                raise
            log.exception("gRPC %s crashed", fn.__name__)
            _abort(context, StatusError(Code.INTERNAL, f"{type(exc).__name__}: {exc}"))
    wrapper.__name__ = fn.__name__
    return wrapper


def _set_spec(dst, name, version, signature_name):
    dst.name = name
    dst.version.value = version
    if signature_name:
        dst.signature_name = signature_name


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    @_guard
    def Predict(self, request, context):
        servable = self.core.manager.acquire_spec(request.model_spec)
        try:
            inputs = {k: T.make_ndarray(v, k) for k, v in request.inputs.items()}
            sig_name, outputs = servable.predict(request.model_spec.signature_name, inputs,
                                                 list(request.output_filter), _timeout_ms(context))
            resp = predict_pb2.PredictResponse()
            _set_spec(resp.model_spec, request.model_spec.name, servable.version, sig_name)
            for alias, arr in outputs.items():
                T.make_tensor_proto(arr, resp.outputs[alias])
            return resp
        finally:
            servable.release()

    @_guard
    def GetModelMetadata(self, request, context):
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        return self.core.metadata(request.model_spec, list(request.metadata_field))

    @_guard
    def Classify(self, request, context):
        servable = self.core.manager.acquire_spec(request.model_spec)
        try:
            sig, rows, has_classes, has_scores = servable.classify(
                request.model_spec.signature_name, request.input, _timeout_ms(context))
            resp = classification_pb2.ClassificationResponse()
            _set_spec(resp.model_spec, request.model_spec.name, servable.version, sig)
            for row in rows:
                cl = resp.result.classifications.add()
                for label, score in row:
                    c = cl.classes.add()
                    if has_classes:
                        c.label = label.decode("utf-8", errors="replace")
                    if has_scores:
                        c.score = score
            return resp
        finally:
            servable.release()

    @_guard
    def Regress(self, request, context):
        servable = self.core.manager.acquire_spec(request.model_spec)
        try:
            sig, values = servable.regress(request.model_spec.signature_name, request.input, _timeout_ms(context))
            resp = regression_pb2.RegressionResponse()
            _set_spec(resp.model_spec, request.model_spec.name, servable.version, sig)
            for v in values:
                resp.result.regressions.add().value = v
            return resp
        finally:
            servable.release()

    @_guard
    def MultiInference(self, request, context):
        raise StatusError(Code.UNIMPLEMENTED, "MultiInference is not supported by tf-serving-local")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    @_guard
    def GetModelStatus(self, request, context):
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        return self.core.model_status_spec(request.model_spec)

    @_guard
    def HandleReloadConfigRequest(self, request, context):
        cfg = request.config
        if cfg.WhichOneof("config") != "model_config_list":
            raise invalid_argument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
                "currently supported")
        for i, mc in enumerate(cfg.model_config_list.config):
            log.info("Config entry index : %d path : %s name : %s platform : %s", i, mc.base_path, mc.name,
                     mc.model_platform)
        try:
            self.core.manager.reload_config(cfg)
        except StatusError as exc:
            log.error("ReloadConfig failed: %s", exc.message)
            raise
        resp = model_management_pb2.ReloadConfigResponse()
        resp.status.error_code = 0
        return resp


def make_grpc_server(core: ServingCore, host: str, port: int, max_workers: int = 64):
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=[("grpc.max_send_message_length", MAX_MESSAGE),
                 ("grpc.max_receive_message_length", MAX_MESSAGE),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=None,
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise StatusError(Code.UNAVAILABLE, f"Failed to BuildAndStart gRPC server: cannot bind {host}:{port}")
    return server, bound
