"""Fixtures for the rollout tests: tiny models built once, two real ``tf-serving-local`` endpoints
(each with its own models root and config file, as replicas on two hosts) shared by the session."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from serving._proc import ServerProcess  # noqa: E402  (tests/ is on sys.path: tests/serving is a package)

from . import models  # noqa: E402

MODEL = "roll"


class Zoo:
    """SavedModels (path + smoke batch + outputs on the load batch) by name."""

    def __init__(self, root):
        self.root = str(root)
        self.path, self.smoke, self.out = {}, {}, {}

    def add(self, name: str, seed: int, scale: float = 1.0) -> None:
        path = os.path.join(self.root, name)
        self.smoke[name] = models.build(path, seed, scale)
        self.path[name] = path
        self.out[name] = np.asarray(self.smoke[name]["expected"], np.float32)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    z = Zoo(tmp_path_factory.mktemp("rollout_models"))
    for name, seed, scale in [("v1", 1, 1.0), ("v2", 1, 1.5), ("v3", 1, 2.0), ("v7", 1, 2.5), ("v8", 1, 3.0),
                              ("bad", 2, 3.0), ("other", 3, 1.0)]:
        z.add(name, seed, scale)
    models.corrupt_copy(z.path["v1"], os.path.join(z.root, "corrupt"))
    z.path["corrupt"], z.smoke["corrupt"] = os.path.join(z.root, "corrupt"), z.smoke["v1"]
    # holdout labelled by v1: every v1-derived version (scaled last layer) scores 1.0, "bad" does not
    rng = np.random.default_rng(0)
    z.holdout_x = rng.normal(size=(120, 4)).astype(np.float32)
    z.holdout_y = np.argmax(models.predict(z.path["v1"], z.holdout_x), axis=1)
    z.bad_accuracy = float(np.mean(np.argmax(models.predict(z.path["bad"], z.holdout_x), axis=1) == z.holdout_y))
    assert z.bad_accuracy < 0.8, z.bad_accuracy
    return z


def _endpoint(root, name: str, zoo: Zoo):
    from tfmlops.deploy.endpoint import Endpoint
    from tfmlops.deploy.publish import publish_version

    models_root = os.path.join(str(root), name, "models")
    config_file = os.path.join(str(root), name, "models.config")
    publish_version(zoo.path["v1"], models_root, MODEL, 1)
    with open(config_file, "w") as fh:
        fh.write(f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{models_root}/{MODEL}" '
                 'model_platform: "tensorflow" } }\n')
    proc = ServerProcess([f"--model_config_file={config_file}", "--file_system_poll_wait_seconds=1"])
    ep = Endpoint(name=name, rest_port=proc.rest_port, grpc_port=proc.grpc_port, models_root=models_root,
                  model_config_file=config_file, timeout=60)
    return proc, ep


@pytest.fixture(scope="session")
def fleet(tmp_path_factory, zoo):
    """Two endpoints serving MODEL version 1 (latest policy)."""
    root = tmp_path_factory.mktemp("rollout_fleet")
    started = [_endpoint(root, name, zoo) for name in ("ep1", "ep2")]
    try:
        for proc, _ in started:
            proc.wait_ready()
        yield [ep for _, ep in started]
    finally:
        for proc, ep in started:
            ep.close()
            proc.terminate()


@pytest.fixture(scope="package")
def airflow(tmp_path_factory, airflow_db, mlflow_server, serving_server, notify_sinks):
    """A whole Airflow shared by this package's Airflow end-to-end tests (``airflow_stack.py``)."""
    from .airflow_stack import airflow_stack

    with airflow_stack(tmp_path_factory.mktemp("airflow"), airflow_db, mlflow_server, serving_server,
                       notify_sinks) as stack:
        yield stack
