"""Test harness: an isolated Airflow home, and real servers as subprocesses on free loopback ports.

The environment is set here, before anything imports Airflow or TensorFlow: tf_keras, a
throw-away AIRFLOW_HOME with its own SQLite database, the project's dags/ and plugins/.
"""

from __future__ import annotations

import contextlib

import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="tfmlops-airflow-"))
os.environ.update({
    "TF_USE_LEGACY_KERAS": "1",
    "AIRFLOW_HOME": str(_AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
    # one key for this process and the airflow commands it starts: without it each generates its
    # own, and what one encrypts in the DB (an asset watcher's trigger kwargs) the other cannot read
    "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
    # the tests' partitions live in pytest's temporary folders
    "AIRFLOW__TFMLOPS__ALLOWED_PARTITIONS_ROOTS": tempfile.gettempdir(),
    # samples of streamed datasets (tfmlops.sample_cache) stay with this run, not in the user's cache
    "TFMLOPS_SAMPLE_CACHE": str(_AIRFLOW_HOME / "samples"),
})
for folder in ("plugins", "dags", "scripts"):  # plugins and dags as Airflow puts them on sys.path; scripts: devservers
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))

import _prefetch  # noqa: E402  (tests/_prefetch.py: the production stack's images, in the background)
import devservers  # noqa: E402

pytest_plugins = ["_timing"]  # time per test folder at the end of the run (tests/_timing.py)


def _test_without_deadlines():
    """Airflow 3.3's ``dag.test()`` cannot run a DAG that carries a ``DeadlineAlert``: its
    ``DagRun.update_state`` looks the alerts up by id and gets the alerts themselves (``'dict' object
    has no attribute 'hex'``); the scheduler's runs are not affected (tests/rollout/
    test_notifications_e2e.py has a deadline pass in a real Airflow). The in-process runs here leave
    the retraining DAGs' deadlines out."""
    from airflow.sdk.definitions.dag import DAG

    original = DAG.test

    def test(self, *args, **kwargs):
        deadline, self.deadline = self.deadline, None
        try:
            return original(self, *args, **kwargs)
        finally:
            self.deadline = deadline

    DAG.test = test


_test_without_deadlines()


@pytest.fixture(scope="session")
def airflow_db():
    """Migrate the throw-away Airflow metadata database once per session; a pristine copy of it,
    ``airflow-migrated.db``, is kept for tests that run an Airflow of their own on a fresh DB."""
    import shutil

    subprocess.run([str(devservers.BIN / "airflow"), "db", "migrate"], check=True, stdout=subprocess.DEVNULL,
                   env=os.environ.copy())
    shutil.copyfile(_AIRFLOW_HOME / "airflow.db", _AIRFLOW_HOME / "airflow-migrated.db")
    return _AIRFLOW_HOME


