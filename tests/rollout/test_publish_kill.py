"""Kill the publish midway (a real subprocess, SIGKILL): on a local models root and on S3
(``moto_server``) the server never loads the partial version, and the retried publish completes it.
Also a ``replace`` rollout whose endpoint serves from an ``s3://`` base path, with keep-1 retirement."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tfmlops.deploy.endpoint import Endpoint
from tfmlops.deploy.model_config import apply_config, read_config, with_versions, without_model
from tfmlops.deploy.publish import COMPLETE_MARKER, publish_version, published_versions
from tfmlops.deploy.rollout import PROMOTED, Candidate, rollout
from tfmlops.deploy.status import version_states

from .conftest import ServerProcess

pytestmark = pytest.mark.e2e

KILLER = r"""
import json, sys, time
from tfmlops.deploy.publish import publish_version
src, root, model, version, endpoint = sys.argv[1:6]
client = None
if endpoint:
    import boto3
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
done = []
def on_file(rel):
    done.append(rel)
    if len(done) == 3:
        print("HALFWAY " + json.dumps(done[:-1]), flush=True)
        time.sleep(120)
publish_version(src, root, model, int(version), s3_client=client, on_file=on_file)
print("FINISHED", flush=True)
"""


def publish_and_kill(src: str, root: str, model: str, version: int, endpoint: str = "") -> list[str]:
    proc = subprocess.Popen([sys.executable, "-c", KILLER, src, root, model, str(version), endpoint],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("HALFWAY"), line
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return json.loads(line.split(" ", 1)[1])


def test_killed_local_publish_is_never_loaded_and_retry_completes(fleet, zoo):
    ep = fleet[0]
    model = "killme"
    publish_version(zoo.path["v1"], ep.models_root, model, 1)
    base = os.path.join(ep.models_root, model)
    cfg = read_config(ep)
    apply_config(ep, with_versions(cfg, model, base, "latest", {}))
    try:
        copied = publish_and_kill(zoo.path["v2"], ep.models_root, model, 2)
        assert copied  # some files were copied before the kill
        assert [p for p in os.listdir(base) if p.startswith(".tmp-2-")], os.listdir(base)
        time.sleep(2.5)  # > 2 polls of the base path
        assert set(version_states(ep.client, model)) == {1}
        assert published_versions(ep.models_root, model) == [1]

        res = publish_version(zoo.path["v2"], ep.models_root, model, 2)  # the retried task
        assert res["published"] is True
        assert sorted(os.listdir(base)) == ["1", "2"]  # the stale staging dir is gone
        ep.client.wait_until_available(model, 2, timeout_s=60)
        np.testing.assert_allclose(ep.client.predict_rest(model, zoo.smoke["v2"]["instances"], version=2),
                                   zoo.out["v2"], atol=1e-5)
        assert publish_version(zoo.path["v2"], ep.models_root, model, 2)["published"] is False
    finally:
        apply_config(ep, without_model(read_config(ep), model))


@pytest.fixture(scope="module")
def s3_server(s3_endpoint, zoo, tmp_path_factory):
    """A tf-serving-local whose model base path is on S3 (moto_server), seeded with version 1."""
    s3 = s3_endpoint["client"]()
    s3.create_bucket(Bucket="serving")
    root = "s3://serving/models"
    publish_version(zoo.path["v1"], root, "s3m", 1, s3_client=s3)
    tmp = tmp_path_factory.mktemp("s3_serving")
    config_file = str(tmp / "models.config")
    with open(config_file, "w") as fh:
        fh.write(f'model_config_list {{ config {{ name: "s3m" base_path: "{root}/s3m" '
                 'model_platform: "tensorflow" } }\n')
    env = {"AWS_ENDPOINT_URL_S3": s3_endpoint["endpoint_url"], "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc = ServerProcess([f"--model_config_file={config_file}", "--file_system_poll_wait_seconds=1",
                              f"--s3_cache_dir={tmp / 'cache'}"])
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    ep = Endpoint("s3ep", rest_port=proc.rest_port, grpc_port=proc.grpc_port, models_root=root,
                  model_config_file=config_file, timeout=60)
    try:
        proc.wait_ready()
        yield {"ep": ep, "s3": s3, "root": root, "proc": proc}
    finally:
        ep.close()
        proc.terminate()


def test_killed_s3_publish_is_never_loaded_and_retry_completes(s3_server, s3_endpoint, zoo):
    ep, s3, root = s3_server["ep"], s3_server["s3"], s3_server["root"]
    assert ep.client.status("s3m")["model_version_status"][0]["state"] == "AVAILABLE"
    uploaded = publish_and_kill(zoo.path["v2"], root, "s3m", 2, s3_endpoint["endpoint_url"])
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="serving", Prefix="models/s3m/2/").get("Contents", [])}
    assert keys == {f"models/s3m/2/{rel}" for rel in uploaded}  # a partial upload ...
    assert "models/s3m/2/saved_model.pb" not in keys and f"models/s3m/2/{COMPLETE_MARKER}" not in keys
    time.sleep(2.5)
    assert set(version_states(ep.client, "s3m")) == {1}  # ... that the server ignores
    assert published_versions(root, "s3m", s3_client=s3) == [1]

    res = publish_version(zoo.path["v2"], root, "s3m", 2, s3_client=s3)  # the retried task
    assert res["published"] is True
    ep.client.wait_until_available("s3m", 2, timeout_s=60)
    np.testing.assert_allclose(ep.client.predict_grpc("s3m", np.asarray(zoo.smoke["v2"]["instances"], np.float32),
                                                      version=2)["y"], zoo.out["v2"], atol=1e-5)
    assert publish_version(zoo.path["v2"], root, "s3m", 2, s3_client=s3)["published"] is False


def test_replace_rollout_on_s3_base_path_retires_old_versions(s3_server, zoo):
    ep, s3, root = s3_server["ep"], s3_server["s3"], s3_server["root"]
    res = rollout(Candidate("s3m", 3, zoo.path["v3"], zoo.smoke["v3"]), [ep], "replace", keep=1, s3_client=s3)
    assert res.outcome == PROMOTED, res.reason
    assert res.published == [f"{root}/s3m/3"]
    assert sorted(res.retired) == [f"{root}/s3m/1", f"{root}/s3m/2"]
    assert published_versions(root, "s3m", s3_client=s3) == [3]
    assert not s3.list_objects_v2(Bucket="serving", Prefix="models/s3m/1/").get("Contents")
    states = version_states(ep.client, "s3m")
    assert states[3][0] == "AVAILABLE" and all(s == "END" for v, (s, _) in states.items() if v != 3)
