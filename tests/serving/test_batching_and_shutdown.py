"""Second server: --enable_batching, config-file polling, labels for unavailable models,
and SIGTERM with requests in flight (last test: it stops the server)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tfmlops.deploy.client import ServingClient, ServingError
from tfmlops.serving.config import load_config, parse_config_text, write_config

from ._proc import ServerProcess
from .conftest import model_entry

BATCHING = """
max_batch_size { value: 8 }
batch_timeout_micros { value: 300000 }
num_batch_threads { value: 1 }
max_enqueued_batches { value: 100 }
"""


@pytest.fixture(scope="module")
def bserver(store):
    params = store.path("batching.txt")
    with open(params, "w") as fh:
        fh.write(BATCHING)
    cfg = store.path("batch.config")
    write_config(cfg, parse_config_text("model_config_list {" + model_entry("mlp", store.path("mlp")) + "}"))
    with ServerProcess.running([f"--model_config_file={cfg}", "--model_config_file_poll_wait_seconds=1",
                                "--enable_batching", f"--batching_parameters_file={params}",
                                "--allow_version_labels_for_unavailable_models=true"]) as srv:
        srv.config_path = cfg
        yield srv


@pytest.fixture(scope="module")
def bclient(bserver):
    with bserver.client() as c:
        yield c


def _stats(bserver):
    return requests.get(f"http://127.0.0.1:{bserver.rest_port}/monitoring/tfmlops/batching", timeout=10).json()


def test_concurrent_requests_are_merged(bserver, bclient, store):
    before = _stats(bserver)
    xs = [np.random.default_rng(i).normal(size=(1, 4)).astype(np.float32) for i in range(8)]

    def call(i):
        if i % 2:
            return bclient.predict_rest("mlp", xs[i])
        return bclient.predict_grpc("mlp", xs[i])["y"]

    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(call, range(8)))
    from .models import mlp_reference

    want = mlp_reference(store.path("staging", "mlp_a"), np.concatenate(xs))
    np.testing.assert_allclose(np.concatenate(outs), want, rtol=1e-5, atol=1e-6)
    after = _stats(bserver)
    assert after["tasks"] - before["tasks"] == 8
    assert after["merged_batches"] > before["merged_batches"]
    assert after["max_tasks_in_batch"] >= 2
    assert after["batches"] - before["batches"] < 8


def test_batching_errors(bclient):
    with pytest.raises(ServingError) as ei:
        bclient.predict_rest("mlp", np.ones((9, 4), np.float32))
    assert ei.value.http_status == 400
    assert ei.value.message == "Task size 9 is larger than maximum input batch size 8"


def test_config_file_polling_adds_and_removes_models(bserver, bclient, store):
    cfg = load_config(bserver.config_path)
    mc = cfg.model_config_list.config.add()
    mc.name, mc.base_path, mc.model_platform = "multi", store.path("multi"), "tensorflow"
    write_config(bserver.config_path, cfg)
    bclient.wait_until_available("multi", 1, timeout_s=20, poll_s=0.25)
    r = requests.post(f"http://127.0.0.1:{bserver.rest_port}/v1/models/multi:regress",
                      data=json.dumps({"signature_name": "regress", "examples": [{"x": [1.0, 1.0]}]}), timeout=30)
    assert r.json() == {"results": [3.0]}
    del cfg.model_config_list.config[-1]
    write_config(bserver.config_path, cfg)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if bclient.status("multi")["model_version_status"][0]["state"] == "END":
            break
        time.sleep(0.25)
    assert bclient.status("multi")["model_version_status"][0]["state"] == "END"


def test_labels_for_unavailable_models_flag(bserver, bclient, store):
    cfg = load_config(bserver.config_path)
    mlp = cfg.model_config_list.config[0]
    mlp.version_labels["future"] = 7  # new label -> allowed although version 7 does not exist
    write_config(bserver.config_path, cfg)
    bclient.reload_config(cfg)
    with pytest.raises(ServingError) as ei:
        bclient.predict_grpc("mlp", np.ones((1, 4), np.float32), label="future")
    assert ei.value.grpc_code == "NOT_FOUND" and "Specific(mlp, 7)" in ei.value.message
    mlp.version_labels["future"] = 8  # moving an existing label to an unavailable version is refused
    with pytest.raises(ServingError) as ei:
        bclient.reload_config(cfg)
    assert ei.value.grpc_code == "FAILED_PRECONDITION"
    mlp.version_labels["future"] = 1  # ... but to an available one is fine
    write_config(bserver.config_path, cfg)
    bclient.reload_config(cfg)
    resp = bclient.predict_grpc_response("mlp", {"x": np.ones((1, 4), np.float32)}, label="future")
    assert resp.model_spec.version.value == 1


def test_sigterm_drains_in_flight_requests(bserver, bclient):
    results, errors = [], []

    def call():
        try:
            results.append(ServingClient("127.0.0.1", bserver.rest_port, bserver.grpc_port, 60)
                           .predict_rest("mlp", np.ones((1, 4), np.float32)))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)  # requests are now waiting in the 300 ms batch window
    t0 = time.monotonic()
    rc = bserver.terminate(timeout=60)
    for t in threads:
        t.join(30)
    assert rc == 0, bserver.log[-3000:]
    assert not errors and len(results) == 4
    assert time.monotonic() - t0 < 30
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{bserver.rest_port}/v1/models/mlp", timeout=5)
