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
    from tfmlops.models import ModelConfig, TrainConfig, build_model, train

    model = build_model(ModelConfig())
    train(model, small.x_train, small.y_train, TrainConfig(epochs=10, batch_size=64))
    return model


@pytest.fixture(scope="session")
def float_predict(float_model):
    return lambda x: float_model.predict(x, batch_size=1024, verbose=0)


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
