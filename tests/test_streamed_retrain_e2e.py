"""tf_offline_retrain on a sharded dataset three times larger than the memory it may use: the run
(``dag.test()`` in a child process: every task of the run in that one process) is put in a cgroup
with a memory limit, and its peak RSS (``VmHWM``) must stay under that limit while it streams the
shards through validation, training, evaluation and the gate, registers and serves the model.

The dataset is MNIST rows written once (a few shards) with the train shards
repeated as hard links until the train split is 3× the limit: every byte is read and parsed
(one epoch), only the disk is spared. Linux ignores ``RLIMIT_RSS`` and ``RLIMIT_AS`` breaks
TensorFlow's allocator, hence the cgroup (v1 ``memory`` controller, as root); without one the run
is still checked against the bound by its ``VmHWM``. The same run from ``s3://`` shards (the
session's S3 endpoint, a smaller set: it keeps objects in memory) streams under the same bound."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
BOUND = int(os.environ.get("TFMLOPS_TEST_MEMORY_BOUND_MB", "1280")) << 20
MODEL = "e2e_streamed"
CGROUP_V1 = Path("/sys/fs/cgroup/memory")

pytestmark = pytest.mark.e2e

RUN = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=sys.argv[1]).get_dag("tf_offline_retrain")
dag.deadline = None  # dag.test() cannot run a DeadlineAlert (tests/conftest.py)
run = dag.test(run_conf=json.loads(sys.argv[2]))
# VmHWM, not getrusage's ru_maxrss: Linux carries the forking process's peak (the pytest worker's) across exec
vmhwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) * 1024
print("RESULT " + json.dumps({"state": str(run.state), "vmhwm": vmhwm,
                              "tasks": {ti.task_id: str(ti.state) for ti in run.get_task_instances()}}))
"""


@pytest.fixture(scope="module")
def mnist_shards(tmp_path_factory) -> Path:
    """MNIST shards written once: 20 000 train rows in 2 shards, 5 000 validation, 5 000 test."""
    from tfmlops import modelspec, shards
    from tfmlops.data import load_mnist

    folder = tmp_path_factory.mktemp("streamed") / "noisy-mnist"
    spec = modelspec.read_spec(modelspec.DEFAULT_MODULE)
    mnist = load_mnist()
    x_train = mnist.x_train[:25_000].reshape(-1, 784).astype(np.float32) / 255.0
    x_test = mnist.x_test[:5_000].reshape(-1, 784).astype(np.float32) / 255.0
    name = next(iter(spec.inputs))
    for split, x, y in [("train", x_train[:20_000], mnist.y_train[:20_000]),
                        ("validation", x_train[20_000:], mnist.y_train[20_000:25_000]),
                        ("test", x_test, mnist.y_test[:5_000])]:
        shards.write_shards(spec, folder, split, [({name: x}, y)], rows_per_shard=10_000)
    return folder


@pytest.fixture(scope="module")
def big_dataset(mnist_shards) -> tuple[Path, int]:
    """The train shards hard-linked until the train split is at least 3× the bound; returns
    (folder, train rows)."""
    written = sorted((mnist_shards / "train").iterdir())
    size = sum(p.stat().st_size for p in written)
    copies = -(-3 * BOUND // size)
    for i in range(1, copies):
        for path in written:
            os.link(path, path.with_name(f"copy{i:03d}-{path.name}"))
    return mnist_shards, 20_000 * copies


@pytest.fixture
def memory_cgroup():
    """A v1 memory cgroup limited to the bound (None where this machine gives none)."""
    if not (CGROUP_V1 / "cgroup.procs").exists() or not os.access(CGROUP_V1, os.W_OK):
        yield None
        return
    group = CGROUP_V1 / f"tfmlops-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(BOUND))
    try:
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():  # nothing should be left; never leak a group
            (CGROUP_V1 / "cgroup.procs").write_text(pid)
        group.rmdir()


def run_retrain(conf: dict, memory_cgroup, **env: str) -> dict:
    """``tf_offline_retrain`` with ``conf`` in a child process (in ``memory_cgroup`` when there is
    one), streaming from 64 MiB of shards on (``env`` adds variables; its ``PYTHONPATH`` goes
    first): its state, task states and peak RSS."""
    env = {**os.environ, "TFMLOPS_STREAM_MIN_MB": "64", **env, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "include"), str(ROOT / "plugins"), str(ROOT / "dags"), env.get("PYTHONPATH", ""),
         os.environ.get("PYTHONPATH", "")])}
    procs = None if memory_cgroup is None else str(memory_cgroup / "cgroup.procs")
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(ROOT / "dags" / "tf_offline_retrain.py"), json.dumps(conf)],
        env=env, capture_output=True, text=True, timeout=900,
        preexec_fn=None if procs is None else lambda: Path(procs).write_text(str(os.getpid())))
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (done.returncode, done.stdout[-3000:], done.stderr[-6000:])
    result = json.loads(lines[-1].removeprefix("RESULT "))
    if result["state"] != "success":
        failed = {t: st for t, st in result["tasks"].items() if st in ("failed", "upstream_failed")}
        errors = [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line or "failed" in line]
        pytest.fail(f"the run ended {result['state']}: {failed}\n" + "\n".join(errors[-30:]))
    # every task ran in that one process: its high-water mark bounds each task's
    print(f"peak RSS {result['vmhwm'] >> 20} MiB, bound {BOUND >> 20} MiB")
    assert result["vmhwm"] < BOUND, f"peak RSS {result['vmhwm'] >> 20} MiB over the {BOUND >> 20} MiB bound"
    if memory_cgroup is not None:
        assert (memory_cgroup / "memory.oom_control").read_text().count("under_oom 0") == 1
    return result


