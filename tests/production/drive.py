"""The production stack's client, run inside the stack's network namespace by
test_production_stack.py (``nsenter --net=<netns> python drive.py <env file> <report.json>``):
what a user of the stack does, through its published ports only.

1. the services answer (Airflow's API server, MLflow, Prometheus, the router, both TF Serving replicas);
2. ``tf_offline_retrain`` triggered through Airflow's REST API, twice (versions 1 and 2), rolled
   onto both replicas; version 2 with its Optuna search (4 mapped worker tasks, the study in the
   PostgreSQL database ``optuna``); the task instances' hostnames say which Celery worker ran each task;
3. the champion answers on both replicas over REST and gRPC; MLflow has the versions and aliases
   and its artifacts are in the S3 bucket;
4. people in the FAB auth manager's roles (created by the admin through FAB's REST API): a viewer
   may not trigger (REST API and the DAG's Trigger form in the Airflow UI); an operator triggers
   ``tf_serving_rollout`` from its Trigger form with ``strategy=canary`` and
   ``approval=before_rollout`` typed into it; the operator's and the viewer's answers to the approval are refused
   through the REST API and not taken in the Airflow UI (headless Chromium, FAB's login page), an
   approver's, clicked in the UI, is taken; the canary then takes version 1 back onto both replicas, one at a time,
   while clients send REST and gRPC requests to both: every request must succeed.

Every phase's time and what it saw go to the report; a failed check raises with the numbers.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "scripts"), str(Path(__file__).resolve().parents[1])]
from rollout.load import ClientThreads  # noqa: E402  (tests/ and scripts/ are not packages on the path)
from stack import AirflowAPI  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = "http://127.0.0.1:8080"
MLFLOW = "http://127.0.0.1:5000"
MODEL = "stack_mnist"
REPLICAS = {"tf-serving-0": (8501, 8500), "tf-serving-1": (8511, 8510)}
TARGETS = ["tf_serving_default", "tf_serving_replica_1"]
TRAIN = {"model_name": MODEL, "epochs": 1, "sample_fraction": 0.1, "batch_size": 64, "gate_threshold": 0.5,
         "tolerance": 1.0, "targets": TARGETS, "strategy": "replace"}
# version 2: the retrain's Optuna search first (issue 26), its study in the stack's PostgreSQL
# database "optuna"; 4 worker tasks for 2 Celery workers of 2 slots each: both workers take some
SEARCH = {"search_trials": 6, "search_parallelism": 4}


def env_values(path: str) -> dict[str, str]:
    values = {}
    for line in Path(path).read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[key.strip()] = value.strip()
    return values


class Airflow(AirflowAPI):
    def wait_dag(self, dag_id: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.call("GET", f"/dags/{dag_id}")
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(3)

    def unpause_quietly(self, dag_id: str) -> None:
        """Unpause; the run the scheduler then creates for the latest interval (default params: a
        full training) is marked failed before it takes the workers, so only the test's runs run."""
        self.wait_dag(dag_id)
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            runs = self.call("GET", f"/dags/{dag_id}/dagRuns", params={"run_type": "scheduled"})["dag_runs"]
            for run in runs:
                if run["state"] in ("queued", "running"):
                    self.call("PATCH", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}", json={"state": "failed"})
            if runs:
                return
            time.sleep(2)

    def status(self, method: str, path: str, body: dict | None = None) -> int:
        """The HTTP status of one call (what the auth manager allows is the point, not the answer)."""
        return self.session.request(method, f"{self.url}/api/v2{path}", json=body, timeout=60).status_code

    def trigger(self, dag_id: str, conf: dict) -> str:
        return self.call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})["dag_run_id"]

    def run(self, dag_id: str, conf: dict, timeout_s: float) -> dict:
        return self.wait_run(dag_id, self.trigger(dag_id, conf), timeout_s)

    def waiting_for_approval(self, dag_id: str, run_id: str, task: str, timeout_s: float = 300) -> dict:
        """The approval task's question, once its wait is held by the triggerer."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ti = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task}")
            if ti["state"] == "deferred" and ti.get("triggerer_job"):
                return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task}/-1/hitlDetails")
            if ti["state"] in ("success", "failed", "skipped", "upstream_failed"):
                break
            time.sleep(3)
        raise AssertionError(f"{dag_id} run {run_id}: {task} did not wait for an answer: {ti}")

    def wait_run(self, dag_id: str, run_id: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                break
            time.sleep(5)
        tis = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        tasks = {ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""):
                 {"state": ti["state"], "hostname": ti.get("hostname") or ""} for ti in tis}
        if state != "success":
            raise AssertionError(f"{dag_id} run {run_id} ended {state!r} (or timed out): {tasks}")
        return {"run_id": run_id, "state": state, "tasks": tasks}


def wait_http(url: str, timeout_s: float = 120, **kwargs) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(url, timeout=10, **kwargs).status_code < 500:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer within {timeout_s:.0f}s")
        time.sleep(2)


class Load(ClientThreads):
    """REST and gRPC clients on every replica until stopped; every failure is kept."""

    def __init__(self, x: np.ndarray):
        from tfmlops.deploy.client import ServingClient

        self.x, self.ok, self.failures = x, 0, []
        self.clients = {name: ServingClient("127.0.0.1", rest, grpc, timeout=30)
                        for name, (rest, grpc) in REPLICAS.items()}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(n, api), daemon=True)
                         for n in REPLICAS for api in ("rest", "grpc")]

    def _loop(self, name: str, api: str) -> None:
        client = self.clients[name]
        while not self._stop.is_set():
            try:
                if api == "rest":
                    out = np.asarray(client.predict_rest(MODEL, self.x.tolist()))
                else:
                    out = client.predict_grpc(MODEL, {"pixels": self.x})["probabilities"]
                problem = None if out.shape == (len(self.x), 10) else f"{api} {name}: shape {out.shape}"
            except Exception as exc:  # noqa: BLE001 - every failed request counts
                problem = f"{api} {name}: {type(exc).__name__}: {str(exc)[:200]}"
            with self._lock:
                if problem:
                    self.failures.append(problem)
                else:
                    self.ok += 1
            time.sleep(0.02)


def served(version: int) -> dict:
    """Each replica's answer for ``version``: REST status, a REST and a gRPC predict."""
    from tfmlops.deploy.client import ServingClient
    from tfmlops.serving import tensors

    seen = {}
    x = np.zeros((2, 784), np.float32)
    for name, (rest, grpc) in REPLICAS.items():
        client = ServingClient("127.0.0.1", rest, grpc, timeout=30)
        states = {int(v["version"]): v["state"] for v in client.status(MODEL)["model_version_status"]}
        rest_out = np.asarray(client.predict_rest(MODEL, x.tolist()))
        resp = client.predict_grpc_response(MODEL, {"pixels": x})
        grpc_out = tensors.make_ndarray(resp.outputs["probabilities"], "probabilities")
        seen[name] = {"states": states, "grpc_version": int(resp.model_spec.version.value)}
        assert states.get(version) == "AVAILABLE", f"{name} does not serve version {version}: {states}"
        assert seen[name]["grpc_version"] == version, seen[name]
        assert rest_out.shape == grpc_out.shape == (2, 10) and np.allclose(rest_out, grpc_out, atol=1e-5), name
    return seen


