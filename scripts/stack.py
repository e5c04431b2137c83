"""The embedded default stack: ``up`` | ``run`` | ``loop`` | ``stop`` | ``status`` (driven by ``make``).

Everything lives in the project: ``var/airflow`` (AIRFLOW_HOME, SQLite), ``var/mlflow`` (MLflow
SQLite backend + artifacts), ``var/serving`` (model versions + ModelServerConfig file),
``var/run`` (PIDs and logs), ``var/prometheus`` (its config and data). All servers listen on
127.0.0.1 only. Ports can be moved with the environment variables AIRFLOW_PORT, MLFLOW_PORT,
SERVING_REST_PORT, SERVING_GRPC_PORT and PROMETHEUS_PORT.

The model server exports TF Serving's metrics (``docker/serving/monitoring.config``, as in the
production stack); when Debian's ``prometheus`` is installed, a Prometheus scrapes it with the
production stack's rules (``docker/prometheus/rules.yml``) and Airflow gets the connection
``prometheus_default`` to it; without it, tf_model_monitor scrapes the server itself.

When Debian's ``haproxy`` is installed, a second model server (the ``canary`` replica group,
``var/serving/canary.models.config``) and an HAProxy traffic router in front of both
(``var/router``) run too: clients use the router's REST and gRPC addresses, and
``tf_serving_rollout`` with ``strategy=gray`` shifts live traffic to the canary group step by step
(connection ``tf_serving_router``).

``run`` brings the stack up (reusing what already runs), runs ``tf_offline_retrain`` once through
the scheduler and prints where to look. ``loop`` (after ``run``) writes a drifted data partition
with ``tf_data_simulator``, follows the ``tf_online_update`` run the scheduler creates for it,
then ``tf_model_monitor``. ``stop`` stops every service and its workers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path

import requests

import devservers

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
RUN = VAR / "run"
AIRFLOW_HOME = VAR / "airflow"
SERVING = VAR / "serving"
CONFIG_FILE = SERVING / "models.config"
MONITORING_CONFIG = ROOT / "docker" / "serving" / "monitoring.config"
PROMETHEUS = VAR / "prometheus"
MODELS_ROOT = SERVING / "models"
REQUEST_LOGS = SERVING / "request-logs"  # <model>/requests-*.tfrecord (tf_feedback_join reads them)
CANARY_CONFIG_FILE = SERVING / "canary.models.config"
ROUTER = VAR / "router"
# the router's request mirror: <group>/requests-*.tfrecord (PredictionLog), whatever the replicas are
ROUTER_REQUEST_LOGS = VAR / "request-logs" / "router"
MIRROR_RATE = float(os.environ.get("TFMLOPS_MIRROR_RATE", "0.1"))
DAG_ID = "tf_offline_retrain"
USER = "admin"

PORTS = {name: int(os.environ.get(var, default)) for name, var, default in (
    ("airflow", "AIRFLOW_PORT", 8080), ("mlflow", "MLFLOW_PORT", 5000),
    ("rest", "SERVING_REST_PORT", 8501), ("grpc", "SERVING_GRPC_PORT", 8500), ("prometheus", "PROMETHEUS_PORT", 9090),
    ("canary_rest", "CANARY_REST_PORT", 8511), ("canary_grpc", "CANARY_GRPC_PORT", 8510),
    ("router_rest", "ROUTER_REST_PORT", 8601), ("router_grpc", "ROUTER_GRPC_PORT", 8600),
    ("router_metrics", "ROUTER_METRICS_PORT", 8405), ("mirror_sink", "MIRROR_SINK_PORT", 8650))}
AIRFLOW_URL = f"http://127.0.0.1:{PORTS['airflow']}"
MLFLOW_URL = f"http://127.0.0.1:{PORTS['mlflow']}"
REST_URL = f"http://127.0.0.1:{PORTS['rest']}"
PROMETHEUS_URL = f"http://127.0.0.1:{PORTS['prometheus']}"
AIRFLOW_SERVICES = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
ALL_SERVICES = ("mlflow", "tf-serving-local", "tf-serving-canary", "mirror-sink", "router", "prometheus",
                *AIRFLOW_SERVICES)


PASSWORDS_FILE = AIRFLOW_HOME / "simple_auth_manager_passwords.json.generated"


def secret_file(path: Path, make) -> str:
    """A secret kept in ``path``, readable by the owner only (0600), created with ``make()``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
    path.chmod(0o600)  # also a file an earlier version left world-readable
    return path.read_text().strip()


