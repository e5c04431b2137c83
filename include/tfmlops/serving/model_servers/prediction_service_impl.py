"""gRPC ``tensorflow.serving.PredictionService``, mirroring TF Serving's
``tensorflow_serving/model_servers/prediction_service_impl.cc``: Predict, Classify, Regress and
GetModelMetadata with the official messages/stubs from tensorflow-serving-api. A client
deadline becomes the session RunOptions timeout (``DeadlineToTimeoutMillis``).

Deviation: MultiInference answers UNIMPLEMENTED.
"""

from __future__ import annotations

from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc, regression_pb2

from .. import tensors as T
from ..errors import Code, StatusError, invalid_argument
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


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServerCore):
        self.core = core

    @guard
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
            return resp
        finally:
            servable.release()

    @guard
    def GetModelMetadata(self, request, context):
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        return get_model_metadata(self.core, request.model_spec, list(request.metadata_field))

    @guard
    def Classify(self, request, context):
        servable = self.core.acquire_spec(request.model_spec)
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

    @guard
    def Regress(self, request, context):
        servable = self.core.acquire_spec(request.model_spec)
        try:
            sig, values = servable.regress(request.model_spec.signature_name, request.input, _timeout_ms(context))
            resp = regression_pb2.RegressionResponse()
            _set_spec(resp.model_spec, request.model_spec.name, servable.version, sig)
            for v in values:
                resp.result.regressions.add().value = v
            return resp
        finally:
            servable.release()

    @guard
    def MultiInference(self, request, context):
        raise StatusError(Code.UNIMPLEMENTED, "MultiInference is not supported by tf-serving-local")
