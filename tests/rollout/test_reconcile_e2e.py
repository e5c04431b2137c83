"""The registry as the control panel, end to end: a person moves ``@champion`` in MLflow and what
is served follows, through a real Airflow (API server with the webhook receiver, scheduler,
DAG processor, triggerer with the registry poll; LocalExecutor) on a metadata DB of its own, the
session's real ``mlflow server`` (delivering real, HMAC-signed webhooks) and the session's
TF Serving-compatible server.

One story, in order: two versions served by the project's rollout code (as a DAG serves them) →
champion moved back to version 1 in the registry → REST and gRPC answer from version 1 within
60 s, with an audit entry naming the rollout run and the reason → the webhook removed, the alias
moved again → it still follows, by polling → a forged, an altered and a replayed delivery are
refused → a rollout's own alias move starts no run at all.
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest
import requests

from .airflow_stack import RECONCILED as MODEL
from .airflow_stack import dag_ready, runs, wait_for
from .models import X_SMOKE, register

pytestmark = pytest.mark.e2e

FOLLOW_S = 60  # the bound: a moved alias is served within a minute


def settled(airflow) -> bool:
    """No reconcile or rollout run queued or running, and no asset event waiting to make one (a
    wake-up that came during a run becomes a run only when that one ends: max_active_runs=1)."""
    api, url = airflow["api"], airflow["url"]
    waiting = api.get(f"{url}/api/v2/dags/tf_serving_reconcile/assets/queuedEvents", timeout=30)
    if waiting.status_code == 200 and waiting.json().get("queued_events"):
        return False
    return all(r["state"] not in ("queued", "running") for d in ("tf_serving_reconcile", "tf_serving_rollout")
               for r in runs(airflow, d))


def rollouts(airflow) -> list[dict]:
    """This test's model's tf_serving_rollout runs (the package's Airflow also runs other models')."""
    return [r for r in runs(airflow, "tf_serving_rollout") if (r.get("conf") or {}).get("model_name") == MODEL]


def intent_events(airflow) -> list[dict]:
    """The events of the reconciler's asset, oldest first."""
    answer = airflow["api"].get(f"{airflow['url']}/api/v2/assets/events", timeout=30,
                                params={"limit": 100, "order_by": "timestamp"})
    answer.raise_for_status()
    return [e for e in answer.json()["asset_events"] if e.get("name", e.get("uri")) == "tfmlops_serving_intent"]


def signed(secret: str, body: bytes, delivery_id: str | None = None, timestamp: int | None = None) -> dict:
    from tfmlops.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

    delivery_id, timestamp = delivery_id or str(uuid.uuid4()), str(timestamp or int(time.time()))
    return {"Content-Type": "application/json", DELIVERY_HEADER: delivery_id, TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(secret, delivery_id, timestamp, body)}