@contextlib.contextmanager
def mlflow_process(root, backend_store_uri: str | None = None, timeout_s: float = 120):
    """A real ``mlflow server`` on a free port (SQLite under ``root`` unless a backend is given),
    able to deliver webhooks to receivers on loopback (``devservers.mlflow_server_env``)."""
    from cryptography.fernet import Fernet

    port = devservers.free_port()
    devservers.start("mlflow", devservers.mlflow_server_argv(root, port, backend_store_uri), root,
                     env=devservers.mlflow_server_env(Fernet.generate_key().decode(), cache_ttl_s=1))
    url = f"http://127.0.0.1:{port}"
    try:
        devservers.wait_http(f"{url}/health", timeout_s, "mlflow", root)
        yield url
    finally:
        devservers.stop("mlflow", root)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (SQLite backend, local artifacts) on a free port."""
    with mlflow_process(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture(scope="session")
def serving_server(tmp_path_factory):
    """The TF Serving-compatible local server on an (initially empty) model config file."""
    root = tmp_path_factory.mktemp("serving")
    rest, grpc = devservers.free_port(), devservers.free_port()
    config_file = root / "models.config"
    # request log files (of models given a logging_config) are closed within ~2 s, for the tests to read
    devservers.start("tf-serving-local", devservers.serving_argv(config_file, rest, grpc)
                     + ["--request_log_max_file_age_s=1"], root)
    try:
        devservers.wait_http(f"http://127.0.0.1:{rest}/v1/models/_", 120, "tf-serving-local", root, any_status=True)
        yield {"rest_port": rest, "grpc_port": grpc, "models_root": root / "models", "config_file": config_file,
               "run_dir": root, "request_logs": root / "request-logs"}
    finally:
        devservers.stop("tf-serving-local", root)


@pytest.fixture
def airflow_connections(monkeypatch, mlflow_server, serving_server):
    """``mlflow_default`` and ``tf_serving_default`` pointing at the session's servers."""
    host, port = mlflow_server.removeprefix("http://").split(":")
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT",
                       json.dumps({"conn_type": "http", "host": host, "port": int(port)}))
    monkeypatch.setenv("AIRFLOW_CONN_TF_SERVING_DEFAULT", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": serving_server["rest_port"],
        "extra": {"grpc_port": serving_server["grpc_port"], "models_root": str(serving_server["models_root"]),
                  "model_config_file": str(serving_server["config_file"])}}))


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A real S3 protocol endpoint (``moto_server``) on loopback; yields a boto3 client factory."""
    import boto3

    root = tmp_path_factory.mktemp("s3")
    port = devservers.free_port()
    devservers.start("moto", [str(devservers.BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], root)
    url = f"http://127.0.0.1:{port}"
    try:
        devservers.wait_http(f"{url}/moto-api/", 60, "moto", root, any_status=True)
        yield {"endpoint_url": url,
               "client": lambda: boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                                              aws_access_key_id="testing", aws_secret_access_key="testing")}
    finally:
        devservers.stop("moto", root)


@pytest.fixture(scope="session")
def docker_engine():
    """The project's own Docker engine with its local images (``scripts/docker_engine.py``, what
    ``make docker-up`` does): reused when it already answers, else started here and stopped at the
    end of the session (images stay cached under ``var/docker``). Skips with the reason where it
    cannot be set up (not root, not Debian). Each phase's time goes to
    ``var/test-output/docker-engine.json``. With ``TFMLOPS_DOCKER_ENGINE=isolated`` (a test run
    started inside the isolated engine's network namespace by an outer one): that engine, as is."""
    import time
    from types import SimpleNamespace

    import docker_engine as de

    if os.environ.get("TFMLOPS_DOCKER_ENGINE") == "isolated":  # a run inside the isolated engine's namespace
        engine = de.up(isolated=True)  # started by the outer run, with the image copied in
        client = engine.client()
        os.environ["DOCKER_HOST"] = engine.host  # this process exists for these tests only
        yield SimpleNamespace(client=client, host=engine.host, images={"tf-serving-local": de.serving_image_tag()},
                              times={})
        client.close()
        return
    times = {}
    prefetched = _prefetch.wait()  # the stack's images, prepared in the background since the start
    if prefetched:
        times["prefetch_waited_s"] = prefetched["waited_s"]
    t0 = time.monotonic()
    try:
        engine = de.up()
    except de.EngineUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")
    started_here = engine.started or _prefetch.started(isolated=False)
    times["engine_s"] = round(time.monotonic() - t0, 1)
    client = engine.client()
    try:
        t0 = time.monotonic()
        base = de.ensure_base_image(client)
        times["base_image_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        serving = de.ensure_serving_image(client, base)
        times["tf_serving_local_image_s"] = round(time.monotonic() - t0, 1)
    except BaseException as exc:
        client.close()
        if started_here:
            de.down(engine.dir)
        if isinstance(exc, de.EngineUnavailable):  # e.g. the Debian mirror unreachable; a bad Dockerfile fails
            pytest.skip(f"no base image: {exc}")
        raise
    out = ROOT / "var" / "test-output"
    out.mkdir(parents=True, exist_ok=True)
    (out / "docker-engine.json").write_text(json.dumps({**times, "started_here": started_here}, indent=1))
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = engine.host  # docker.from_env() in the code under test
    try:
        yield SimpleNamespace(client=client, host=engine.host, images={"base": base, "tf-serving-local": serving},
                              times=times)
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous
        client.close()
        if started_here:
            de.down(engine.dir)


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def _distributed(config) -> bool:
    """Whether this run spreads its tests over pytest-xdist workers (``make test``: ``-n 2``)."""
    if _is_worker(config):  # xdist sets a worker's own "dist" to "no" and keeps "loadgroup"
        return bool(getattr(config.option, "loadgroup", False))
    return config.pluginmanager.hasplugin("xdist") and config.getoption("dist", "no") != "no"


def pytest_configure(config):
    if not _is_worker(config):
        _prefetch.forget()


def _start_prefetch(config, nodeids: list[str]) -> None:
    if not config.option.collectonly and _prefetch.start(nodeids):
        print("\n[tests] preparing the production stack's images in the background "
              f"({_prefetch.LOG.relative_to(ROOT)})", flush=True)


def pytest_collection_finish(session):
    """The production stack's images start building in the background when its test is selected
    (by the xdist controller when the run is distributed)."""
    if not _is_worker(session.config):
        _start_prefetch(session.config, [item.nodeid for item in session.items])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    _start_prefetch(node.config, ids)  # once: _prefetch.start ignores a second call


def pytest_sessionfinish(session, exitstatus):
    _prefetch.stop()


# Under xdist (``--dist loadgroup``) each group runs whole in one worker, so that the fixtures its
# tests share are set up once: a test folder (its conftest's trained models, servers, Airflow), every
# test of the project's Docker engine ("stack": one engine, one user), and each file directly in
# tests/. The workers pull groups longest first (measured in session 16, worker seconds in the
# comments), so that the last groups handed out are the short ones and both workers end together;
# the stack group waits until the two workers have had ~15 min of other groups: its images are
# prepared in the background meanwhile (16 min when nothing is cached). Groups not listed (under
# 15 s each) follow in file order.
LONGEST_FIRST = (
    "tests/rollout",  # 974
    "tests/byom",  # 534
    "tests/serving",  # 415
    "stack",  # 563
    "tests/optimize",  # 210
    "tests/test_streamed_retrain_e2e.py",  # 137
    "tests/core",  # 97
    "tests/ui",  # 73
    "tests/test_postgres_backend.py",  # 71
    "tests/test_dag_integrity.py",  # 56
    "tests/online",  # 44
    "tests/live_metrics",  # 39
    "tests/test_fab_roles.py",  # 33
    "tests/test_mlflow_auth.py",  # 31
    "tests/test_offline_retrain_e2e.py",  # 27
    "tests/test_run_guard_e2e.py",  # 21
    "tests/test_devservers.py",  # 19
)


def _group(item) -> str:
    if item.get_closest_marker("stack"):
        return "stack"
    path = item.nodeid.split("::", 1)[0]
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else path


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker, and before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Every test that needs the project's Docker engine (fixture ``docker_engine``, directly or
    through another fixture) is marked ``stack``: ``-m "not stack"`` leaves them out. A distributed
    run groups and orders the tests for its workers (above)."""
    for item in items:
        if "docker_engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)
    if not _distributed(config):
        return
    rank = {group: i for i, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable: the order within a group stays
    if _is_worker(config):
        # what xdist's loadgroup does for an ``xdist_group`` mark: the node id ends with "@<group>", the
        # controller's work unit. xdist 3.8 writes ``item._nodeid``, which pytest 9.2 no longer reads
        # (its node ids are ``NodeId`` values in ``item._id``), so the marks would group nothing.
        from _pytest.nodeid import NodeId

        for item in items:
            item._id = NodeId.parse(f"{item.nodeid}@{_group(item)}")


@pytest.fixture(scope="session")
def notify_sinks():
    """A real SMTP server and a webhook receiver on loopback (``tests/notify_sinks.py``)."""
    from notify_sinks import Sinks

    sinks = Sinks()
    try:
        yield sinks
    finally:
        sinks.close()
