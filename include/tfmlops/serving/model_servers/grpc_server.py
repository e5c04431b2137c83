"""The gRPC server of tf-serving-local (the gRPC half of TF Serving's
``tensorflow_serving/model_servers/server.cc``): ``tensorflow.serving.PredictionService`` and
``tensorflow.serving.ModelService`` on one port, unlimited message sizes, ``--grpc_max_threads``
worker threads.
"""

from __future__ import annotations

from concurrent import futures

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from ..errors import Code, StatusError
from .model_service_impl import ModelService
from .prediction_service_impl import PredictionService
from .server_core import ServerCore

MAX_MESSAGE = 2**31 - 1


def make_grpc_server(core: ServerCore, host: str, port: int, max_workers: int = 64):
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
