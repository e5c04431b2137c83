"""TFServingHook from an Airflow connection, against the local server process: the endpoint it
builds and the calls its client makes against TF Serving (status, metadata, REST and gRPC predict,
reload, wait)."""

from __future__ import annotations

import numpy as np
import pytest

MODEL = "hook_mlp"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from tfmlops.export import export_saved_model
    from tfmlops.models import ModelConfig, build_model

    model = build_model(ModelConfig(n_features=8, num_classes=3, hidden_units=[4]))
    x = np.random.default_rng(0).random((5, 8), dtype=np.float32)
    path = tmp_path_factory.mktemp("export") / "m"
    export_saved_model(model, path, x, warmup_inputs=x)
    return path, x, model(x).numpy()


def test_hook_drives_the_server(airflow_connections, serving_server, exported):
    from tfmlops.deploy.client import ModelNotAvailableError
    from tfmlops.deploy.publish import ensure_model_config, publish_version
    from tfmlops_airflow.hooks import TFServingHook

    path, x, expected = exported
    hook = TFServingHook()
    endpoint, client = hook.endpoint(), hook.client
    assert endpoint.models_root == str(serving_server["models_root"])
    publish_version(path / "saved_model", endpoint.models_root, MODEL, 7)
    config, _ = ensure_model_config(endpoint.model_config_file, MODEL, endpoint.base_path(MODEL))
    client.reload_config(config)
    client.wait_until_available(MODEL, 7, timeout_s=60)

    assert client.status(MODEL)["model_version_status"][0]["state"] == "AVAILABLE"
    signature = client.metadata(MODEL)["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert list(signature["inputs"]) == ["pixels"] and list(signature["outputs"]) == ["probabilities"]
    np.testing.assert_allclose(client.predict_rest(MODEL, x), expected, atol=1e-6)
    np.testing.assert_allclose(client.predict_grpc(MODEL, x, version=7)["probabilities"], expected, atol=1e-6)

    with pytest.raises(ModelNotAvailableError, match="8"):
        client.wait_until_available(MODEL, 8, timeout_s=2)
