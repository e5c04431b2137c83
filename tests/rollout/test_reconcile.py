"""The reconciler's pieces against the session's real ``mlflow server``: the triggerer's registry
poll (``ChampionMovedTrigger``, run in an event loop as the triggerer runs it) and the per-model
serving settings. The whole loop through a real Airflow is ``test_reconcile_e2e.py``."""

from __future__ import annotations

import asyncio
import json

import pytest


class StateStore:
    """What the triggerer gives a watcher's trigger as ``asset_state_store`` (aget/aset of JSON)."""

    def __init__(self):
        self.values = {}

    async def aget(self, key, default=None):
        return self.values.get(key, default)

    async def aset(self, key, value):
        self.values[key] = value


def served_model(tracking_uri: str, name: str, versions: int) -> None:
    from mlflow import MlflowClient

    mlf = MlflowClient(tracking_uri)
    experiment = mlf.get_experiment_by_name(name) or mlf.get_experiment(mlf.create_experiment(name))
    mlf.create_registered_model(name)
    for _ in range(versions):
        run = mlf.create_run(experiment.experiment_id)
        mlf.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)


def next_event(trigger, store, timeout_s: float):
    """The trigger's next event within ``timeout_s`` (None: none); each call is a fresh run() —
    as after a triggerer restart —, sharing ``store``."""
    trigger.asset_state_store = store

    async def first():
        agen = trigger.run()
        try:
            return (await asyncio.wait_for(agen.__anext__(), timeout_s)).payload
        except TimeoutError:
            return None
        finally:
            await agen.aclose()

    return asyncio.run(first())


def test_the_registry_poll_fires_once_per_difference(mlflow_server, airflow_connections):
    from mlflow import MlflowClient

    from tfmlops import registry
    from tfmlops_airflow.triggers import ChampionMovedTrigger

    mlf = MlflowClient(mlflow_server)
    served_model(mlflow_server, "polled", 2)
    served_model(mlflow_server, "never_served", 1)  # a champion nobody deployed is not the reconciler's
    mlf.set_registered_model_alias("never_served", "champion", "1")
    mlf.set_registered_model_tag("polled", registry.MODEL_SERVED_TAG, "1")
    mlf.set_registered_model_alias("polled", "champion", "2")

    trigger, store = ChampionMovedTrigger(poll_s=0.2), StateStore()
    classpath, kwargs = trigger.serialize()
    assert ChampionMovedTrigger(**kwargs).serialize() == (classpath, kwargs)
    assert classpath == "tfmlops_airflow.triggers.registry.ChampionMovedTrigger"

    event = next_event(trigger, store, 20)
    assert event == {"model": "polled", "champion": 2, "served": 1, "source": "registry poll"}
    # the same difference is not fired again, not even by a restarted trigger (the state store)
    assert next_event(ChampionMovedTrigger(poll_s=0.2), store, 2) is None
    # served as wanted: nothing; moved again: fired again
    mlf.set_registered_model_tag("polled", registry.MODEL_SERVED_TAG, "2")
    assert next_event(ChampionMovedTrigger(poll_s=0.2), store, 1.5) is None
    assert "polled" not in json.loads(store.values["fired"])
    mlf.set_registered_model_alias("polled", "champion", "1")
    assert next_event(ChampionMovedTrigger(poll_s=0.2), store, 20)["champion"] == 1
    # a difference already fired is fired again after refire_s (a lost reconcile run)
    assert next_event(ChampionMovedTrigger(poll_s=0.2, refire_s=0), store, 20)["champion"] == 1
    # explicitly named models are watched whether served or not
    assert next_event(ChampionMovedTrigger(poll_s=0.2, models=["never_served"]), StateStore(), 20) == {
        "model": "never_served", "champion": 1, "served": None, "source": "registry poll"}


def test_a_registry_that_does_not_answer_is_polled_again(monkeypatch):
    from tfmlops_airflow.triggers import ChampionMovedTrigger

    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DOWN", json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": 9}))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert next_event(ChampionMovedTrigger("mlflow_down", poll_s=0.2), StateStore(), 3) is None


def test_serving_settings_come_from_the_models_variable(monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from tfmlops_airflow.operators.reconcile import serving_settings

    defaults = serving_settings("plain")
    assert (defaults["strategy"], defaults["targets"]) == ("replace", ["tf_serving_default"])
    monkeypatch.setenv("AIRFLOW_VAR_TFMLOPS_SERVING_CHURN", json.dumps({"strategy": "canary", "keep": 3}))
    churn = serving_settings("churn")
    assert (churn["strategy"], churn["keep"], churn["targets"]) == ("canary", 3, ["tf_serving_default"])
    monkeypatch.setenv("AIRFLOW_VAR_TFMLOPS_SERVING_BAD", json.dumps({"stratgy": "canary"}))
    with pytest.raises(AirflowFailException, match=r"fields \['stratgy'\] are not known to tf_serving_rollout's form"):
        serving_settings("bad")
    monkeypatch.setenv("AIRFLOW_VAR_TFMLOPS_SERVING_LIST", "[1, 2]")
    with pytest.raises(AirflowFailException, match="must be a JSON object"):
        serving_settings("list")


def test_served_by_follows_the_stable_label_where_the_config_has_one(zoo, serving_server):
    """What clients get: the ``stable`` label's version after a canary, else the highest AVAILABLE."""
    from tfmlops.deploy.endpoint import Endpoint
    from tfmlops.deploy.model_config import apply_config, read_config, with_versions
    from tfmlops.deploy.publish import publish_version
    from tfmlops.deploy.reconcile import compare, served_by
    from tfmlops.deploy.status import wait_available

    model = "labelled"
    ep = Endpoint(name="local", rest_port=serving_server["rest_port"], grpc_port=serving_server["grpc_port"],
                  models_root=str(serving_server["models_root"]), model_config_file=str(serving_server["config_file"]))
    for version, name in ((1, "v1"), (2, "v2")):
        publish_version(zoo.path[name], ep.models_root, model, version)
    base = ep.base_path(model)
    try:
        apply_config(ep, with_versions(read_config(ep), model, base, [1, 2], {"stable": 1}))
        for version in (1, 2):
            wait_available(ep.client, model, version, 120, "labelled")
        assert served_by(ep, model) == 1
        assert compare(model, 1, [ep]) == {} and compare(model, 2, [ep]) == {"local": 1}
        apply_config(ep, with_versions(read_config(ep), model, base, [1, 2], {}))
        assert served_by(ep, model) == 2
        assert served_by(ep, "not_served_here") is None
    finally:
        ep.close()


def test_the_webhook_is_registered_once_and_updated_in_place(mlflow_server):
    from mlflow import MlflowClient

    from tfmlops.registry import CHAMPION_WEBHOOK_EVENTS, ensure_webhook

    first = ensure_webhook(mlflow_server, "idempotent", "http://127.0.0.1:9/a", "s1")
    assert ensure_webhook(mlflow_server, "idempotent", "http://127.0.0.1:9/b", "s2") == first
    (hook,) = [w for w in MlflowClient(mlflow_server).list_webhooks() if w.name == "idempotent"]
    assert hook.url == "http://127.0.0.1:9/b" and str(hook.status).endswith("ACTIVE")
    assert sorted(f"{e.entity}.{e.action}" for e in hook.events) == sorted(CHAMPION_WEBHOOK_EVENTS)