def mlflow_and_s3(env: dict) -> dict:
    import boto3

    auth = ("admin", env["MLFLOW_ADMIN_PASSWORD"])
    r = requests.get(f"{MLFLOW}/api/2.0/mlflow/registered-models/get", params={"name": MODEL}, auth=auth, timeout=30)
    r.raise_for_status()
    model = r.json()["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
    s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9000", aws_access_key_id=env["S3_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["S3_SECRET_ACCESS_KEY"], region_name="us-east-1")
    bucket = env.get("MLFLOW_ARTIFACT_BUCKET", "mlflow")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {"aliases": aliases, "artifact_objects": len(keys),
            "saved_models": sum(k.endswith("saved_model.pb") for k in keys)}


def search_runs(env: dict, version: int) -> dict:
    """The search behind ``version``: its parent run (the version's lineage) and each trial's worker
    index and state (the trials' nested runs)."""
    auth = ("admin", env["MLFLOW_ADMIN_PASSWORD"])

    def get(path: str, **params) -> dict:
        r = requests.get(f"{MLFLOW}/api/2.0/mlflow/{path}", params=params, auth=auth, timeout=30)
        r.raise_for_status()
        return r.json()

    tags = {t["key"]: t["value"] for t in get("model-versions/get", name=MODEL, version=str(version))[
        "model_version"].get("tags", [])}
    parent = tags.get("search.parent_run_id", "")
    experiment = get("experiments/get-by-name", experiment_name=MODEL)["experiment"]["experiment_id"]
    r = requests.post(f"{MLFLOW}/api/2.0/mlflow/runs/search", auth=auth, timeout=30, json={
        "experiment_ids": [experiment], "filter": f"tags.mlflow.parentRunId = '{parent}'", "max_results": 100})
    r.raise_for_status()
    trials = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in r.json().get("runs", [])]
    return {"parent_run_id": parent, "best_trial": tags.get("search.best_trial"),
            "trials": [{"worker": t.get("search.worker"), "state": t.get("search.state")} for t in trials]}