def served(serving_server, model: str) -> None:
    status = requests.get(f"http://127.0.0.1:{serving_server['rest_port']}/v1/models/{model}", timeout=10).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    row = np.zeros(784, dtype=np.float32).tolist()
    got = requests.post(f"http://127.0.0.1:{serving_server['rest_port']}/v1/models/{model}:predict",
                        json={"instances": [row]}, timeout=10).json()
    assert len(got["predictions"][0]) == 10


def test_a_dataset_three_times_the_memory_bound_trains_gates_registers_and_serves(
        airflow_db, airflow_connections, mlflow_server, serving_server, big_dataset, memory_cgroup):
    from mlflow import MlflowClient

    folder, train_rows = big_dataset
    dataset_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert dataset_bytes >= 3 * BOUND
    run_retrain({"model_name": MODEL, "dataset_uri": str(folder), "epochs": 1, "batch_size": 256,
                 "gate_threshold": 0.85}, memory_cgroup)
    print(f"dataset {dataset_bytes >> 20} MiB")

    mlf = MlflowClient(mlflow_server)
    champion = mlf.get_model_version_by_alias(MODEL, "champion")
    run = mlf.get_run(champion.run_id)
    assert int(run.data.params["data.train_rows"]) == train_rows  # every row of every shard, read once
    assert run.data.params["data.train_shards"] == str(len(list((folder / "train").iterdir())))
    assert run.data.metrics["test_accuracy"] >= 0.85
    profile = mlf.download_artifacts(champion.run_id, "data/profile.json")
    profile = json.loads(Path(profile).read_text())
    assert profile["splits"]["train"]["rows"] == train_rows
    assert sum(profile["splits"]["test"]["label"]["counts"]) == 5_000
    manifest = json.loads(Path(mlf.download_artifacts(champion.run_id, "data/manifest.json")).read_text())
    # lineage: the fingerprint is the manifest's (shard URI, size, modification time), not the rows'
    fingerprint = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    assert champion.tags["dataset_fingerprint"] == fingerprint
    assert {s["uri"] for s in manifest["splits"]["test"]} == {str(p) for p in (folder / "test").iterdir()}
    served(serving_server, MODEL)


def test_s3_shards_stream_through_the_retrain(airflow_db, airflow_connections, mlflow_server, serving_server,
                                              s3_endpoint, mnist_shards, memory_cgroup):
    """The same run from ``s3://`` shards through the ``aws_default`` connection, on a smaller set
    (the test S3 endpoint keeps its objects in memory): 60 000 train rows in 6 objects, over the
    streaming threshold, read through the S3 API under the same memory bound."""
    from mlflow import MlflowClient

    s3 = s3_endpoint["client"]()
    s3.create_bucket(Bucket="streamed")
    uploaded = {}
    for path in sorted(mnist_shards.rglob("*")):
        if path.is_file() and not path.name.startswith("copy"):  # the written shards, not big_dataset's links
            split = path.parent.name
            for i in range(3 if split == "train" else 1):
                key = f"noisy-mnist/{split}/{i}-{path.name}"
                s3.upload_file(str(path), "streamed", key)
                uploaded.setdefault(split, []).append(f"s3://streamed/{key}")
    assert len(uploaded["train"]) == 6
    aws = json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                      "extra": {"endpoint_url": s3_endpoint["endpoint_url"], "region_name": "us-east-1"}})
    run_retrain({"model_name": f"{MODEL}_s3", "dataset_uri": "s3://streamed/noisy-mnist", "epochs": 1,
                 "batch_size": 256, "gate_threshold": 0.85}, memory_cgroup, AIRFLOW_CONN_AWS_DEFAULT=aws,
                AWS_EC2_METADATA_DISABLED="true")

    mlf = MlflowClient(mlflow_server)
    champion = mlf.get_model_version_by_alias(f"{MODEL}_s3", "champion")
    run = mlf.get_run(champion.run_id)
    assert int(run.data.params["data.train_rows"]) == 60_000 and run.data.params["data.train_shards"] == "6"
    assert run.data.metrics["test_accuracy"] >= 0.85
    manifest = json.loads(Path(mlf.download_artifacts(champion.run_id, "data/manifest.json")).read_text())
    assert {split: sorted(s["uri"] for s in found) for split, found in manifest["splits"].items()} == {
        split: sorted(uris) for split, uris in uploaded.items()}
    assert all(s["version"] for found in manifest["splits"].values() for s in found), manifest  # ETags
    served(serving_server, f"{MODEL}_s3")