def airflow_env() -> dict[str, str]:
    # every component must sign/verify task tokens with the same key
    jwt_secret = secret_file(AIRFLOW_HOME / "jwt_secret", lambda: secrets.token_urlsafe(32))
    # the UI password, generated here (not by Airflow, which writes its file world-readable)
    secret_file(PASSWORDS_FILE, lambda: json.dumps({USER: secrets.token_urlsafe(12)}))
    return {
        "TF_USE_LEGACY_KERAS": "1",
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",  # registered models are data, never unpickled
        # the packages a trigger form may name a model module from (tfmlops.modelspec)
        "TFMLOPS_MODEL_PACKAGES": os.environ.get("TFMLOPS_MODEL_PACKAGES", "tfmlops_examples,models"),
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{AIRFLOW_URL}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(PASSWORDS_FILE),
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
        # MLflow's registry webhooks are verified with it (plugins/tfmlops_airflow/webhooks.py)
        "AIRFLOW__TFMLOPS__MLFLOW_WEBHOOK_SECRET": webhook_secret(),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(PORTS["airflow"]),
        "AIRFLOW__API__BASE_URL": AIRFLOW_URL,  # links in approvals and notifications
        # one user (the simple auth manager's admin): the one who triggers a rollout may approve it
        "AIRFLOW__TFMLOPS__ALLOW_SELF_APPROVAL": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": PORTS["mlflow"]}),
        "AIRFLOW_CONN_TF_SERVING_DEFAULT": json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": PORTS["rest"],
            "extra": {"grpc_port": PORTS["grpc"], "models_root": str(MODELS_ROOT),
                      "model_config_file": str(CONFIG_FILE), "request_log_prefix": str(REQUEST_LOGS),
                      "request_log_sampling_rate": 0.1}}),
        "MLFLOW_TRACKING_URI": MLFLOW_URL,
        **(router_connections() if router_available() else {}),
        **({"AIRFLOW_CONN_PROMETHEUS_DEFAULT": json.dumps({"conn_type": "http", "host": "127.0.0.1",
                                                          "port": PORTS["prometheus"]})}
           if devservers.prometheus_binary() else {}),
    }


def router_available() -> bool:
    return devservers.shutil.which("haproxy") is not None


def router_config():
    from tfmlops.deploy.router import Replica, RouterConfig

    return RouterConfig(
        [Replica("tf_serving_default", "stable", "127.0.0.1", PORTS["rest"], PORTS["grpc"]),
         Replica("tf_serving_canary", "canary", "127.0.0.1", PORTS["canary_rest"], PORTS["canary_grpc"])],
        rest_port=PORTS["router_rest"], grpc_port=PORTS["router_grpc"], metrics_port=PORTS["router_metrics"],
        admin_socket=str(ROUTER / "haproxy.sock"),
        mirror_rate=MIRROR_RATE, mirror_sink=f"http://127.0.0.1:{PORTS['mirror_sink']}/v1/mirror")


def router_connections() -> dict[str, str]:
    """The canary replica (same models root, its own config file) and the router in front of both."""
    return {
        "AIRFLOW_CONN_TF_SERVING_CANARY": json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": PORTS["canary_rest"],
            "extra": {"grpc_port": PORTS["canary_grpc"], "models_root": str(MODELS_ROOT),
                      "model_config_file": str(CANARY_CONFIG_FILE), "request_log_prefix": str(REQUEST_LOGS),
                      "request_log_sampling_rate": 0.1}}),
        "AIRFLOW_CONN_TF_SERVING_ROUTER": json.dumps({
            "conn_type": "generic", "host": "127.0.0.1", "port": PORTS["router_rest"],
            "extra": {"grpc_port": PORTS["router_grpc"], "admin_socket": str(ROUTER / "haproxy.sock"),
                      "stable": ["tf_serving_default"], "canary": ["tf_serving_canary"],
                      "mirror_sink": f"http://127.0.0.1:{PORTS['mirror_sink']}"}}),
    }


