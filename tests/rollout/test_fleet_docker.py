"""Docker SDK fleet (``tfmlops.deploy.fleet``) on a real Docker engine: the project's own engine and
the ``tf-serving-local`` image standing in for ``tensorflow/serving`` (fixture ``docker_engine``,
``scripts/docker_engine.py``). Where that engine cannot be set up (not root, not Debian) these
tests skip with the reason, except the check that a missing engine is reported clearly.

The engine runs without a bridge network (it must not touch the machine's network), so the fleet
runs in ``network_mode="host"`` on free loopback ports, its servers bound to 127.0.0.1. The last
test runs the fleet tests again in the default ``bridge`` mode (published ports), on the isolated
engine: a second dockerd in a network namespace of its own, the tests inside it (``nsenter``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tfmlops.deploy.fleet import LABEL, DockerFleet, FleetError

from .load import FailoverLoop, LoadLoop

pytestmark = pytest.mark.e2e
MODEL = "dock"
# "host" on the project's engine; "bridge" when run again inside the isolated engine's namespace
NETWORK = os.environ.get("TFMLOPS_FLEET_NETWORK", "host")


def test_missing_engine_is_reported_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    with pytest.raises(FleetError, match="no Docker engine answers at"):
        DockerFleet.from_env("absent")


def _free_port_pairs(n: int) -> list[int]:
    """``n`` ports p with p and p + 1 both free on 127.0.0.1 (a two-replica fleet uses base + i)."""
    found: list[int] = []
    while len(found) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        taken = {q for f in found for q in (f, f + 1)}
        if p in taken or p + 1 in taken:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 1))
        except OSError:
            continue
        found.append(p)
    return found


def _remove_stale_test_fleets(client) -> None:
    """Containers of test fleets a killed earlier run left on a reused engine."""
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        if c.labels[LABEL].startswith("tfmlops-test-") and c.labels[LABEL] != f"tfmlops-test-{os.getpid()}":
            c.remove(force=True)


@pytest.fixture(scope="module")
def docker_fleet(docker_engine, tmp_path_factory, zoo):
    from tfmlops.deploy.publish import publish_version

    _remove_stale_test_fleets(docker_engine.client)
    root = tmp_path_factory.mktemp("docker_fleet")
    models = root / "models"
    publish_version(zoo.path["v1"], models, MODEL, 1)
    fleet = DockerFleet(f"tfmlops-test-{os.getpid()}", models_dir=str(models), state_dir=str(root / "state"),
                        image=docker_engine.images["tf-serving-local"], network_mode=NETWORK,
                        environment={"TF_SERVING_HOST": "127.0.0.1"} if NETWORK == "host" else {},
                        client=docker_engine.client)
    rest, grpc = _free_port_pairs(2)
    fleet.start(2, rest_port=rest, grpc_port=grpc, timeout_s=180)
    try:
        yield fleet
    finally:
        fleet.stop()


def _outputs(zoo):
    return {1: zoo.out["v1"], 2: zoo.out["v2"]}


def test_bridge_mode_needs_a_bridge_network(docker_engine, tmp_path):
    fleet = DockerFleet("tfmlops-test-bridge", models_dir=str(tmp_path), state_dir=str(tmp_path),
                        image=docker_engine.images["tf-serving-local"], client=docker_engine.client)
    if docker_engine.client.networks.list(names=["bridge"]):
        pytest.skip("this engine has a bridge network")
    with pytest.raises(FleetError, match="no bridge network"):
        fleet.start(1, rest_port=1, grpc_port=2)
    assert not fleet.containers()


def test_image_runs_as_tensorflow_serving_does(docker_engine, tmp_path, zoo):
    """The stand-in image as the tensorflow/serving image is run: its entrypoint with MODEL_NAME and
    the /models volume (ports moved with --port / --rest_api_port, the host's network here); it
    stops on `docker stop`'s SIGTERM at once with status 0 (the server is PID 1)."""
    import time

    from tfmlops.deploy.client import ServingClient
    from tfmlops.deploy.publish import publish_version

    publish_version(zoo.path["v1"], tmp_path / "models", MODEL, 1)
    rest, grpc = _free_port_pairs(2)
    container = docker_engine.client.containers.run(
        docker_engine.images["tf-serving-local"], detach=True, name=f"tfmlops-test-{os.getpid()}-image",
        labels={LABEL: f"tfmlops-test-{os.getpid()}"}, network_mode="host",
        environment={"MODEL_NAME": MODEL, "TF_SERVING_HOST": "127.0.0.1"},
        volumes={str(tmp_path / "models"): {"bind": "/models", "mode": "ro"}},
        command=[f"--port={grpc}", f"--rest_api_port={rest}"])
    try:
        with ServingClient("127.0.0.1", rest, grpc, timeout=10) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.wait_until_available(MODEL, 1, timeout_s=5)
                    break
                except Exception:  # noqa: BLE001 - refused while the container starts
                    if time.monotonic() > deadline:
                        raise AssertionError(container.logs(tail=30).decode(errors="replace")) from None
                    time.sleep(0.5)
            x = zoo.smoke["v1"]["instances"]
            np.testing.assert_allclose(client.predict_rest(MODEL, x), zoo.out["v1"], atol=1e-5)
            np.testing.assert_allclose(client.predict_grpc(MODEL, {"x": np.asarray(x, np.float32)})["y"],
                                       zoo.out["v1"], atol=1e-5)
        t0 = time.monotonic()
        container.stop(timeout=20)
        assert time.monotonic() - t0 < 10
        assert container.wait(timeout=5)["StatusCode"] == 0
    finally:
        container.remove(force=True)


def test_fleet_created_found_and_rolled_out_under_load(docker_fleet, docker_engine, zoo):
    from tfmlops.deploy.model_config import apply_config, find_entry, read_config, with_versions
    from tfmlops.deploy.rollout import PROMOTED, Candidate, rollout
    from tfmlops.deploy.status import serving_versions

    found = DockerFleet.from_env(docker_fleet.name, client=docker_engine.client)
    assert [r.name for r in found.replicas] == [f"{docker_fleet.name}-0", f"{docker_fleet.name}-1"]
    assert (found.network_mode, found.environment, found.image) == (NETWORK, docker_fleet.environment,
                                                                   docker_fleet.image)
    assert all(c.status == "running" for c in found.containers())
    eps = found.endpoints()
    res = rollout(Candidate(MODEL, 1, zoo.path["v1"], zoo.smoke["v1"]), eps, "replace")
    assert res.outcome == PROMOTED, res.reason
    for ep in eps:  # clients address the stable label
        cfg = read_config(ep)
        apply_config(ep, with_versions(cfg, MODEL, find_entry(cfg, MODEL).base_path, [1], {"stable": 1}))
    x = np.asarray(zoo.smoke["v1"]["instances"], np.float32)
    # every replica keeps answering (REST and gRPC, each replica on its own) while v2 rolls out
    with LoadLoop(eps, MODEL, x, _outputs(zoo), label="stable") as loop:
        res = rollout(Candidate(MODEL, 2, zoo.path["v2"], zoo.smoke["v2"]), eps, "canary")
    assert res.outcome == PROMOTED, res.reason
    assert loop.failures == [], loop.failures[:5]
    assert loop.ok > 20 and loop.versions == {1, 2}, (loop.ok, loop.versions)
    for ep in eps:
        assert serving_versions(ep.client, MODEL) == [2]
        assert dict(find_entry(read_config(ep), MODEL).version_labels) == {"stable": 2}
        ep.close()


def test_rolling_replace_with_a_new_image_keeps_the_fleet_answering(docker_fleet, docker_engine, zoo, request):
    from tfmlops.deploy.status import serving_versions

    image = docker_engine.client.images.get(docker_fleet.image)
    image.tag("local/tf-serving-local", "rolled")  # a "new" image: another tag of the same one
    request.addfinalizer(lambda: docker_engine.client.images.remove("local/tf-serving-local:rolled", force=True))
    old_ids = [c.id for c in docker_fleet.containers()]
    eps = docker_fleet.endpoints()
    x = np.asarray(zoo.smoke["v1"]["instances"], np.float32)
    with FailoverLoop(eps, MODEL, x, _outputs(zoo), label="stable") as loop:
        docker_fleet.rolling_replace(image="local/tf-serving-local:rolled", timeout_s=180)
    assert loop.failures == [], "\n".join(loop.failures[:6])
    assert loop.failovers > 0, "no replica was ever down: the replace did not happen under the load"
    assert loop.versions == {2}
    containers = docker_fleet.containers()
    assert {c.id for c in containers}.isdisjoint(old_ids)
    assert [c.image.tags for c in containers] and all("local/tf-serving-local:rolled" in c.image.tags
                                                      for c in containers)
    # the replaced containers read their config files again: still version 2, also by label
    for ep in eps:
        assert serving_versions(ep.client, MODEL) == [2]
        np.testing.assert_allclose(ep.client.predict_rest(MODEL, zoo.smoke["v2"]["instances"], label="stable"),
                                   zoo.out["v2"], atol=1e-5)
        ep.close()
    assert DockerFleet.from_env(docker_fleet.name, client=docker_engine.client).image == \
        "local/tf-serving-local:rolled"


def test_replicas_removed(docker_fleet, docker_engine):
    gone = docker_fleet.remove(1)
    assert [r.name for r in DockerFleet.from_env(docker_fleet.name, client=docker_engine.client).replicas] == \
        [docker_fleet.replicas[0].name]
    for port in (gone.rest_port, gone.grpc_port):  # nothing listens on its ports any more
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
    docker_fleet.stop()
    assert docker_engine.client.containers.list(all=True, filters={"label": f"{LABEL}={docker_fleet.name}"}) == []
    with pytest.raises(FleetError, match="has no containers"):
        DockerFleet.from_env(docker_fleet.name, client=docker_engine.client).endpoints()


@pytest.mark.skipif(NETWORK != "host", reason="this is the run it starts")
def test_the_fleet_in_bridge_mode_on_the_isolated_engine(docker_engine, tmp_path):
    """The fleet tests again with the default network mode (ports published through Docker's
    bridge, servers on 0.0.0.0 in their containers as TF Serving's), where a bridge may exist:
    the isolated engine's own network namespace; the tests run inside it."""
    import docker_engine as de

    iso = de.up(isolated=True)
    iso_client = iso.client()
    try:
        de.copy_image(docker_engine.client, iso_client, docker_engine.images["tf-serving-local"])
        assert iso_client.networks.list(names=["bridge"])
        env = dict(os.environ, TFMLOPS_FLEET_NETWORK="bridge", TFMLOPS_DOCKER_ENGINE="isolated")
        proc = subprocess.run(
            ["nsenter", f"--net={iso.netns}", sys.executable, "-m", "pytest", __file__, "-q", "-x",
             "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'inner'}",
             "-k", "fleet_created or rolling_replace or replicas_removed"],
            cwd=de.ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0 and "3 passed" in proc.stdout, proc.stdout[-6000:] + proc.stderr[-3000:]
    finally:
        iso_client.close()
        if iso.started:
            de.down(iso.dir)
