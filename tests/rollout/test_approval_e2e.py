"""People in the loop, end to end: a gray rollout with ``approval=before_promote`` through a real
Airflow (tests/rollout/airflow_stack.py: API server, scheduler, DAG processor, triggerer), the
session's real MLflow, and a real HAProxy router in front of two tf-serving-local replica groups
with users' traffic flowing through it the whole time.

One story, in order: version 2's gray release holds 25 % and stops at the approval step (its page
shows the gate figures and the live numbers) → the person who triggered it approves it: not
accepted (separation of duties), asked again → another person approves it in the real Airflow UI
(headless Chromium) with a note → it takes all traffic and becomes champion; version 3 → rejected
through the REST API → rolled back, the note on the version; version 3 again with a short timeout
→ nobody answers → rolled back; version 3 once more → champion moved in MLflow meanwhile → the
approval is withdrawn → rolled back. Then, with ``approval=before_rollout``, a replace rollout
that a person rejects, then approves, before anything is rolled out. Users never get a failed
request."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .airflow_stack import APPROVER, USER, runs, wait_for
from .load import UserClients
from .models import register
from .router_stack import needs_haproxy, router_stack, served

pytestmark = [pytest.mark.e2e, needs_haproxy]

MODEL = "gated"
DAG_ID = "tf_serving_rollout"
ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "var" / "test-output" / "approval"


@pytest.fixture(scope="module")
def gated(tmp_path_factory, zoo, airflow, mlflow_server):
    """The router stack serving ``gated`` version 1 (= registered version 1, champion), versions 2
    and 3 registered, the router and its groups as Airflow connections, users sending requests."""
    from tfmlops import registry

    with router_stack(tmp_path_factory.mktemp("gated"), zoo, model=MODEL) as stack:
        assert [register(mlflow_server, zoo, name, MODEL) for name in ("v1", "v2", "v3")] == [1, 2, 3]
        registry.set_alias(mlflow_server, MODEL, registry.CHAMPION, 1)
        registry.log_metrics(mlflow_server, registry.get_version(mlflow_server, MODEL, 2).run_id,
                             {"test_accuracy": 0.987, "test_loss": 0.042})
        api, url = airflow["api"], airflow["url"]
        for g in stack["groups"].values():  # connection id = the replica's server name in the router
            ep = g.endpoint
            api.post(f"{url}/api/v2/connections", timeout=30, json={
                "connection_id": g.name, "conn_type": "http", "host": "127.0.0.1", "port": ep.rest_port,
                "extra": json.dumps({"grpc_port": ep.grpc_port, "models_root": g.models_root,
                                     "model_config_file": g.config_file, "request_log_prefix": g.log_dir,
                                     "request_log_sampling_rate": 1.0})}).raise_for_status()
        config = stack["config"]
        api.post(f"{url}/api/v2/connections", timeout=30, json={
            "connection_id": "gated_router", "conn_type": "generic", "host": "127.0.0.1", "port": config.rest_port,
            "extra": json.dumps({"grpc_port": config.grpc_port, "admin_socket": config.admin_socket,
                                 **{group: [g.name] for group, g in stack["groups"].items()}})}).raise_for_status()
        from . import models

        allowed = {n: models.predict(zoo.path[n], zoo.holdout_x) for n in ("v1", "v2", "v3")}
        with UserClients("127.0.0.1", config.rest_port, config.grpc_port, MODEL, zoo.holdout_x, allowed) as users:
            yield {"stack": stack, "users": users}
        # the session's registry left consistent for the next tests' registry polls (this Airflow's
        # reconciler watches another model): champion = what was last served
        registry.set_alias(mlflow_server, MODEL, registry.CHAMPION, registry.served_version(mlflow_server, MODEL) or 1)
        assert users.failures == [] and users.ok > 100, (users.failures[:5], users.ok)


def share(stack) -> float:
    """The canary group's share of the requests, in %, as the router's weights say now (set by the
    tasks' own Router objects)."""
    from tfmlops.deploy.router import REST_BACKEND

    weights = {server: int(row["weight"]) for (backend, server), row in stack["router"].stats().items()
               if backend == REST_BACKEND}
    canary = weights[stack["groups"]["canary"].name]
    return round(100.0 * canary / sum(weights.values()), 1) if sum(weights.values()) else 0.0


def release(airflow, version: int, **conf) -> str:
    """Trigger tf_serving_rollout: a gray release of ``version`` that awaits approval; the run id."""
    answer = airflow["api"].post(f"{airflow['url']}/api/v2/dags/{DAG_ID}/dagRuns", timeout=30, json={
        "logical_date": None, "conf": {
            "model_name": MODEL, "version": str(version), "strategy": "gray", "router": "gated_router",
            "targets": ["stable-0", "canary-0"], "gray_steps": [25, 100], "gray_window_s": 3,
            "gray_max_p99_increase_ms": 2000, "approval": "before_promote", **conf}})
    answer.raise_for_status()
    return answer.json()["dag_run_id"]


def hitl(airflow, run_id: str, task: str = "approve") -> str:
    return f"{airflow['url']}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task}/-1/hitlDetails"


def process_ended(airflow, run_id: str, task: str) -> int:
    """How many times the scheduler has taken the end of a process of ``task`` in ``run_id`` (its
    executor's "success" event, in the scheduler's log)."""
    log = (airflow["home"] / "airflow-scheduler.log").read_text(errors="replace")
    return log.count(f"Received executor event with state success for task instance TaskInstanceKey("
                     f"dag_id='{DAG_ID}', task_id='{task}', run_id='{run_id}'")


def awaiting(airflow, run_id: str, task: str = "approve", asked: int = 1) -> dict:
    """The pending approval (of the approval task ``task``, asked for the ``asked``-th time), once
    the run waits on it and Airflow is ready for an answer: deferred, its wait held by the
    triggerer, and the process that deferred it seen ended by the scheduler — an answer before that
    races the process's exit in Airflow (the executor's "success" for a task already re-queued by the
    answer is taken as a failure and costs a retry, which asks again; a busy machine widens the
    window to tens of seconds)."""
    def pending():
        failed = [r for r in runs(airflow, DAG_ID) if r["dag_run_id"] == run_id and r["state"] == "failed"]
        assert not failed, finished(airflow, run_id)
        ti = airflow["api"].get(f"{airflow['url']}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task}",
                                timeout=30)
        if ti.status_code != 200 or ti.json()["state"] != "deferred" or not ti.json().get("triggerer_job"):
            return None
        if process_ended(airflow, run_id, task) < asked:
            return None
        detail = airflow["api"].get(hitl(airflow, run_id, task), timeout=30)
        return detail.status_code == 200 and detail.json()
    return wait_for(f"{run_id} awaiting approval", pending, 240, airflow)


def finished(airflow, run_id: str) -> dict:
    run = wait_for(f"{run_id} finished", lambda: [r for r in runs(airflow, DAG_ID) if r["dag_run_id"] == run_id
                                                 and r["state"] in ("success", "failed")], 240, airflow)[0]
    tis = airflow["api"].get(f"{airflow['url']}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances",
                             timeout=30).json()["task_instances"]
    return {"state": run["state"], "tasks": {t["task_id"]: t["state"] for t in tis}}


def answer_in_browser(airflow, page: str, option: str, note: str) -> dict:
    node, chromium = shutil.which("node"), shutil.which("chromium") or os.environ.get("CHROMIUM_PATH")
    if not node or not chromium or not (ROOT / "web" / "node_modules" / "playwright-core").is_dir():
        pytest.skip("needs node, Debian's chromium and web/node_modules (npm ci --prefix web)")
    OUT.mkdir(parents=True, exist_ok=True)
    result_file = OUT / "result.json"
    subprocess.run([node, str(ROOT / "web" / "scripts" / "approval_check.mjs"), "--airflow", airflow["url"],
                    "--user", APPROVER, "--password", airflow["approver_password"], "--page", page,
                    "--option", option,
                    "--note", note, "--out", str(OUT), "--result", str(result_file), "--chromium", chromium],
                   check=True, timeout=240, capture_output=True)
    return json.loads(result_file.read_text())


def version_tags(mlflow_server, version: int) -> dict:
    from tfmlops import registry

    return registry.get_version(mlflow_server, MODEL, version).tags


# The story's steps are tests of their own (each under the per-test timeout on a busy machine), in order.
def test_1_a_gray_release_holds_until_someone_other_than_its_trigger_approves_it(
        airflow, gated, mlflow_server, notify_sinks):
    from tfmlops import registry

    stack = gated["stack"]

    # version 2 passes 25 % and holds it: nothing promoted while the approval waits
    run = release(airflow, 2)
    detail = awaiting(airflow, run)
    assert detail["subject"] == f"Promote {MODEL} version 2 to all traffic?" and detail["options"] == [
        "Approve", "Reject"] and detail["defaults"] == ["Reject"], detail
    assert "holds **25 %**" in detail["body"] and "| test_accuracy | 0.987 |" in detail["body"], detail["body"]
    assert "| 25 % |" in detail["body"] and "Model card" in detail["body"], detail["body"]
    assert share(stack) == 25.0 and served(stack, MODEL) == {"stable": (1,), "canary": (2,)}
    assert registry.alias_version(mlflow_server, MODEL, registry.CHAMPION).version == "1"
    asked = wait_for("the approval_requested mail", lambda: [m for m in notify_sinks.mails() if m[0] == (
        f"[tfmlops] {MODEL} version 2: approval requested") and run in m[1]], 30, airflow)
    page = f"{airflow['url']}/dags/{DAG_ID}/runs/{run}/tasks/approve/required_actions?map_index=-1"
    assert page in asked[0][1]

    # ... the person who triggered it approves it: not accepted, the same question asked again
    airflow["api"].patch(hitl(airflow, run), timeout=30, json={"chosen_options": ["Approve"],
                                                               "params_input": {}}).raise_for_status()
    wait_for("the self-approval refused and the question asked again", lambda: (
        (d := airflow["api"].get(hitl(airflow, run), timeout=30).json()).get("response_received") is False
        and "Promote" in (d.get("subject") or "")), 120, airflow)
    awaiting(airflow, run, asked=2)
    assert share(stack) == 25.0 and served(stack, MODEL) == {"stable": (1,), "canary": (2,)}

    # ... another person approves it in the Airflow UI, with a note
    ui = answer_in_browser(airflow, page, "Approve", "canary numbers look fine")
    assert ui.get("clicked") and ui["enabled"] and not ui["enabled_after"], ui
    assert "Response received" in ui["after"] and f"from {APPROVER}" in ui["after"], ui["after"]
    assert "Promote gated version 2 to all traffic?" in ui["text"] and "test_accuracy" in ui["text"], ui["text"]
    outcome = finished(airflow, run)
    assert outcome["state"] == "success" and outcome["tasks"]["conclude"] == "success", outcome
    assert served(stack, MODEL) == {"stable": (2,), "canary": (2,)} and share(stack) == 0.0
    assert registry.alias_version(mlflow_server, MODEL, registry.CHAMPION).version == "2"
    decision = json.loads(version_tags(mlflow_server, 2)["serving.approval"])
    assert (decision["decision"], decision["by"], decision["note"]) == ("approved", APPROVER,
                                                                        "canary numbers look fine")
    assert registry.audit_trail(mlflow_server, MODEL)[-1]["reason"] == f"rollout, approved by {APPROVER}"



def test_2_a_rejection_rolls_back_with_the_note_on_the_version(airflow, gated, mlflow_server, notify_sinks):
    from tfmlops import registry

    stack = gated["stack"]
    run = release(airflow, 3)
    awaiting(airflow, run)
    answer = airflow["api"].patch(hitl(airflow, run), timeout=30,
                                  json={"chosen_options": ["Reject"], "params_input": {"note": "not before Monday"}})
    answer.raise_for_status()
    outcome = finished(airflow, run)
    assert outcome["state"] == "success" and outcome["tasks"]["conclude"] == "success", outcome
    assert served(stack, MODEL) == {"stable": (2,), "canary": (2,)} and share(stack) == 0.0
    assert version_tags(mlflow_server, 3)["serving.outcome"] == "rolled_back"
    assert version_tags(mlflow_server, 3)["serving.reason"] == f"rejected by {USER}: not before Monday"
    assert registry.alias_version(mlflow_server, MODEL, registry.CHAMPION).version == "2"
    wait_for("the rollback mail", lambda: [m for m in notify_sinks.mails() if m[0] == (
        f"[tfmlops] {MODEL} version 3: rolled back") and "not before Monday" in m[1]], 30, airflow)



def test_3_no_answer_in_time_rolls_back(airflow, gated, mlflow_server):
    """Nobody answers within the timeout (0.002 h = 7 s): the default, Reject."""
    stack = gated["stack"]
    run = release(airflow, 3, approval_timeout_h=0.002)
    outcome = finished(airflow, run)
    assert outcome["tasks"]["conclude"] == "success", outcome
    assert served(stack, MODEL) == {"stable": (2,), "canary": (2,)}
    assert json.loads(version_tags(mlflow_server, 3)["serving.approval"])["decision"] == "timed out"


def test_4_champion_moved_in_the_registry_withdraws_the_approval(airflow, gated, mlflow_server):
    from tfmlops import registry

    stack = gated["stack"]
    run = release(airflow, 3)
    awaiting(airflow, run)
    registry.set_alias(mlflow_server, MODEL, registry.CHAMPION, 1)
    outcome = finished(airflow, run)
    assert outcome["tasks"]["conclude"] == "success", outcome
    decision = json.loads(version_tags(mlflow_server, 3)["serving.approval"])
    assert decision["decision"] == "withdrawn" and decision["note"] == "champion moved to version 1 in the registry"
    assert version_tags(mlflow_server, 3)["serving.reason"] == "withdrawn: champion moved to version 1 in the registry"
    answered = airflow["api"].get(hitl(airflow, run), timeout=30).json()
    assert answered["response_received"] and answered["chosen_options"] == ["Reject"], answered
    assert served(stack, MODEL) == {"stable": (2,), "canary": (2,)} and share(stack) == 0.0


def test_5_a_replace_rollout_is_approved_before_anything_is_rolled_out(airflow, gated, mlflow_server):
    """``approval=before_rollout``: the run asks on ``approve_rollout`` before the rollout task;
    rejected → nothing rolled out (the rollout and what follows skipped, the decision on the
    version); approved → the replace rollout runs and version 3 becomes champion."""
    from tfmlops import registry

    stack = gated["stack"]
    before = served(stack, MODEL)
    conf = {"strategy": "replace", "approval": "before_rollout"}
    run = release(airflow, 3, **conf)
    detail = awaiting(airflow, run, "approve_rollout")
    assert detail["subject"] == f"Roll {MODEL} version 3 out (replace)?", detail
    assert "nothing of it is served yet" in detail["body"], detail["body"]
    answer = airflow["api"].patch(hitl(airflow, run, "approve_rollout"), timeout=30,
                                  json={"chosen_options": ["Reject"], "params_input": {"note": "freeze week"}})
    answer.raise_for_status()
    outcome = finished(airflow, run)
    assert outcome["state"] == "success" and outcome["tasks"]["approve_rollout"] == "success", outcome
    assert {outcome["tasks"][t] for t in ("rollout", "approve", "conclude")} == {"skipped"}, outcome
    assert served(stack, MODEL) == before
    decision = json.loads(registry.get_version(mlflow_server, MODEL, 3).tags["serving.approval"])
    assert (decision["decision"], decision["note"]) == ("rejected", "freeze week"), decision

    run = release(airflow, 3, **conf)
    awaiting(airflow, run, "approve_rollout")
    airflow["approver"].patch(hitl(airflow, run, "approve_rollout"), timeout=30,
                              json={"chosen_options": ["Approve"], "params_input": {}}).raise_for_status()
    outcome = finished(airflow, run)
    assert outcome["state"] == "success" and outcome["tasks"]["rollout"] == "success", outcome
    assert served(stack, MODEL) == {"stable": (3,), "canary": (3,)}
    assert registry.alias_version(mlflow_server, MODEL, registry.CHAMPION).version == "3"