def metrics_path() -> str:
    """The path the model server exports its metrics at (``path`` of the monitoring config)."""
    found = re.search(r'^\s*path:\s*"([^"]+)"', MONITORING_CONFIG.read_text(), re.M)
    return found.group(1) if found else "/monitoring/prometheus/metrics"


def prometheus_argv() -> list[str] | None:
    """Prometheus scraping the model server with the production stack's rules (its config written
    under var/prometheus); None when not installed."""
    if devservers.prometheus_binary() is None:
        return None
    replicas = [f"127.0.0.1:{PORTS['rest']}"] + ([f"127.0.0.1:{PORTS['canary_rest']}"] if router_available() else [])
    config = devservers.prometheus_config(PROMETHEUS / "prometheus.yml", replicas,
                                          metrics_path(), "15s", (ROOT / "docker" / "prometheus" / "rules.yml",))
    return devservers.prometheus_argv(config, PROMETHEUS / "data", PORTS["prometheus"])


def _start(name: str, argv: list[str], env: dict | None = None, supervise: bool = False) -> None:
    pid, started = devservers.start(name, argv, RUN, env=env, cwd=ROOT, supervise=supervise)
    print(f"  {name:<22} {'started' if started else 'already running'} (pid {pid}, log var/run/{name}.log)")


def webhook_secret() -> str:
    return secret_file(AIRFLOW_HOME / "mlflow_webhook_secret", lambda: secrets.token_urlsafe(32))


WEBHOOK_URL = f"{AIRFLOW_URL}/tfmlops/webhooks/mlflow"


def register_webhook() -> None:
    """MLflow's champion-alias webhooks to Airflow's receiver (idempotent); a failure is reported:
    the reconciler's registry poll works without them, a few seconds later."""
    from tfmlops.registry import ensure_webhook

    try:
        ensure_webhook(MLFLOW_URL, "tfmlops-serving-reconciler", WEBHOOK_URL, webhook_secret())
        print(f"  mlflow webhook         champion alias events -> {WEBHOOK_URL}")
    except Exception as exc:  # noqa: BLE001 - say it and go on: polling still reconciles
        print(f"  mlflow webhook         not registered ({exc}); the registry poll still reconciles")