# the user's own tf.data pipeline over the TFRecord shards (its own parsing), as a model module
# whose load_data returns an unbatched dataset: no validation split of its own (carved by index)
OWN_PIPELINE = '''
import glob
import os

import tensorflow as tf
import tf_keras as keras

TASK = "multiclass"
INPUTS = {"pixels": ("float32", [784])}
LABEL = "label"
CLASS_NAMES = [str(d) for d in range(10)]
HPARAMS = {"epochs": 1, "batch_size": 256}
SEARCH_SPACE = {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
FEATURES = {"pixels": tf.io.FixedLenFeature([784], tf.float32), "label": tf.io.FixedLenFeature([], tf.int64)}


def build_model(hparams):
    x = keras.Input(shape=(784,), name="pixels")
    hidden = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(x, keras.layers.Dense(10, activation="softmax")(hidden))


def load_data(uri, split):
    if split == "validation":
        return None
    files = sorted(glob.glob(os.path.join(uri, split, "part-*.tfrecord")))  # not the other test's copies
    parsed = tf.data.TFRecordDataset(files).map(lambda r: tf.io.parse_single_example(r, FEATURES))
    return parsed.map(lambda e: ({"pixels": e["pixels"]}, e["label"]))
'''


def test_a_modules_own_tf_data_pipeline_streams_through_the_retrain(
        airflow_db, airflow_connections, mlflow_server, serving_server, mnist_shards, memory_cgroup, tmp_path):
    """A model module whose ``load_data`` returns its own ``tf.data`` pipeline (issue 25): over the
    streaming threshold the run never holds a split — validation carved every 10th row, profile,
    a two-trial hyperparameter search, training, evaluation, gate, registry, serving — under the
    same memory bound; the dataset's identity is the module's code and the URI."""
    from mlflow import MlflowClient

    package = tmp_path / "ownpipe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mnist_records.py").write_text(OWN_PIPELINE)
    name = f"{MODEL}_own_pipeline"
    run_retrain({"model_name": name, "dataset_uri": str(mnist_shards), "model_module": "ownpipe.mnist_records",
                 "gate_threshold": 0.85, "search_trials": 2, "search_parallelism": 1}, memory_cgroup,
                TFMLOPS_STREAM_MIN_MB="16", PYTHONPATH=str(tmp_path), TFMLOPS_MODEL_PACKAGES="ownpipe,tfmlops_examples")

    mlf = MlflowClient(mlflow_server)
    champion = mlf.get_model_version_by_alias(name, "champion")
    run = mlf.get_run(champion.run_id)
    # the shards hold 20 000 train, 5 000 validation and 5 000 test rows; the module reads train and test
    assert (run.data.params["data.train_rows"], run.data.params["data.validation_rows"]) == ("18000", "2000")
    assert run.data.params["data.test_rows"] == "5000" and "data.train_shards" not in run.data.params
    assert run.data.metrics["test_accuracy"] >= 0.85
    manifest = json.loads(Path(mlf.download_artifacts(champion.run_id, "data/manifest.json")).read_text())
    assert manifest["load_data"] == "ownpipe.mnist_records.load_data" and manifest["validation_carved"]
    assert manifest["module_sha256"] == hashlib.sha256((package / "mnist_records.py").read_bytes()).hexdigest()
    assert champion.tags["dataset_fingerprint"] == hashlib.sha256(
        json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    # the search's trials trained on the same stream, each a nested run; the version carries its lineage
    parent = champion.tags.get("search.parent_run_id") or run.data.tags["search.parent_run_id"]
    trials = mlf.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(trials) == 2 and all(r.data.tags["search.state"] == "complete" for r in trials), trials
    assert all("validation_accuracy" in r.data.metrics for r in trials)
    served(serving_server, name)
