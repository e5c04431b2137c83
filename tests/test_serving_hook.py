"""TFServingHook from an Airflow connection, against the local server process: the same calls
(status, metadata, REST and gRPC predict, reload, wait) that it makes against TF Serving."""

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
    export_saved_model(model, path, x)
    return path, x, model(x).numpy()


def test_hook_drives_the_server(airflow_connections, serving_server, exported):
    from tfmlops.serving.client import ModelNotAvailableError
    from tfmlops.serving.publish import ensure_model_config, publish_version
    from tfmlops_airflow.hooks import TFServingHook

    path, x, expected = exported
    hook = TFServingHook()
    assert hook.models_root == str(serving_server["models_root"])
    publish_version(path / "saved_model", hook.models_root, MODEL, 7)
    config, _ = ensure_model_config(hook.model_config_file, MODEL, f"{hook.server_models_root}/{MODEL}")
    hook.reload_config(config)
    hook.wait_until_available(MODEL, 7, timeout_s=60)

    assert hook.status(MODEL)["model_version_status"][0]["state"] == "AVAILABLE"
    signature = hook.metadata(MODEL)["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert list(signature["inputs"]) == ["pixels"] and list(signature["outputs"]) == ["probabilities"]
    np.testing.assert_allclose(hook.predict_rest(MODEL, x), expected, atol=1e-6)
    np.testing.assert_allclose(hook.predict_grpc(MODEL, x, version=7)["probabilities"], expected, atol=1e-6)

    with pytest.raises(ModelNotAvailableError, match="8"):
        hook.wait_until_available(MODEL, 8, timeout_s=2)