def up() -> None:
    print("Starting the embedded default stack:")
    from cryptography.fernet import Fernet

    webhook_key = secret_file(VAR / "mlflow" / "webhook_encryption_key", lambda: Fernet.generate_key().decode())
    _start("mlflow", devservers.mlflow_server_argv(VAR / "mlflow", PORTS["mlflow"]),
           env=devservers.mlflow_server_env(webhook_key))
    # supervised: restarted with back-off when it dies (make status shows the restarts)
    _start("tf-serving-local", [*devservers.serving_argv(CONFIG_FILE, PORTS["rest"], PORTS["grpc"]),
                                f"--monitoring_config_file={MONITORING_CONFIG}"],
           env={"TF_USE_LEGACY_KERAS": "1"}, supervise=True)
    if router_available():  # the canary replica group and the router in front of both groups
        _start("tf-serving-canary", [*devservers.serving_argv(CANARY_CONFIG_FILE, PORTS["canary_rest"],
                                                              PORTS["canary_grpc"]),
                                     f"--monitoring_config_file={MONITORING_CONFIG}"],
               env={"TF_USE_LEGACY_KERAS": "1"}, supervise=True)
        ROUTER.mkdir(parents=True, exist_ok=True)
        # the sink first: the router's mirror posts to it (records are dropped, counted, while it is down)
        _start("mirror-sink", [str(devservers.BIN / "python"), "-m", "tfmlops.deploy.mirror_sink",
                               f"--port={PORTS['mirror_sink']}", f"--log_prefix={ROUTER_REQUEST_LOGS}"],
               env={"TF_USE_LEGACY_KERAS": "1"}, supervise=True)
        (ROUTER / "haproxy.cfg").write_text(router_config().render())
        _start("router", ["haproxy", "-db", "-f", str(ROUTER / "haproxy.cfg")], supervise=True)
    else:
        print("  router                 not installed (apt-get install haproxy): no canary replica, no gray release")
    prometheus = prometheus_argv()
    if prometheus:
        _start("prometheus", prometheus)
    else:
        print("  prometheus             not installed (apt-get install prometheus): tf_model_monitor scrapes the "
              "model server's metrics itself")
    env = airflow_env()
    airflow = str(devservers.BIN / "airflow")
    if not any(devservers.running_pid(name, RUN) for name in AIRFLOW_SERVICES):
        print("  airflow db migrate, pools ...")
        for step in (["db", "migrate"],
                     ["pools", "set", "--include-deferred", "tf_serving_rollout", "1",
                      "Serializes TF Serving rollouts of a model (an approval waiting holds it)"]):
            devservers.subprocess.run([airflow, *step], env={**os.environ, **env}, check=True,
                                      stdout=devservers.subprocess.DEVNULL)
    _start("airflow-api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", str(PORTS["airflow"])], env)
    # no log server: it binds every interface (port 8793) and is only needed when workers run on
    # other machines; here the API server reads the task logs from var/airflow/logs itself
    _start("airflow-scheduler", [airflow, "scheduler", "--skip-serve-logs"], env)
    _start("airflow-dag-processor", [airflow, "dag-processor"], env)
    # runs the registry poll of tf_serving_reconcile (an asset watcher's trigger)
    _start("airflow-triggerer", [airflow, "triggerer", "--skip-serve-logs"], env)
    devservers.wait_http(f"{MLFLOW_URL}/health", 120, "mlflow", RUN)
    devservers.wait_http(f"{REST_URL}/v1/models/_", 120, "tf-serving-local", RUN, any_status=True)
    if prometheus:
        devservers.wait_http(f"{PROMETHEUS_URL}/-/ready", 60, "prometheus", RUN)
    devservers.wait_http(f"{AIRFLOW_URL}/api/v2/monitor/health", 180, "airflow-api-server", RUN)
    register_webhook()
    print("Stack is up.")


class AirflowAPI:
    """Just what ``run`` (and the production stack's test) needs of Airflow's REST API (v2), with the
    simple auth manager's token; by default the embedded stack's."""

    def __init__(self, url: str = AIRFLOW_URL, user: str = USER, password_: str | None = None):
        self.url = url
        self.session = requests.Session()
        token = self.session.post(f"{url}/auth/token", json={"username": user, "password": password_ or password()},
                                  timeout=30)
        token.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = self.session.request(method, f"{self.url}/api/v2{path}", timeout=60, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"Airflow API {method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()


def password() -> str:
    return json.loads(PASSWORDS_FILE.read_text())[USER]


def wait_for_dag(api: AirflowAPI, dag_id: str, unpause: bool = False) -> dict:
    deadline = time.monotonic() + 180
    while True:  # the dag-processor parses dags/ shortly after it starts
        try:
            dag = api.call("GET", f"/dags/{dag_id}")
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{dag_id} did not appear in Airflow; "
                                   "see var/run/airflow-dag-processor.log") from None
            time.sleep(2)
    if unpause and dag["is_paused"]:
        api.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    return dag


def trigger(api: AirflowAPI, dag_id: str, conf: dict) -> str:
    run_id = api.call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})["dag_run_id"]
    print(f"Triggered {dag_id} run {run_id}; following it (Airflow UI: {AIRFLOW_URL}/dags/{dag_id}) ...")
    return run_id