def test_champion_moved_in_the_registry_is_served(airflow, zoo, mlflow_server, serving_server, notify_sinks):
    from mlflow import MlflowClient

    from tfmlops import registry
    from tfmlops.deploy.client import ServingClient
    from tfmlops.deploy.endpoint import Endpoint
    from tfmlops.deploy.reconcile import served_by
    from tfmlops.steps.rollout import rollout_registered

    mlf = MlflowClient(mlflow_server)
    ep = Endpoint(name="tf_serving_default", rest_port=serving_server["rest_port"],
                  grpc_port=serving_server["grpc_port"], models_root=str(serving_server["models_root"]),
                  model_config_file=str(serving_server["config_file"]), timeout=60)
    client = ServingClient("127.0.0.1", serving_server["rest_port"], serving_server["grpc_port"])

    def answers_from(version: int) -> bool:
        name = f"v{version}"
        try:
            rest = client.predict_rest(MODEL, X_SMOKE.tolist())
            grpc = client.predict_grpc_response(MODEL, {"x": X_SMOKE})
        except Exception:  # noqa: BLE001 - mid-rollout: not yet
            return False
        grpc_y = np.asarray(grpc.outputs["y"].float_val, np.float32).reshape(zoo.out[name].shape)
        # gRPC names the version that answered; REST's predictions are that version's
        return (served_by(ep, MODEL) == version and grpc.model_spec.version.value == version
                and np.allclose(rest, zoo.out[name], atol=1e-5) and np.allclose(grpc_y, zoo.out[name], atol=1e-5))


    webhook_id = registry.ensure_webhook(mlflow_server, "reconcile-e2e", airflow["webhook"], airflow["secret"])
    time.sleep(2)  # MLflow caches its webhook list (one per event type) for MLFLOW_WEBHOOK_CACHE_TTL (1 s here)
    # served by the project's own rollout code, as a DAG serves: 1, then 2 (champion 2, previous 1);
    # their alias moves are delivered to the receiver, which finds them served and wakes nobody
    assert [register(mlflow_server, zoo, name, MODEL) for name in ("v1", "v2")] == [1, 2]
    for version in (1, 2):
        result = rollout_registered(mlflow_server, MODEL, version, [ep], "replace", timeout_s=120,
                                    audit={"reason": "rollout", "run": f"test/serve-v{version}"})
        assert result["outcome"] == "promoted", result
    assert registry.served_version(mlflow_server, MODEL) == 2 and answers_from(2)
    wait_for("both DAGs parsed and unpaused",
             lambda: dag_ready(airflow, "tf_serving_reconcile") and dag_ready(airflow, "tf_serving_rollout"), 180,
             airflow)
    # the reconciler's first (daily) run finds serving as the registry wants it: no rollout
    wait_for("the first reconcile run", lambda: any(r["state"] == "success"
                                                    for r in runs(airflow, "tf_serving_reconcile")), 180, airflow)
    assert rollouts(airflow) == []

    # 1. a person moves champion back to version 1 in the registry (webhook + poll)
    mlf.set_registered_model_alias(MODEL, "champion", "1")
    moved = time.monotonic()
    wait_for("version 1 answering over REST and gRPC", lambda: answers_from(1), FOLLOW_S, airflow, poll_s=0.5)
    followed_s = time.monotonic() - moved
    # the rollout records the change once it is complete (old version unloaded), moments later
    entry = wait_for("the audit entry", lambda: (registry.audit_trail(mlflow_server, MODEL)[-1:] or [{}])[0].get(
        "to") == 1 and registry.audit_trail(mlflow_server, MODEL)[-1], FOLLOW_S, airflow)
    assert (entry["event"], entry["from"], entry["to"]) == ("promoted", 2, 1), entry
    assert entry["reason"].startswith("reconcile: champion moved in the registry"), entry
    assert entry["run"].startswith("tf_serving_rollout/"), entry
    assert registry.served_version(mlflow_server, MODEL) == 1
    assert len(rollouts(airflow)) == 1
    # people hear of it: the rollout's promotion notification, with the reason and the run
    mail = wait_for("the promotion mail", lambda: [m for m in notify_sinks.mails()
                                                   if m[0] == f"[tfmlops] {MODEL} version 1: promoted"], 30, airflow)
    assert "reconcile: champion moved in the registry" in mail[0][1] and entry["run"].split("/")[1] in mail[0][1]
    print(f"champion 2 -> 1 served in {followed_s:.1f}s")
    # both wake-ups reported the move: the webhook (receiver) and the registry poll (trigger)
    sources = {e["extra"].get("source") or e["extra"].get("payload", {}).get("source") for e in intent_events(airflow)}
    assert sources == {"mlflow webhook", "registry poll"}, sources

    # 2. webhooks lost (deleted): moving it to 2 still follows, by the registry poll alone
    mlf.delete_webhook(webhook_id)
    time.sleep(2)  # MLflow caches its webhook list for MLFLOW_WEBHOOK_CACHE_TTL (1 s in the tests)
    events = len(intent_events(airflow))
    before = len(rollouts(airflow))
    mlf.set_registered_model_alias(MODEL, "champion", "2")
    moved = time.monotonic()
    wait_for("version 2 answering, by polling", lambda: answers_from(2), FOLLOW_S, airflow, poll_s=0.5)
    print(f"champion 1 -> 2 served in {time.monotonic() - moved:.1f}s without webhooks")
    wait_for("the audit entry", lambda: registry.audit_trail(mlflow_server, MODEL)[-1]["to"] == 2, FOLLOW_S, airflow)
    # one rollout, woken by the poll alone (the webhook and the poll of step 1 may have made two
    # reconcile runs, a second after the first: it found nothing to do)
    assert len(rollouts(airflow)) == before + 1
    assert [e["extra"]["payload"]["source"] for e in intent_events(airflow)[events:]] == ["registry poll"]

    # 3. forged, altered and replayed deliveries are refused; a genuine one for another alias is ignored
    body = json.dumps({"entity": "model_version_alias", "action": "created",
                       "data": {"name": MODEL, "alias": "champion", "version": "1"}}).encode()
    post = lambda headers, data=body: requests.post(airflow["webhook"], data=data, headers=headers, timeout=30)  # noqa: E731
    assert post(signed("not-the-secret", body)).status_code == 401
    assert post(signed(airflow["secret"], body), data=body.replace(b'"1"', b'"2"')).status_code == 401
    assert post(signed(airflow["secret"], body, timestamp=int(time.time()) - 3600)).status_code == 401
    assert post({"Content-Type": "application/json"}).status_code == 401
    huge = b" " * (1024 * 1024)  # refused before it is read whole, signed or not
    assert post(signed(airflow["secret"], huge), data=huge).status_code == 413
    other = json.dumps({"entity": "model_version_alias", "action": "created",
                        "data": {"name": MODEL, "alias": "challenger", "version": "1"}}).encode()
    assert post(signed(airflow["secret"], other), data=other).status_code == 200
    # a genuine delivery naming the served version is acknowledged without waking anyone ...
    served_body = body.replace(b'"1"', b'"2"')
    genuine = signed(airflow["secret"], served_body)
    assert post(genuine, data=served_body).status_code == 200
    # ... and the same delivery sent again is a replay
    assert post(genuine, data=served_body).status_code == 409

    # 4. a rollout's own promotion (what the DAGs do) starts no run: neither poll nor webhook wakes anyone
    registry.ensure_webhook(mlflow_server, "reconcile-e2e", airflow["webhook"], airflow["secret"])
    wait_for("the earlier wake-ups' runs done (none queued or running, no event waiting)", lambda: settled(airflow),
             120, airflow)
    counts = {d: len(runs(airflow, d)) for d in ("tf_serving_reconcile", "tf_serving_rollout")}
    result = rollout_registered(mlflow_server, MODEL, 1, [ep], "replace", timeout_s=120,
                                audit={"reason": "rollout", "run": "test/dag-made"})
    assert result["outcome"] == "promoted" and mlf.get_model_version_by_alias(MODEL, "champion").version == "1"
    time.sleep(3 * 5 + 5)  # three polls, and the webhook's delivery
    assert {d: len(runs(airflow, d)) for d in counts} == counts
    assert answers_from(1)
    client.close()
    ep.close()
