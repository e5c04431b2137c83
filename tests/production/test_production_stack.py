"""The production stack for real (issue 14): docker-compose.yaml with docker/compose.stand-ins.yaml
on the project's own Docker engines (scripts/prod_stack.py), two Celery workers, every service
healthy, the retraining and rollout DAGs run through Airflow's REST API on the workers against
PostgreSQL, MLflow (PostgreSQL + S3 artifacts) and both TF Serving replicas (version 2 after an
Optuna search whose worker tasks run on both workers, its study in PostgreSQL), a canary rollout
under client load with no failed request, and ``compose down -v`` leaving nothing behind.

The client side (tests/production/drive.py) runs inside the stack's network namespace. Each phase's
time goes to ``var/test-output/prod-stack.json``. Skips with the reason where no Docker engine can
be set up (not root, not Debian)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

# from nothing: ~10 min of stand-in images, ~10 of the project's, ~10 of stack and DAG runs
pytestmark = [pytest.mark.e2e, pytest.mark.stack, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[2]
ONE_SHOTS = {"config-check", "serving-init", "minio-init", "airflow-init"}


def project_objects(client, project: str) -> dict:
    label = {"label": f"com.docker.compose.project={project}"}
    return {"containers": [c.name for c in client.containers.list(all=True, filters=label)],
            "volumes": [v.name for v in client.volumes.list(filters=label)],
            "networks": [n.name for n in client.networks.list(filters=label)]}


def test_production_stack_end_to_end(docker_engine, tmp_path):
    import _prefetch
    import docker_engine as de
    import prod_stack as ps

    prefetched = _prefetch.wait()  # phases 1-2 done in the background from the suite's start
    times: dict = {f"prefetch.{k}": v for k, v in prefetched.get("times", {}).items()}
    times.update({f"prefetch.{k}": prefetched[k] for k in ("wall_s", "waited_s", "rc") if k in prefetched})
    out = ROOT / "var" / "test-output"
    out.mkdir(parents=True, exist_ok=True)
    ps.down()  # what a failed earlier run left (a run after a failure starts cleanly)
    iso = de.up(isolated=True)  # started here (then stopped at the end) unless it already ran
    try:
        info = ps.up(workers=2, times=times)
        env_file = Path(info["env_file"])

        # every service healthy (or, for the one-shot jobs, exited 0); two workers
        listed = ps.compose(env_file, iso.host, "ps", "--all", "--format", "json", capture=True).stdout
        rows = [json.loads(line) for line in listed.splitlines() if line.strip()]
        rows = rows[0] if len(rows) == 1 and isinstance(rows[0], list) else rows
        by_service: dict = {}
        for row in rows:
            by_service.setdefault(row["Service"], []).append(row)
        assert len(by_service["airflow-worker"]) == 2, by_service["airflow-worker"]
        for service, containers in by_service.items():
            for c in containers:
                if service in ONE_SHOTS:
                    assert c["State"] == "exited" and c["ExitCode"] == 0, c
                else:
                    assert c["State"] == "running" and c.get("Health", "") in ("healthy", ""), c
        unhealthy_checks = [s for s, cs in by_service.items() if s not in ONE_SHOTS and any(not c.get("Health")
                                                                                           for c in cs)]
        assert not unhealthy_checks, f"services without a healthcheck: {unhealthy_checks}"

        # the client side, inside the stack's network namespace
        report_path = tmp_path / "report.json"
        t0 = time.monotonic()
        drive = Path(__file__).with_name("drive.py")
        proc = subprocess.run(["nsenter", f"--net={info['netns']}", sys.executable, str(drive), str(env_file),
                               str(report_path)], cwd=ROOT, capture_output=True, text=True, timeout=3000)
        times["client_phases_s"] = round(time.monotonic() - t0, 1)
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        times.update({f"client.{k}_s": v for k, v in report.get("times", {}).items()})
        if proc.returncode != 0:
            logs = ps.compose(env_file, iso.host, "logs", "--tail", "40", "airflow-worker", "airflow-scheduler",
                              check=False, capture=True).stdout
            pytest.fail(f"the stack's client failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n"
                        f"--- worker/scheduler logs ---\n{logs[-8000:]}")

        # the DAG runs' tasks ran on both Celery workers (the task instances' hostnames)
        worker_hosts = {c["Name"].split("/")[-1] for c in by_service["airflow-worker"]}
        ids = {c["ID"][:12] for c in by_service["airflow-worker"]}
        hosts = {t["hostname"] for run in ("retrain_1", "retrain_2", "canary")
                 for t in report[run]["tasks"].values() if t["hostname"]}
        assert len(hosts) == 2 and hosts <= ids | worker_hosts, (hosts, ids, worker_hosts)

        # version 2's search (issue 26): its mapped worker tasks ran on both Celery workers and pulled
        # trials of one shared study there; the best trial is the served version's configuration
        workers = {k: t for k, t in report["retrain_2"]["tasks"].items() if k.startswith("search_worker[")}
        assert len(workers) == 4 and all(t["state"] == "success" for t in workers.values()), workers
        assert {t["hostname"] for t in workers.values()} == hosts, (workers, hosts)
        search = report["search"]
        trials = search["trials"]
        assert 6 <= len(trials) <= 6 + 3, search  # n_trials; workers starting at once may each add one
        assert all(t["state"] in ("complete", "pruned", "failed") for t in trials), search
        assert any(t["state"] == "complete" for t in trials), search
        assert len({workers[f"search_worker[{t['worker']}]"]["hostname"] for t in trials}) == 2, (search, workers)
        assert search["parent_run_id"] and search["best_trial"] is not None, search

        # people in roles (FAB auth manager): a viewer may not trigger, only an approver's answer counts
        assert report["viewer_trigger_status"] == 403, report["viewer_trigger_status"]
        status = report["operator_rest_trigger_status"]
        assert status == 400, status  # the operator may trigger over REST: the bad conf is what is refused
        viewer, operator = report["ui_trigger"]["viewer"], report["ui_trigger"]["operator"]  # the Trigger form
        assert viewer.get("logged_in") and viewer.get("trigger_status") == 403 and not viewer.get("run_id"), viewer
        assert "403 Forbidden" in viewer.get("dialog_text", ""), viewer  # the form says so
        assert operator.get("trigger_status") == 200 and operator.get("run_id"), operator
        # the operator's run is the only one, with the settings typed into the form
        assert report["rollout_runs"] == {operator["run_id"]: {"conf": report["rollout_conf"], "run_type": "manual"}}, (
            report["rollout_runs"])
        assert report["approval_subject"] == "Roll stack_mnist version 1 out (canary)?", report["approval_subject"]
        assert report["answer_status"] == {"viewer": 403, "operator": 403}, report["answer_status"]
        for who in ("viewer", "operator"):  # logged in through FAB's page; their click in the UI is not taken
            ui = report["ui"][who]
            assert ui.get("logged_in") and ui.get("answer_status") == 403, (who, ui)  # the click sent, refused
            assert not ui.get("clicked") and ui["pending_after"], (who, ui)
        ui = report["ui"]["approver"]  # the approver's is, with the note
        assert ui.get("answer_status") == 200 and ui.get("clicked"), ui
        assert "Response received" in ui["after"] and "from stack-approver" in ui["after"], ui
        assert "stack-approver" in json.dumps(report["answer"]), report["answer"]
        assert report["canary"]["tasks"]["approve_rollout"]["state"] == "success", report["canary"]["tasks"]

        # both replicas serve the champion; the canary rollout lost no request
        assert report["load"]["failed"] == 0 and report["load"]["ok"] > 50, report["load"]
        assert report["mlflow_after_v2"]["aliases"]["champion"] == "2"
        assert report["mlflow_after_canary"]["aliases"]["champion"] == "1"
        assert report["mlflow_after_canary"]["saved_models"] >= 2  # MLflow's artifacts are in the S3 bucket
        assert report["pools"].get("tf_serving_rollout") == 1
        assert all(h == "up" for h in report["prometheus_targets"].values()), report["prometheus_targets"]

        # Airflow's metadata and MLflow's registry are in PostgreSQL
        def sql(db: str, user: str, query: str) -> str:
            return ps.compose(env_file, iso.host, "exec", "-T", "postgres", "psql", "-U", user, "-d", db, "-tAc", query,
                              capture=True).stdout.strip()

        assert int(sql("airflow", "airflow", "select count(*) from dag_run where dag_id = 'tf_offline_retrain' "
                                             "and state = 'success'")) == 2
        assert int(sql("mlflow", "airflow", "select count(*) from model_versions where name = 'stack_mnist'")) == 2
        # the search's study is in its own database, not Airflow's
        assert int(sql("optuna", "airflow", "select count(*) from trials")) == len(trials)
        assert sql("airflow", "airflow", "select to_regclass('public.studies') is null") == "t"
    finally:
        t0 = time.monotonic()
        ps.down()
        times["compose_down_s"] = round(time.monotonic() - t0, 1)
        (out / "prod-stack.json").write_text(json.dumps(times, indent=1))
        print(f"production stack phases (s): {json.dumps(times)}")
        client = iso.client()
        try:
            left = project_objects(client, ps.PROJECT)
        finally:
            client.close()
        if iso.started or _prefetch.started(isolated=True):
            de.down(iso.dir)
        assert left == {"containers": [], "volumes": [], "networks": []}, left