def follow(api: AirflowAPI, dag_id: str, run_id: str, timeout_s: float) -> dict:
    """Print each task's state changes until the run ends."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tis = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        for ti in sorted(tis, key=lambda t: t.get("start_date") or "9"):
            if ti["state"] and seen.get(ti["task_id"]) != ti["state"]:
                seen[ti["task_id"]] = ti["state"]
                print(f"  {ti['task_id']:<16} {ti['state']}")
        state = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
        if state in ("success", "failed"):
            return {"run_id": run_id, "state": state, "tasks": seen}
        time.sleep(3)
    raise TimeoutError(f"{dag_id} run {run_id} did not finish within {timeout_s:.0f} s")


def start_run(api: AirflowAPI, dag_id: str, conf: dict) -> str:
    """Unpause the DAG if needed and return the run to follow. Unpausing a time-scheduled DAG
    makes the scheduler create the run of the latest interval (catchup=False): without a conf,
    follow that one rather than queueing a second run behind it."""
    dag = wait_for_dag(api, dag_id)
    if dag["is_paused"]:
        api.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        deadline = time.monotonic() + (30 if dag.get("timetable_summary") and not conf else 0)
        while time.monotonic() < deadline:
            active = api.call("GET", f"/dags/{dag_id}/dagRuns", params={"state": ["queued", "running"]})["dag_runs"]
            if active:
                print(f"Following the scheduled {dag_id} run {active[0]['dag_run_id']} "
                      f"(Airflow UI: {AIRFLOW_URL}/dags/{dag_id}) ...")
                return active[0]["dag_run_id"]
            time.sleep(2)
    return trigger(api, dag_id, conf)


def run_dag(conf: dict, timeout_s: float) -> dict:
    api = AirflowAPI()
    return follow(api, DAG_ID, start_run(api, DAG_ID, conf), timeout_s)


def loop(conf: dict, timeout_s: float) -> int:
    """The monitoring loop through the scheduler: a (drifted) partition from tf_data_simulator →
    the tf_online_update run the scheduler creates for its partition key → tf_model_monitor, all
    on their default params (model ``mnist_mlp``, partitions under ``var/partitions``)."""
    from mlflow import MlflowClient

    model = "mnist_mlp"  # the DAGs' default model: the scheduler's partition runs use their defaults
    mlf = MlflowClient(MLFLOW_URL)
    try:
        parent = mlf.get_model_version_by_alias(model, "champion").version
    except Exception:  # noqa: BLE001 - no registered model or no alias yet
        print(f"No champion of {model} yet: run `make run` first.")
        return 1
    api = AirflowAPI()
    wait_for_dag(api, "tf_online_update", unpause=True)  # its runs are created by the scheduler
    sim_conf = {"drift": "rotation", "amount": 0.5, "size": 1000, **conf}  # --conf: tf_data_simulator's params

    def partitioned_runs() -> dict[str, str]:
        runs = api.call("GET", "/dags/tf_online_update/dagRuns", params={"limit": 100})["dag_runs"]
        return {r["dag_run_id"]: r["partition_key"] for r in runs if r.get("partition_key")}

    known = partitioned_runs()
    sim = follow(api, "tf_data_simulator", start_run(api, "tf_data_simulator", sim_conf), timeout_s)
    if sim["state"] != "success":
        return 1
    print("Waiting for the scheduler to start tf_online_update for the new partition ...")
    deadline = time.monotonic() + 120
    while not (new := {r: k for r, k in partitioned_runs().items() if r not in known}):
        if time.monotonic() > deadline:
            raise TimeoutError("no tf_online_update run for the new partition; see var/run/airflow-scheduler.log")
        time.sleep(3)
    run_id, key = next(iter(new.items()))
    print(f"Following tf_online_update run {run_id} (partition key {key}) ...")
    update = follow(api, "tf_online_update", run_id, timeout_s)
    champion = mlf.get_model_version_by_alias(model, "champion").version
    print(f"Online update {update['state']}: champion {parent} → {champion}")
    monitor = follow(api, "tf_model_monitor", start_run(api, "tf_model_monitor", {}), timeout_s)
    print(f"Monitoring {monitor['state']}: MLflow experiment {model}-monitoring ({MLFLOW_URL}); a retrain was "
          f"{'triggered' if monitor['tasks'].get('trigger_retrain') == 'success' else 'not needed'}")
    return 0 if update["state"] == monitor["state"] == "success" else 1


def summary(model_name: str, outcome: dict) -> int:
    from mlflow import MlflowClient

    mlf = MlflowClient(MLFLOW_URL)
    try:
        champion = mlf.get_model_version_by_alias(model_name, "champion")
    except Exception:  # noqa: BLE001 - no registered model or no alias yet
        champion = None
    sample = SERVING / "sample_request.json"
    if champion is not None and not sample.exists():
        from tfmlops.data import load_mnist

        x = load_mnist().x_test[:3].reshape(3, -1) / 255.0
        sample.write_text(json.dumps({"instances": x.round(4).tolist()}))
    print()
    print(f"Run {outcome['run_id']}: {outcome['state']}")
    print(f"  Airflow UI   {AIRFLOW_URL}  (user {USER}, password {password()}; "
          f"also in var/airflow/simple_auth_manager_passwords.json.generated)")
    print(f"  MLflow UI    {MLFLOW_URL}/#/models/{model_name}")
    if champion is None:
        print(f"  No champion version of {model_name} yet: see the task logs in the Airflow UI.")
        return 1
    accuracy = champion.tags.get("test_accuracy", "?")
    print(f"  Registered   {model_name} version {champion.version} (alias champion, test accuracy {accuracy})")
    print(f"  Served       {REST_URL}/v1/models/{model_name}  (gRPC on 127.0.0.1:{PORTS['grpc']})")
    if devservers.running_pid("router", RUN):
        print(f"  Router       http://127.0.0.1:{PORTS['router_rest']}/v1/models/{model_name}  (gRPC on "
              f"127.0.0.1:{PORTS['router_grpc']}; clients use these: tf_serving_rollout strategy=gray shifts "
              "their traffic)")
    if devservers.running_pid("mirror-sink", RUN):
        print(f"  Mirror       {MIRROR_RATE:.0%} of the router's requests -> {ROUTER_REQUEST_LOGS}/<group>/ "
              f"(PredictionLog; router http://127.0.0.1:{PORTS['router_metrics']}/mirror/stats, "
              f"sink http://127.0.0.1:{PORTS['mirror_sink']}/v1/mirror/stats)")
    scraped_by = f"  (Prometheus {PROMETHEUS_URL})" if devservers.running_pid("prometheus", RUN) else ""
    print(f"  Metrics      {REST_URL}{metrics_path()}{scraped_by}")
    print("  Predict:")
    print(f"    curl -s -X POST {REST_URL}/v1/models/{model_name}:predict -d @{sample.relative_to(ROOT)}")
    return 0 if outcome["state"] == "success" else 1


def stop() -> None:
    for name in reversed(ALL_SERVICES):
        if devservers.stop(name, RUN):
            print(f"  stopped {name}")


def status() -> None:
    for name in ALL_SERVICES:
        pid = devservers.running_pid(name, RUN)
        line = f"  {name:<22} {'running (pid %d)' % pid if pid else 'stopped'}"
        restarts = devservers.restarts(name, RUN)
        if restarts:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(restarts["last_restart"]))
            line += f", restarted {restarts['count']}x (last exit {restarts['last_exit']}, at {when})"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "run", "loop", "stop", "status"))
    parser.add_argument("--conf", default="{}", help="JSON conf for the DAG run (its Params), e.g. '{\"epochs\": 3}'")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the DAG run")
    args = parser.parse_args()
    if args.command == "stop":
        stop()
    elif args.command == "status":
        status()
    else:
        up()
        conf = json.loads(args.conf)
        if args.command == "run":
            return summary(conf.get("model_name", "mnist_mlp"), run_dag(conf, args.timeout))
        if args.command == "loop":
            return loop(conf, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
