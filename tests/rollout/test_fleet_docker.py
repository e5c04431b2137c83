"""Docker SDK fleet of real ``tensorflow/serving`` containers. Needs a Docker engine: without one
these tests skip with the reason, except the check that the missing engine is reported clearly."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tfmlops.deploy.fleet import DEFAULT_IMAGE, DockerFleet, FleetError, docker_client


def _engine():
    try:
        return docker_client(), ""
    except FleetError as exc:
        return None, str(exc)


ENGINE, WHY = _engine()
needs_docker = pytest.mark.skipif(ENGINE is None, reason=f"needs a Docker engine: {WHY}")


@pytest.mark.skipif(ENGINE is not None, reason="a Docker engine answers")
def test_missing_engine_is_reported_clearly():
    with pytest.raises(FleetError, match="no Docker engine answers at"):
        DockerFleet.from_env("absent")


@pytest.fixture(scope="module")
def docker_fleet(tmp_path_factory, zoo):
    from devservers import free_port
    from tfmlops.deploy.publish import publish_version

    root = tmp_path_factory.mktemp("docker_fleet")
    models = root / "models"
    publish_version(zoo.path["v1"], models, "dock", 1)
    ENGINE.images.pull(DEFAULT_IMAGE)
    fleet = DockerFleet(f"tfmlops-test-{os.getpid()}", models_dir=str(models), state_dir=str(root / "state"),
                        client=ENGINE)
    fleet.start(2, rest_port=free_port(), grpc_port=free_port())
    try:
        yield fleet
    finally:
        fleet.stop()


@needs_docker
@pytest.mark.e2e
def test_fleet_rollout_and_rolling_replace(docker_fleet, zoo):
    from tfmlops.deploy.rollout import PROMOTED, Candidate, rollout
    from tfmlops.deploy.status import serving_versions

    found = DockerFleet.from_env(docker_fleet.name, client=ENGINE)
    assert [r.name for r in found.replicas] == [r.name for r in docker_fleet.replicas]
    eps = found.endpoints()
    res = rollout(Candidate("dock", 1, zoo.path["v1"], zoo.smoke["v1"]), eps, "replace")
    assert res.outcome == PROMOTED, res.reason
    res = rollout(Candidate("dock", 2, zoo.path["v2"], zoo.smoke["v2"]), eps, "canary")
    assert res.outcome == PROMOTED, res.reason
    found.rolling_replace()  # containers come back with the same config file: still version 2
    for ep in eps:
        ep.client.wait_until_available("dock", 2, timeout_s=120)
        assert serving_versions(ep.client, "dock") == [2]
        np.testing.assert_allclose(ep.client.predict_rest("dock", zoo.smoke["v2"]["instances"], label="stable"),
                                   zoo.out["v2"], atol=1e-5)
