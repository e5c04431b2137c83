"""Shared fixtures: a small MNIST sample and a float seed MLP trained on it (once per session)."""

from __future__ import annotations

import shutil

import pytest

from tfmlops import data
from tfmlops.formats import runtimes


@pytest.fixture(scope="session")
def small():
    """1 800 train / 300 test rows."""
    return data.load_validated("mnist", 784, 10, sample_fraction=0.03)[0]


@pytest.fixture(scope="session")
def float_model(small):
    """The seed MLP trained (seeded) on all 60 000 MNIST training rows: a model whose int8 and QAT
    int8 TFLite keep its predicted classes as the format checks require (trained on ``small``'s
    1 800 rows, ~89 % accurate, their agreement sat at the 99 % threshold: 98.4–99.6 % by run)."""
    import tf_keras as keras

    from tfmlops.models import ModelConfig, TrainConfig, build_model, train

    keras.utils.set_random_seed(0)
    full = data.load_validated("mnist", 784, 10)[0]
    model = build_model(ModelConfig(n_features=784, num_classes=10))
    train(model, full.x_train, full.y_train, TrainConfig(epochs=3, batch_size=128))
    return model


@pytest.fixture(scope="session")
def float_predict(float_model):
    """The float model's outputs on rows of its one input, or on a features dict."""
    return lambda x: float_model.predict(x["pixels"] if isinstance(x, dict) else x, batch_size=1024, verbose=0)


@pytest.fixture(scope="session")
def mnist_spec(float_model):
    """The spec of the one-input MNIST model (input ``pixels``, ten classes)."""
    from tfmlops.export import legacy_spec

    return legacy_spec(float_model)


@pytest.fixture(scope="session")
def test_split(small):
    from tfmlops.model_data import Split

    return Split({"pixels": small.x_test}, small.y_test)


def require_tfjs_runtimes(browser: bool = False):
    """Skip (with what to install) when node + web/node_modules (and chromium) are absent."""
    try:
        runtimes.node_binary()
        if browser:
            runtimes.chromium_binary()
    except runtimes.RuntimeUnavailable as exc:
        pytest.skip(f"TF.js runtime unavailable: {exc}")


@pytest.fixture
def tfjs_runtimes():
    require_tfjs_runtimes(browser=True)
    return {"node": shutil.which("node"), "chromium": runtimes.chromium_binary()}