def answer_until_taken(approver: Airflow, run_id: str, answer_path: str, approve: dict, timeout_s: float = 300) -> int:
    """Until the approval task has taken the answer: an answer that raced the deferring process's
    exit in Airflow costs a retry, which asks again — answered again, as a person would."""
    ti_path = f"/dags/tf_serving_rollout/dagRuns/{run_id}/taskInstances/approve_rollout"
    answers, deadline = 1, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = approver.call("GET", ti_path)["state"]
        if state == "success":
            return answers
        if state == "deferred" and approver.call("GET", f"{ti_path}/-1/hitlDetails")["response_received"] is False:
            time.sleep(5)
            if approver.status("PATCH", answer_path, approve) == 200:
                answers += 1
        time.sleep(3)
    raise AssertionError(f"the approval of {run_id} did not take the approver's answer: {state}")


def roles_people(admin: Airflow) -> dict[str, Airflow]:
    """A viewer, an operator and an approver (docker/airflow/roles.json), created by the admin
    through FAB's REST API; their API sessions."""
    import secrets

    people = {}
    for who, roles in {"viewer": ["Viewer"], "operator": ["Viewer", "ModelOperator"],
                       "approver": ["Viewer", "ModelApprover"]}.items():
        password = secrets.token_urlsafe(16)
        answer = admin.session.post(f"{AIRFLOW}/auth/fab/v1/users", timeout=60, json={
            "username": f"stack-{who}", "email": f"{who}@example.org", "first_name": who, "last_name": "Person",
            "roles": [{"name": r} for r in roles], "password": password})
        if answer.status_code not in (200, 201):
            raise AssertionError(f"creating the {who}: {answer.status_code} {answer.text[:500]}")
        people[who] = Airflow(AIRFLOW, f"stack-{who}", password)
        people[who].login = (f"stack-{who}", password)
    return people


def in_browser(script: str, person: Airflow, ui: str, name: str, *args: str) -> dict:
    """``person`` logs in through FAB's login page in headless Chromium at ``ui`` (the stack's
    ``AIRFLOW__API__BASE_URL``: FAB's login redirects there, and its session cookie is that host's)
    and does what ``web/scripts/<script>`` does; what the browser saw."""
    import shutil
    import subprocess

    out = ROOT / "var" / "test-output" / "prod-ui"
    out.mkdir(parents=True, exist_ok=True)
    result = out / f"{name}.json"
    user, password = person.login
    done = subprocess.run(
        [shutil.which("node") or "node", str(ROOT / "web" / "scripts" / script), "--airflow", ui,
         "--user", user, "--password", password, "--out", str(out), "--result", str(result), "--name", name,
         "--timeout", "30000", "--chromium", shutil.which("chromium") or "/usr/bin/chromium", *args],
        capture_output=True, text=True, timeout=300)
    if not result.exists():
        raise AssertionError(f"the browser check {name} did not run: {done.stdout[-2000:]} {done.stderr[-3000:]}")
    return json.loads(result.read_text())


def trigger_in_browser(person: Airflow, ui: str, dag_id: str, conf: dict, name: str) -> dict:
    """``person`` triggers ``dag_id`` from its page's Trigger form with ``conf`` typed into the
    form's configuration JSON (web/scripts/trigger_check.mjs)."""
    return in_browser("trigger_check.mjs", person, ui, name, "--dag", dag_id, "--conf", json.dumps(conf))


def answer_in_browser(person: Airflow, ui: str, page: str, name: str, wait_ms: int) -> dict:
    """``person`` opens the approval's page and clicks Approve with a note (web/scripts/approval_check.mjs)."""
    return in_browser("approval_check.mjs", person, ui, name, "--page", page, "--option", "Approve",
                      "--note", f"by {name}", "--answer-wait-ms", str(wait_ms))


