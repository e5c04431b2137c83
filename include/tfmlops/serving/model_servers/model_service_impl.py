"""gRPC ``tensorflow.serving.ModelService``, mirroring TF Serving's
``tensorflow_serving/model_servers/model_service_impl.cc``: GetModelStatus and
HandleReloadConfigRequest (ModelConfigList only; ``metric_names`` answered with each metric's
increase during the reload, ``GetMetrics`` + ``RecordMetricsIncrease``), with the official
messages/stubs from tensorflow-serving-api.
"""

from __future__ import annotations

import logging

from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from ..errors import StatusError, invalid_argument
from ..util.monitoring import REGISTRY
from .get_model_status_impl import get_model_status_with_model_spec
from .grpc_status_util import guard
from .server_core import ServerCore

log = logging.getLogger("tfmlops.serving")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServerCore):
        self.core = core

    @guard
    def GetModelStatus(self, request, context):
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        return get_model_status_with_model_spec(self.core, request.model_spec)

    @guard
    def HandleReloadConfigRequest(self, request, context):
        cfg = request.config
        if cfg.WhichOneof("config") != "model_config_list":
            raise invalid_argument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
                "currently supported")
        before = {name: REGISTRY.int64_value(name) for name in request.metric_names}
        for i, mc in enumerate(cfg.model_config_list.config):
            log.info("Config entry index : %d path : %s name : %s platform : %s", i, mc.base_path, mc.name,
                     mc.model_platform)
        try:
            self.core.reload_config(cfg)
        except StatusError as exc:
            log.error("ReloadConfig failed: %s", exc.message)
            raise
        resp = model_management_pb2.ReloadConfigResponse()
        resp.status.error_code = 0
        for name in request.metric_names:
            resp.metric.add(name=name, int64_value_increase=REGISTRY.int64_value(name) - before[name])
        return resp
