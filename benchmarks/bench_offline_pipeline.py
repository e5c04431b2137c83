"""The full offline pipeline on all 60k MNIST images: wall time and time per task.

Goal: <= 5 min on 2 cores. Runs ``tf_offline_retrain`` with ``dag.test()`` (one process, as the
end-to-end test does) against a real ``mlflow server`` and the local TF Serving-compatible
server, both started here on free loopback ports in a temporary folder, with the DAG's default
Params (all data, 5 epochs). Writes benchmarks/results/offline_pipeline.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # devservers: the embedded servers, started as processes
RESULTS = ROOT / "benchmarks" / "results"
GOAL_S = 300


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-offline-"))
    os.environ.update({
        "TF_USE_LEGACY_KERAS": "1", "AIRFLOW_HOME": str(work / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{work / 'airflow' / 'airflow.db'}"})
    sys.path.insert(0, str(ROOT / "plugins"))
    import devservers

    mlflow_port, rest, grpc = devservers.free_port(), devservers.free_port(), devservers.free_port()
    run_dir = work / "run"
    devservers.start("mlflow", devservers.mlflow_server_argv(work / "mlflow", mlflow_port), run_dir,
                     env=devservers.mlflow_server_env())
    devservers.start("serving", devservers.serving_argv(work / "serving" / "models.config", rest, grpc), run_dir)
    try:
        subprocess.run([str(devservers.BIN / "airflow"), "db", "migrate"], check=True, stdout=subprocess.DEVNULL)
        devservers.wait_http(f"http://127.0.0.1:{mlflow_port}/health", 120, "mlflow", run_dir)
        devservers.wait_http(f"http://127.0.0.1:{rest}/v1/models/_", 120, "serving", run_dir, any_status=True)
        os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": mlflow_port})
        os.environ["AIRFLOW_CONN_TF_SERVING_DEFAULT"] = json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": rest,
             "extra": {"grpc_port": grpc, "models_root": str(work / "serving" / "models"),
                       "model_config_file": str(work / "serving" / "models.config")}})
        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag(dag_folder=str(ROOT / "dags" / "tf_offline_retrain.py")).get_dag("tf_offline_retrain")
        start = time.perf_counter()
        run = dag.test(run_conf={"model_name": "bench_mnist"})
        wall = time.perf_counter() - start
        tasks = {ti.task_id: {"state": str(ti.state),
                              "seconds": round((ti.end_date - ti.start_date).total_seconds(), 2)}
                 for ti in sorted(run.get_task_instances(), key=lambda t: t.start_date)}
    finally:
        devservers.stop("serving", run_dir)
        devservers.stop("mlflow", run_dir)
    report = {"dataset": "mnist (60000 train / 10000 test)", "params": dag.params.dump(), "state": str(run.state),
              "wall_s": round(wall, 1), "goal_s": GOAL_S, "meets_goal": wall <= GOAL_S, "tasks": tasks,
              "cpu_count": os.cpu_count()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "offline_pipeline.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