def main(env_file: str, report_path: str) -> None:
    env = env_values(env_file)
    report: dict = {"times": {}}

    def phase(name: str, t0: float) -> None:
        report["times"][name] = round(time.monotonic() - t0, 1)
        Path(report_path).write_text(json.dumps(report, indent=1))
        print(f"[stack e2e] {name}: {report['times'][name]} s", flush=True)

    t0 = time.monotonic()
    wait_http(f"{AIRFLOW}/api/v2/monitor/health")
    wait_http(f"{MLFLOW}/health")
    wait_http("http://127.0.0.1:9090/-/ready")
    for rest, _ in [*REPLICAS.values(), (8601, 8600)]:
        wait_http(f"http://127.0.0.1:{rest}/v1/models/_")
    targets = requests.get("http://127.0.0.1:9090/api/v1/targets", timeout=30).json()["data"]["activeTargets"]
    report["prometheus_targets"] = {f"{t['scrapePool']}/{t['labels'].get('instance', '')}": t["health"]
                                    for t in targets}
    phase("services_answer", t0)

    t0 = time.monotonic()
    api = Airflow(AIRFLOW, env.get("AIRFLOW_ADMIN_USER", "admin"), env["AIRFLOW_ADMIN_PASSWORD"])
    report["pools"] = {p["name"]: p["slots"] for p in api.call("GET", "/pools")["pools"]}
    for dag_id in ("tf_offline_retrain", "tf_serving_rollout"):
        api.unpause_quietly(dag_id)
    phase("dags_ready", t0)

    t0 = time.monotonic()
    report["retrain_1"] = api.run("tf_offline_retrain", TRAIN, timeout_s=1200)
    phase("retrain_v1", t0)
    report["served_v1"] = served(1)

    t0 = time.monotonic()
    report["retrain_2"] = api.run("tf_offline_retrain", {**TRAIN, **SEARCH}, timeout_s=1200)
    phase("retrain_v2_with_search", t0)
    report["served_v2"] = served(2)
    report["mlflow_after_v2"] = mlflow_and_s3(env)
    report["search"] = search_runs(env, 2)

    t0 = time.monotonic()
    people = roles_people(api)
    phase("people_in_roles", t0)

    t0 = time.monotonic()
    rollout = {"model_name": MODEL, "version": "1", "strategy": "canary", "targets": TARGETS,
               "approval": "before_rollout", "approval_timeout_h": 1}
    report["viewer_trigger_status"] = people["viewer"].status(
        "POST", "/dags/tf_serving_rollout/dagRuns", {"logical_date": None, "conf": rollout})
    # the operator may trigger through the REST API: a conf its form would refuse gets past the
    # role check to the DAG's Params (400), without starting a run
    report["operator_rest_trigger_status"] = people["operator"].status(
        "POST", "/dags/tf_serving_rollout/dagRuns", {"logical_date": None, "conf": {**rollout, "strategy": "nope"}})
    # ... and in the Airflow UI (FAB's login, the DAG's Trigger form): the viewer's is refused, the
    # operator's starts the rollout with the settings typed into the form
    ui = env.get("AIRFLOW_BASE_URL") or "http://localhost:8080"
    report["ui_trigger"] = {who: trigger_in_browser(people[who], ui, "tf_serving_rollout", rollout, f"trigger_{who}")
                            for who in ("viewer", "operator")}
    run_id = report["ui_trigger"]["operator"].get("run_id")
    if not run_id:
        raise AssertionError(f"the operator's trigger in the UI started no run: {report['ui_trigger']['operator']}")
    runs = people["operator"].call("GET", "/dags/tf_serving_rollout/dagRuns")["dag_runs"]
    report["rollout_runs"] = {r["dag_run_id"]: {"conf": r["conf"], "run_type": r["run_type"]} for r in runs}
    report["rollout_conf"] = rollout
    question = people["operator"].waiting_for_approval("tf_serving_rollout", run_id, "approve_rollout")
    report["approval_subject"] = question["subject"]
    answer_path = f"/dags/tf_serving_rollout/dagRuns/{run_id}/taskInstances/approve_rollout/-1/hitlDetails"
    approve = {"chosen_options": ["Approve"], "params_input": {"note": "stack test"}}
    # through the REST API: the viewer's and the operator's answers are refused
    report["answer_status"] = {who: people[who].status("PATCH", answer_path, approve) for who in ("viewer", "operator")}
    # ... and in the Airflow UI (the approval's page): theirs are not taken, the approver's is
    page = f"{ui}/dags/tf_serving_rollout/runs/{run_id}/tasks/approve_rollout/required_actions?map_index=-1"
    report["ui"] = {}
    for who in ("viewer", "operator"):
        report["ui"][who] = answer_in_browser(people[who], ui, page, f"answer_{who}", wait_ms=8000)
        report["ui"][who]["pending_after"] = people["approver"].call("GET", answer_path)["response_received"] is False
    report["ui"]["approver"] = answer_in_browser(people["approver"], ui, page, "answer_approver", wait_ms=30000)
    # an answer that raced the deferring process's exit is asked again: answered again, over REST
    report["answers_given"] = answer_until_taken(people["approver"], run_id, answer_path, approve)
    report["answer"] = people["approver"].call("GET", answer_path)
    phase("approval_by_role", t0)

    t0 = time.monotonic()
    x = (np.random.default_rng(0).random((4, 784)) > 0.7).astype(np.float32)
    with Load(x) as load:
        time.sleep(3)
        report["canary"] = people["operator"].wait_run("tf_serving_rollout", run_id, timeout_s=900)
        time.sleep(3)
    report["load"] = {"ok": load.ok, "failed": len(load.failures), "failures": load.failures[:20]}
    phase("canary_v1_under_load", t0)
    report["served_after_canary"] = served(1)
    report["mlflow_after_canary"] = mlflow_and_s3(env)
    Path(report_path).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
