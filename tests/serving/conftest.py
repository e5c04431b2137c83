"""Fixtures for the tf-serving-local conformance tests.

Models are built once per session; two long-lived server processes are shared:
``main_server`` (config file, no config polling, REST+gRPC) and ``batch_server``
(batching on, config-file polling, labels for unavailable models allowed).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from . import models  # noqa: E402
from ._proc import ServerProcess  # noqa: E402


class Store:
    def __init__(self, root):
        self.root = root

    def path(self, *parts) -> str:
        return os.path.join(str(self.root), *parts)

    def publish(self, src: str, model: str, version: int) -> str:
        """Copy a SavedModel to <root>/<model>/<version> atomically (temp dir + rename)."""
        dst = self.path(model, str(version))
        tmp = self.path(model, f".tmp-{version}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        os.replace(tmp, dst)
        return dst


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving_models")
    s = Store(root)
    models.build_mlp(s.path("staging", "mlp_a"), seed=1)
    models.build_mlp(s.path("staging", "mlp_b"), seed=2, scale=3.0)
    models.build_multi(s.path("staging", "multi"))
    s.publish(s.path("staging", "mlp_a"), "mlp", 1)
    s.publish(s.path("staging", "multi"), "multi", 1)
    s.publish(s.path("staging", "mlp_a"), "life", 1)
    # "warm": a version with a valid warmup file
    from tensorflow_serving.apis import predict_pb2
    from tfmlops.serving.tensors import make_tensor_proto

    good = predict_pb2.PredictRequest()
    good.model_spec.name = "warm"
    make_tensor_proto(np.ones((2, 4), np.float32), good.inputs["x"])
    shutil.copytree(s.path("staging", "mlp_a"), s.path("staging", "warm"))
    models.write_warmup(s.path("staging", "warm"), [good, good])
    s.publish(s.path("staging", "warm"), "warm", 1)
    # "badwarm": warmup request with an input alias the signature lacks -> load fails
    bad = predict_pb2.PredictRequest()
    make_tensor_proto(np.ones((1, 4), np.float32), bad.inputs["not_x"])
    shutil.copytree(s.path("staging", "mlp_a"), s.path("staging", "badwarm"))
    models.write_warmup(s.path("staging", "badwarm"), [bad])
    s.publish(s.path("staging", "badwarm"), "badwarm", 1)
    return s


@pytest.fixture(scope="session")
def reference(store):
    """Reference outputs computed in-process with TensorFlow."""
    x = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.25, 2.0], [0, 0, 0, 0]], np.float32)
    return {
        "x": x,
        "mlp_a": models.mlp_reference(store.path("staging", "mlp_a"), x),
        "mlp_b": models.mlp_reference(store.path("staging", "mlp_b"), x),
    }


def model_entry(name: str, base: str, extra: str = "") -> str:
    return (f'config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" {extra} }}\n')


def base_config_text(store) -> str:
    return ("model_config_list {\n"
            + model_entry("mlp", store.path("mlp"))
            + model_entry("multi", store.path("multi"))
            + model_entry("warm", store.path("warm"))
            + "}\n")


@pytest.fixture(scope="session")
def main_server(store):
    cfg = store.path("main.config")
    with open(cfg, "w") as fh:
        fh.write(base_config_text(store))
    with ServerProcess.running([f"--model_config_file={cfg}", "--file_system_poll_wait_seconds=1",
                                "--rest_api_max_body_bytes=1000000"]) as srv:
        yield srv


@pytest.fixture(scope="session")
def client(main_server):
    with main_server.client() as c:
        yield c


@pytest.fixture(scope="session")
def stubs(main_server):
    import grpc
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    ch = grpc.insecure_channel(f"127.0.0.1:{main_server.grpc_port}")
    yield prediction_service_pb2_grpc.PredictionServiceStub(ch), model_service_pb2_grpc.ModelServiceStub(ch)
    ch.close()
