"""The production stack's users and roles, against a real Airflow API server with the FAB auth
manager (what docker-compose.yaml configures), set up as docker/airflow/init.sh does it — the
FAB tables (here ``airflow fab-db migrate`` on a copy of the session's migrated database; the
stack's ``airflow db migrate`` creates both), the first admin, ``airflow roles import
docker/airflow/roles.json``. The admin then creates people through FAB's REST API, and each
person's token is tried on what the roles are about — triggering a DAG run and answering an
approval (a human-in-the-loop detail) — with Airflow's own authorization: 403 where the role does
not allow it, past authorization (404: no such DAG / run in this empty Airflow) where it does.
The whole flow (an operator triggers, only an approver's answer counts) runs in the production
stack's test."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest
import requests

import devservers

ROOT = Path(__file__).resolve().parents[1]
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
PEOPLE = {"vera": ["Viewer"], "otto": ["Viewer", "ModelOperator"], "alma": ["Viewer", "ModelApprover"]}

pytest.importorskip("airflow.providers.fab")


@pytest.fixture(scope="module")
def fab_airflow(tmp_path_factory, airflow_db):
    import shutil

    home = tmp_path_factory.mktemp("fab-airflow")
    shutil.copyfile(airflow_db / "airflow-migrated.db", home / "airflow.db")
    port = devservers.free_port()
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__AUTH_MANAGER": FAB,
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
           "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
           "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
           "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port)}
    (home / "dags").mkdir()
    airflow = str(devservers.BIN / "airflow")
    admin_password = secrets.token_urlsafe(16)
    for args in (["fab-db", "migrate"],
                 ["users", "create", "--username", "admin", "--password", admin_password, "--role", "Admin",
                  "--firstname", "Airflow", "--lastname", "Admin", "--email", "admin@localhost"],
                 ["roles", "import", str(ROOT / "docker" / "airflow" / "roles.json")]):
        done = subprocess.run([airflow, *args], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-3000:])
    devservers.start("airflow-api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", str(port)],
                     home, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        devservers.wait_http(f"{url}/api/v2/monitor/health", 180, "airflow-api-server", home)
        yield {"url": url, "admin": token(url, "admin", admin_password), "home": home}
    finally:
        devservers.stop("airflow-api-server", home)


def token(url: str, user: str, password: str) -> dict:
    answer = requests.post(f"{url}/auth/token", json={"username": user, "password": password}, timeout=30)
    assert answer.status_code in (200, 201), (user, answer.status_code, answer.text[:300])
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def test_viewers_operators_and_approvers_may_do_what_their_role_says(fab_airflow):
    url = fab_airflow["url"]
    roles = {r["name"] for r in requests.get(f"{url}/auth/fab/v1/roles", headers=fab_airflow["admin"],
                                             timeout=30).json()["roles"]}
    assert {"Viewer", "ModelOperator", "ModelApprover"} <= roles, roles
    headers = {}
    for name, person_roles in PEOPLE.items():
        password = secrets.token_urlsafe(12)
        created = requests.post(f"{url}/auth/fab/v1/users", headers=fab_airflow["admin"], timeout=30, json={
            "username": name, "email": f"{name}@example.org", "first_name": name, "last_name": "Person",
            "roles": [{"name": r} for r in person_roles], "password": password})
        assert created.status_code in (200, 201), (name, created.status_code, created.text[:300])
        headers[name] = token(url, name, password)

    def status(person: str, method: str, path: str, body: dict | None = None) -> int:
        return requests.request(method, f"{url}/api/v2{path}", headers=headers[person], json=body, timeout=30
                                ).status_code

    trigger = ("POST", "/dags/tf_serving_rollout/dagRuns", {"logical_date": None, "conf": {}})
    answer = ("PATCH", "/dags/tf_serving_rollout/dagRuns/r1/taskInstances/approve/-1/hitlDetails",
              {"chosen_options": ["Approve"], "params_input": {}})
    read = ("GET", "/dags", None)
    seen = {person: {what: status(person, *call) for what, call in
                     (("read", read), ("trigger", trigger), ("answer", answer))} for person in PEOPLE}
    print("\n" + json.dumps(seen))
    # 403: refused by the auth manager; 404: allowed, then no such DAG / run in this empty Airflow
    assert seen == {"vera": {"read": 200, "trigger": 403, "answer": 403},
                    "otto": {"read": 200, "trigger": 404, "answer": 403},
                    "alma": {"read": 200, "trigger": 403, "answer": 404}}, seen
