"""gRPC ``tensorflow.serving.PredictionService``, mirroring TF Serving's
``tensorflow_serving/model_servers/prediction_service_impl.cc``: Predict, Classify, Regress and
GetModelMetadata and MultiInference (``multi_inference_helper.cc``: the model of the first task)
with the official messages/stubs from tensorflow-serving-api. A client deadline becomes the
session RunOptions timeout (``DeadlineToTimeoutMillis``). Predict, Classify and Regress count in
``request_count{model_name,status}`` and, when they succeed, add their wall time to
``request_latency{model_name,API,entrypoint="GRPC"}``, as TF Serving's; sampled requests go to the
model's request loggers (:mod:`..core.server_request_logger`, the id from ``x-request-id`` metadata).
"""

from __future__ import annotations

import functools
import time

from tensorflow_serving.apis import (classification_pb2, inference_pb2, model_pb2, predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from .. import tensors as T
from ..errors import Code, StatusError, invalid_argument
from ..servables.util import CLASSIFY_METHOD, record_model_request_count, record_request_latency
from .get_model_metadata_impl import get_model_metadata
from .grpc_status_util import guard
from .server_core import ServerCore


def _timeout_ms(context):
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e8:
        return None
    return max(int(remaining * 1000), 1)


def _set_spec(dst, name, version, signature_name):
    dst.name = name
    dst.version.value = version
    if signature_name:
        dst.signature_name = signature_name


def fill_classifications(result, rows, has_classes: bool, has_scores: bool) -> None:
    """A ``ClassificationResult`` from :func:`~..servables.classifier.post_process_classification`."""
    for row in rows:
        cl = result.classifications.add()
        for label, score in row:
            c = cl.classes.add()
            if has_classes:
                c.label = label.decode("utf-8", errors="replace")
            if has_scores:
                c.score = score


def _counted(api: str):
    """What TF Serving's PredictionServiceImpl does around each call: count it by status and
    record the latency of a successful one."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, request, context):
            start, code = time.monotonic(), Code.OK
            try:
                return fn(self, request, context)
            except StatusError as exc:
                code = exc.code
                raise
            except Exception:
                code = Code.INTERNAL
                raise
            finally:
                name = request.model_spec.name
                if code == Code.OK:
                    record_request_latency(name, api, "GRPC", (time.monotonic() - start) * 1e6)
                record_model_request_count(name, code)
        return wrapper
    return deco


def _request_id(context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return value
    return None


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServerCore):
        self.core = core

    def _log(self, context, spec, field: str, request, response) -> None:
        if self.core.request_logger.loggers(spec.name):
            def build(meta):
                plog = prediction_log_pb2.PredictionLog(log_metadata=meta)
                entry = getattr(plog, field)
                entry.request.CopyFrom(request)
                entry.response.CopyFrom(response)
                return plog
            self.core.request_logger.log(spec, build, _request_id(context))

    @guard
    @_counted("Predict")
    def Predict(self, request, context):
        servable = self.core.acquire_spec(request.model_spec)
        try:
            inputs = {k: T.make_ndarray(v, k) for k, v in request.inputs.items()}
            sig_name, outputs = servable.predict(request.model_spec.signature_name, inputs,
                                                 list(request.output_filter), _timeout_ms(context))
            resp = predict_pb2.PredictResponse()
            _set_spec(resp.model_spec, request.model_spec.name, servable.version, sig_name)
            for alias, arr in outputs.items():
                T.make_tensor_proto(arr, resp.outputs[alias])
            self._log(context, resp.model_spec, "predict_log", request, resp)
            return resp
        finally:
            servable.release()

    @guard
    def GetModelMetadata(self, request, context):
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        return get_model_metadata(self.core, request.model_spec, list(request.metadata_field))

    @guard
    @_counted("Classify")
    def Classify(self, request, context):
        servable = self.core.acquire_spec(request.model_spec)
        try:
            sig, rows, has_classes, has_scores = servable.classify(
                request.model_spec.signature_name, request.input, _timeout_ms(context))
            resp = classification_pb2.ClassificationResponse()
            _set_spec(resp.model_spec, request.model_spec.name, servable.version, sig)
            fill_classifications(resp.result, rows, has_classes, has_scores)
            self._log(context, resp.model_spec, "classify_log", request, resp)
            return resp
        finally:
            servable.release()

    @guard
    @_counted("Regress")
    def Regress(self, request, context):
        servable = self.core.acquire_spec(request.model_spec)
        try:
            sig, values = servable.regress(request.model_spec.signature_name, request.input, _timeout_ms(context))
            resp = regression_pb2.RegressionResponse()
            _set_spec(resp.model_spec, request.model_spec.name, servable.version, sig)
            for v in values:
                resp.result.regressions.add().value = v
            self._log(context, resp.model_spec, "regress_log", request, resp)
            return resp
        finally:
            servable.release()

    @guard
    def MultiInference(self, request, context):
        spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        servable = self.core.acquire_spec(spec)
        try:
            results = servable.multi_inference(request, _timeout_ms(context))
            resp = inference_pb2.MultiInferenceResponse()
            for task, sig, result in results:
                out = resp.results.add()
                if task.method_name == CLASSIFY_METHOD:
                    fill_classifications(out.classification_result, *result)
                else:
                    for v in result:
                        out.regression_result.regressions.add().value = v
                _set_spec(out.model_spec, task.model_spec.name, servable.version, sig.name)
            log_spec = model_pb2.ModelSpec(name=spec.name)
            log_spec.version.value = servable.version
            self._log(context, log_spec, "multi_inference_log", request, resp)
            return resp
        finally:
            servable.release()
