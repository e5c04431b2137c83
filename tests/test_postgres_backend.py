"""Nothing depends on SQLite: ``tf_offline_retrain`` end to end with the Airflow metadata DB and
the MLflow tracking/registry backend both on PostgreSQL (as in docker-compose.yaml).

A throw-away PostgreSQL cluster from Debian's packages (``postgresql``; ``make test`` installs it
when missing and running as root) on a free loopback port, an ``mlflow server`` on it, the local
serving server, then ``airflow db migrate`` and ``dag.test()`` in a subprocess (this test session
has already configured SQLite in-process, see conftest.py).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import devservers

from conftest import mlflow_process

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
MODEL = "pg_mnist"
USER = "tfmlops"


def _pg_bin() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name),
                            reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _as_postgres_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as Debian's ``postgres`` user then."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]


def _wait_postgres(dsn: str, timeout: float, run_dir: Path) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(dsn, connect_timeout=2).close()
            return
        except psycopg2.OperationalError:
            if not devservers.running_pid("postgres", run_dir):
                raise RuntimeError(f"postgres exited:\n{devservers.log_tail('postgres', run_dir)}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres did not accept connections:\n"
                                   f"{devservers.log_tail('postgres', run_dir)}") from None
            time.sleep(0.5)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A PostgreSQL server on 127.0.0.1:<free port> with databases ``airflow`` and ``mlflow``."""
    pytest.importorskip("psycopg2", reason="psycopg2 is missing (pip install psycopg2-binary==2.9.13)")
    pytest.importorskip("asyncpg", reason="asyncpg is missing (Airflow 3's async engine on PostgreSQL; "
                                          "pip install asyncpg==0.32.0)")
    import psycopg2

    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL is not installed (`make system-deps` as root, or apt-get install -y postgresql)")
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode:
        pytest.skip("running as root and there is no `postgres` user to run the server as")
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv (util-linux) to drop to the postgres user")

    # Outside pytest's (0700, root-owned) temp tree: the postgres user must reach its data dir.
    root = Path(tempfile.mkdtemp(prefix="tfmlops-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        for path in (root, sockets):
            shutil.chown(path, "postgres", "postgres")
    init = subprocess.run(_as_postgres_user([str(pg_bin / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                                             "--encoding=UTF8", "--no-sync"]),
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    port = devservers.free_port()
    argv = _as_postgres_user([str(pg_bin / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
                              "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=100"])
    run_dir = tmp_path_factory.mktemp("postgres-run")
    devservers.start("postgres", argv, run_dir)
    try:
        _wait_postgres(f"host=127.0.0.1 port={port} user={USER} dbname=postgres", 60, run_dir)
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            for db in ("airflow", "mlflow"):
                cur.execute(f"CREATE DATABASE {db}")
        conn.close()
        yield {"host": "127.0.0.1", "port": port, "user": USER,
               "url": lambda db, driver="postgresql+psycopg2": f"{driver}://{USER}@127.0.0.1:{port}/{db}"}
    finally:
        devservers.stop("postgres", run_dir)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_mlflow(postgres, tmp_path_factory):
    """``mlflow server`` with its backend store on PostgreSQL (artifacts: local, served by it)."""
    with mlflow_process(tmp_path_factory.mktemp("pg-mlflow"), postgres["url"]("mlflow"), timeout_s=240) as url:
        yield url


DRIVER = textwrap.dedent("""
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag("tf_offline_retrain")
    dag.deadline = None  # Airflow 3.3's dag.test() cannot run a DeadlineAlert (tests/conftest.py)
    run = dag.test(run_conf=json.loads(sys.argv[2]))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print("RESULT " + json.dumps({"state": str(run.state), "run_id": run.run_id, "tasks": states}))
""")


def test_offline_retrain_on_postgres(postgres, pg_mlflow, serving_server, tmp_path):
    import psycopg2

    home = tmp_path / "airflow-home"
    home.mkdir()
    sql_conn = postgres["url"]("airflow")
    mlflow_host, mlflow_port = pg_mlflow.removeprefix("http://").split(":")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__DATABASE__"))}
    env.update({
        "TF_USE_LEGACY_KERAS": "1",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_conn,
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "dags"), env.get("PYTHONPATH", "")]),
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({"conn_type": "http", "host": mlflow_host, "port": int(mlflow_port)}),
        "AIRFLOW_CONN_TF_SERVING_DEFAULT": json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": serving_server["rest_port"],
            "extra": {"grpc_port": serving_server["grpc_port"], "models_root": str(serving_server["models_root"]),
                      "model_config_file": str(serving_server["config_file"])}}),
    })
    airflow = str(devservers.BIN / "airflow")
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]

    conf = {"model_name": MODEL, "sample_fraction": 0.05, "epochs": 1, "gate_threshold": 0.5, "batch_size": 64}
    run = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT / "dags" / "tf_offline_retrain.py"), json.dumps(conf)],
                         env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["state"] == "success", (result, run.stdout[-4000:] + run.stderr[-4000:])
    assert {t: s for t, s in result["tasks"].items() if s != "success"} == {  # no failure (and no search)
        "search_worker": "skipped", "approve_rollout": "skipped", "approve": "skipped", "conclude": "skipped",
        "watcher": "skipped"}, result

    # No SQLite anywhere: the Airflow home holds no database file ...
    assert not list(home.rglob("*.db")), list(home.rglob("*.db"))
    # ... the run and its task instances are rows in PostgreSQL ...
    with psycopg2.connect(host=postgres["host"], port=postgres["port"], user=postgres["user"], dbname="airflow") as c:
        with c.cursor() as cur:
            cur.execute("SELECT state FROM dag_run WHERE dag_id = 'tf_offline_retrain' AND run_id = %s",
                        (result["run_id"],))
            assert cur.fetchall() == [("success",)]
            cur.execute("SELECT count(*) FROM task_instance WHERE run_id = %s AND state = 'success'",
                        (result["run_id"],))
            # all but the skipped ones (the run guard; approve_rollout, approve, conclude: no approval asked;
            # search_worker: no search asked)
            assert cur.fetchone()[0] == len(result["tasks"]) - 5
    # ... and so are the MLflow registered version, its champion alias and the run's metrics.
    with psycopg2.connect(host=postgres["host"], port=postgres["port"], user=postgres["user"], dbname="mlflow") as c:
        with c.cursor() as cur:
            cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s ORDER BY alias", (MODEL,))
            assert ("champion", 1) in cur.fetchall()
            cur.execute("SELECT count(*) FROM metrics WHERE key = 'test_accuracy'")
            assert cur.fetchone()[0] >= 1

    from mlflow import MlflowClient

    champion = MlflowClient(pg_mlflow).get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["airflow.run_id"] == result["run_id"]
    import requests

    status = requests.get(f"http://127.0.0.1:{serving_server['rest_port']}/v1/models/{MODEL}", timeout=10).json()
    assert [(v["version"], v["state"]) for v in status["model_version_status"]] == [("1", "AVAILABLE")]
