"""The gRPC server of tf-serving-local (the gRPC half of TF Serving's
``tensorflow_serving/model_servers/server.cc``): ``tensorflow.serving.PredictionService`` and
``tensorflow.serving.ModelService`` on one port, ``--grpc_max_threads`` worker threads.

Bounded for hostile clients: messages up to ``max_message_bytes`` (default 64 MiB; TF Serving
allows 2 GiB — deviation; ``--grpc_channel_arguments=grpc.max_receive_message_length=N`` raises
it), at most ``4 × max_workers`` RPCs in flight or queued (more: RESOURCE_EXHAUSTED), and channel
arguments applied as given (``--grpc_channel_arguments``).
"""

from __future__ import annotations

from concurrent import futures

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from ..errors import Code, StatusError
from .model_service_impl import ModelService
from .prediction_service_impl import PredictionService
from .server_core import ServerCore

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_SEND_BYTES = 2**31 - 1  # answers are as large as what the model computes (bounded by the inputs)


def make_grpc_server(core: ServerCore, host: str, port: int, max_workers: int = 64,
                     max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, channel_args: list | tuple = (),
                     socket_path: str = ""):
    """The gRPC server, bound (not started) to ``host:port`` (``port`` 0: no TCP listener, as
    TF Serving with only ``--grpc_socket_path``) and/or the Unix socket ``socket_path``;
    ``channel_args`` (name, value) pairs override the defaults, as ``--grpc_channel_arguments`` do.
    Returns the server and the TCP port (0 without one)."""
    options = dict([("grpc.max_send_message_length", MAX_SEND_BYTES),
                    ("grpc.max_receive_message_length", max_message_bytes),
                    ("grpc.so_reuseport", 0), *channel_args])
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=list(options.items()), maximum_concurrent_rpcs=4 * max_workers)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
    bound = 0
    if port:
        bound = server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise StatusError(Code.UNAVAILABLE, f"Failed to BuildAndStart gRPC server: cannot bind {host}:{port}")
    if socket_path and not server.add_insecure_port("unix:" + socket_path):
        raise StatusError(Code.UNAVAILABLE, f"Failed to BuildAndStart gRPC server: cannot bind unix:{socket_path}")
    return server, bound
