"""An endpoint with ``request_log_prefix`` (the embedded tf-serving-local) gives every model it
serves a ``logging_config``; an entry that has one keeps it; without the prefix nothing changes."""

from __future__ import annotations

import pytest

from tfmlops.deploy.endpoint import Endpoint
from tfmlops.deploy.model_config import with_request_logging, with_versions
from tfmlops.serving.config import ModelServerConfig


def test_endpoint_request_logging_is_added_once_and_kept():
    cfg = with_versions(ModelServerConfig(), "mnist", "/models/mnist", [3], {"stable": 3})
    assert with_request_logging(Endpoint(name="real-tf-serving"), cfg) == cfg
    ep = Endpoint(name="local", request_log_prefix="/var/logs/", request_log_sampling_rate=0.25)
    logged = with_request_logging(ep, cfg)
    (entry,) = logged.model_config_list.config
    assert entry.logging_config.log_collector_config.filename_prefix == "/var/logs/mnist/requests"
    assert entry.logging_config.sampling_config.sampling_rate == 0.25
    # a later edit of the versions keeps the entry's logging config, and it is not replaced
    later = with_versions(logged, "mnist", "/models/mnist", [3, 4], {"stable": 3, "canary": 4})
    other = Endpoint(name="local", request_log_prefix="/elsewhere", request_log_sampling_rate=1.0)
    assert with_request_logging(other, later).model_config_list.config[0].logging_config == entry.logging_config
    with pytest.raises(ValueError, match="request_log_sampling_rate must be in"):
        with_request_logging(Endpoint(name="x", request_log_prefix="/l", request_log_sampling_rate=2.0), cfg)
