"""Shadow release through the real router (HAProxy with its request mirror, the real sink) in
front of two real tf-serving-local groups, under REST + gRPC client load with a new random row per
request: the mirrored live requests are replayed to the challenger on the canary group (share 0 %)
and its answers compared with the champion's. A challenger with the champion's top-1 answers is
promoted; one with other answers is held and the canary group restored. Every client answer is the
champion's own answer to that row, and the router sends the canary group no client request."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from . import mirror_stack as ms
from .conftest import MODEL

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("haproxy") is None,
                                 reason="needs HAProxy (Debian: apt-get install haproxy; make system-deps)")]


@pytest.fixture(scope="module")
def shadow_stack(tmp_path_factory, zoo):
    with ms.mirrored_stack(tmp_path_factory.mktemp("shadow"), zoo, 0.5) as stack:
        yield stack


def _shadow(stack, zoo, name: str, version: int, **kwargs):
    from tfmlops.deploy.rollout import Candidate
    from tfmlops.deploy.shadow import ShadowThresholds, shadow_release

    groups = {g: [s.endpoint] for g, s in stack["groups"].items()}
    return shadow_release(Candidate(MODEL, version, zoo.path[name], zoo.smoke[name]), stack["router"], groups,
                          stack["sink"].url, window_s=6.0, poll_s=0.2,
                          thresholds=ShadowThresholds(min_agreement=0.99, min_compared=30), **kwargs)


def _answers(zoo, clients, names):
    """For every answer a client got: which of the versions ``names`` gives exactly that answer."""
    from .models import predict

    entries = list(clients.sent.values()) + clients.no_id
    x = np.concatenate([e["x"] for e in entries])
    y = np.concatenate([e["y"] for e in entries])
    expected = {n: predict(zoo.path[n], x) for n in names}
    match = {n: np.all(np.isclose(y, out, atol=1e-5), axis=1) for n, out in expected.items()}
    return len(entries), match


def _run(stack, zoo, name, version, tag):
    """The shadow release of ``name`` as ``version`` under client load: (result, clients, responses
    the router took from each group meanwhile)."""
    served_before = stack["router"].served()
    with ms.RecordingClients(stack["config"], tag, threads=1) as clients:
        res = _shadow(stack, zoo, name, version)
    served = {g: v - served_before[g] for g, v in stack["router"].served().items()}
    return res, clients, served


def test_a_challenger_that_agrees_is_promoted_and_clients_only_get_the_champion(shadow_stack, zoo):
    res, clients, served = _run(shadow_stack, zoo, "v2", 2, "shadow-good")
    print("\nshadow report (good challenger):", json.dumps(res.report))
    json.dumps(res.to_dict(), allow_nan=False)
    assert res.decision == "promote" and res.outcome == "promoted", res.reason
    r = res.report
    assert r["compared"] >= 30 and r["agreement"] == 1.0 and r["challenger_errors"] == 0, r
    assert r["max_abs_diff"] > 0  # v2 scales v1's logits: same top-1, other values
    assert r["router_served"]["canary"] == 0 and served["canary"] == 0, (r["router_served"], served)
    assert clients.failures == [], clients.failures[:5]
    # v1 until the stable group was rolled onto v2 at the end; never anything else
    n, match = _answers(zoo, clients, ("v1", "v2"))
    assert n > 100 and bool(np.all(match["v1"] | match["v2"])), n


def test_a_challenger_with_other_answers_is_held_and_the_canary_restored(shadow_stack, zoo):
    from tfmlops.deploy.status import serving_versions

    res, clients, served = _run(shadow_stack, zoo, "bad", 3, "shadow-bad")
    print("\nshadow report (wrong challenger):", json.dumps(res.report))
    assert res.decision == "hold" and res.outcome == "rolled_back", res.to_dict()
    assert "agreement" in res.reason, res.reason
    assert res.report["agreement"] < 0.9 and res.report["compared"] >= 30, res.report
    assert res.report["router_served"]["canary"] == 0 and served["canary"] == 0
    assert clients.failures == [], clients.failures[:5]
    n, match = _answers(zoo, clients, ("v2", "bad"))
    assert n > 100 and bool(np.all(match["v2"])), (n, int(np.sum(~match["v2"])))  # only the champion's answers
    groups = shadow_stack["groups"]
    assert {g: tuple(serving_versions(s.endpoint.client, MODEL)) for g, s in groups.items()} == \
        {"stable": (2,), "canary": (2,)}


def test_a_slow_challenger_is_held_on_its_measured_latency(shadow_stack, zoo):
    """Same answers as the champion (v2), 60 ms late on single rows: held on the replicas' p99."""
    import os

    from . import models

    path = os.path.join(zoo.root, "v2_slow_shadow")
    if "v2_slow_shadow" not in zoo.path:
        zoo.smoke["v2_slow_shadow"] = models.build(path, 1, 1.5, fault="slow")
        zoo.path["v2_slow_shadow"] = path
    res, clients, served = _run(shadow_stack, zoo, "v2_slow_shadow", 4, "shadow-slow")
    print("\nshadow report (slow challenger):", json.dumps(res.report))
    assert res.decision == "hold" and "p99" in res.reason, res.to_dict()
    assert res.report["agreement"] == 1.0 and res.report["max_abs_diff"] < 1e-4, res.report
    assert res.report["latency"]["challenger_at_shadow_client"]["p50_ms"] > 50, res.report["latency"]
    assert served["canary"] == 0 and clients.failures == [], (served, clients.failures[:5])


def test_the_airflow_step_records_the_shadow_report_in_mlflow(shadow_stack, zoo, mlflow_server):
    """``shadow_release_registered`` (what the operator runs): registered versions 1…5 of the
    model (5 = the challenger, v2's weights scaled as v3), the report as ``shadow.*`` metrics and
    ``serving/shadow_v5.json`` of its run, and the aliases moved as for any promotion."""
    from mlflow import MlflowClient

    from tfmlops import registry
    from tfmlops.steps.rollout import ShadowThresholds, shadow_release_registered

    from .models import register

    client = MlflowClient(mlflow_server)
    if client.search_registered_models(f"name = '{MODEL}'"):  # other modules (test_ab) registered it too
        client.delete_registered_model(MODEL)  # a fresh model: its numbers restart at 1
    for name in ("v1", "v2", "bad", "v2", "v3"):  # registry numbers 1..5 = the serving numbers used here
        version = register(mlflow_server, zoo, name, model=MODEL)
    assert version == 5
    registry.set_alias(mlflow_server, MODEL, registry.CHAMPION, 2)
    groups = {g: [s.endpoint] for g, s in shadow_stack["groups"].items()}
    with ms.RecordingClients(shadow_stack["config"], "shadow-mlflow", threads=1) as clients:
        result = shadow_release_registered(mlflow_server, MODEL, "5", shadow_stack["router"], groups,
                                           shadow_stack["sink"].url, window_s=4.0,
                                           thresholds=ShadowThresholds(min_compared=20))
    assert result["outcome"] == "promoted" and result["strategy"] == "shadow", result["reason"]
    assert result["aliases"] == {"champion": 5, "previous": 2} and clients.failures == []
    mlf = MlflowClient(mlflow_server)
    run_id = mlf.get_model_version(MODEL, "5").run_id
    metrics = mlf.get_run(run_id).data.metrics
    assert metrics["shadow.agreement"] == 1.0 and metrics["shadow.compared"] >= 20, metrics
    assert metrics["shadow.promote"] == 1.0 and "shadow.canary.p99_ms" in metrics, metrics
    local = mlf.download_artifacts(run_id, "serving/shadow_v5.json")
    report = json.load(open(local))
    assert report["decision"] == "promote" and report["report"]["router_served"]["canary"] == 0
    tags = mlf.get_model_version(MODEL, "5").tags
    assert (tags["serving.strategy"], tags["serving.outcome"]) == ("shadow", "promoted"), tags


def test_the_rollout_dag_runs_a_shadow_release(shadow_stack, zoo, mlflow_server, airflow_db, monkeypatch):
    """``tf_serving_rollout`` with ``strategy=shadow`` under client load, with ``dag.test()``: the
    form's shadow settings reach the release through the operator and the router connection (its
    extra names the sink); registered version 6 (v7's weights: v1's top-1) is promoted."""
    from airflow.dag_processing.dagbag import DagBag
    from mlflow import MlflowClient

    from .models import register
    from .test_rollout_dag import ROOT, states

    host, port = mlflow_server.removeprefix("http://").split(":")
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "http", "host": host,
                                                                  "port": int(port)}))
    groups = shadow_stack["groups"]
    for g in groups.values():  # connection id = the router's server name of the replica
        monkeypatch.setenv(f"AIRFLOW_CONN_{g.name.upper()}", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": g.proc.rest_port,
            "extra": {"grpc_port": g.proc.grpc_port, "models_root": g.endpoint.models_root,
                      "model_config_file": g.config_file}}))
    monkeypatch.setenv("AIRFLOW_CONN_SHADOW_ROUTER", json.dumps({"conn_type": "generic", "extra": {
        "admin_socket": shadow_stack["config"].admin_socket, "stable": [groups["stable"].name],
        "canary": [groups["canary"].name], "mirror_sink": shadow_stack["sink"].url}}))
    version = register(mlflow_server, zoo, "v7", model=MODEL)
    assert version == 6  # after the five of the step test (same registered model)
    dag = DagBag(dag_folder=str(ROOT / "dags" / "tf_serving_rollout.py")).get_dag("tf_serving_rollout")
    conf = {"model_name": MODEL, "version": "6", "strategy": "shadow", "router": "shadow_router",
            "targets": [groups["stable"].name, groups["canary"].name], "shadow_window_s": 4,
            "shadow_min_compared": 20}
    with ms.RecordingClients(shadow_stack["config"], "shadow-dag", threads=1) as clients:
        run = dag.test(run_conf=conf)
    assert str(run.state) == "success", states(run)
    assert clients.failures == [], clients.failures[:5]
    tags = MlflowClient(mlflow_server).get_model_version(MODEL, "6").tags
    assert (tags["serving.strategy"], tags["serving.outcome"]) == ("shadow", "promoted"), tags
    assert MlflowClient(mlflow_server).get_model_version_by_alias(MODEL, "champion").version == "6"


def test_a_shadow_release_awaiting_approval_keeps_the_challenger_aside_until_rejected(shadow_stack, zoo, mlflow_server):
    """``hold_for_approval`` (what ``approval=before_promote`` asks of the operator): a challenger
    that would be promoted (registered version 7, v8's weights: v1's top-1) waits on the canary
    group at 0 % with nothing recorded as served; a rejection (:func:`conclude_registered`, as the
    conclude task runs it) puts the canary group back on the champion, the decision on the version."""
    from mlflow import MlflowClient

    from tfmlops.deploy.status import serving_versions
    from tfmlops.steps.rollout import ShadowThresholds, conclude_registered, shadow_release_registered

    from .models import register

    assert register(mlflow_server, zoo, "v8", model=MODEL) == 7  # after the DAG test's version 6, the champion
    groups = {g: [s.endpoint] for g, s in shadow_stack["groups"].items()}
    now = lambda: {g: tuple(serving_versions(s.endpoint.client, MODEL)) for g, s in shadow_stack["groups"].items()}  # noqa: E731
    with ms.RecordingClients(shadow_stack["config"], "shadow-held", threads=1) as clients:
        held = shadow_release_registered(mlflow_server, MODEL, "7", shadow_stack["router"], groups,
                                         shadow_stack["sink"].url, window_s=4.0,
                                         thresholds=ShadowThresholds(min_compared=20), hold_for_approval=True)
        assert (held["decision"], held["outcome"], held["held_share_pct"]) == ("promote", "awaiting_approval", 0.0)
        assert now() == {"stable": (6,), "canary": (7,)} and held["canary_old"] == [6], held
        mlf = MlflowClient(mlflow_server)
        assert mlf.get_model_version(MODEL, "7").tags["serving.outcome"] == "awaiting_approval"
        rejected = conclude_registered(mlflow_server, MODEL, 7, shadow_stack["router"], groups, strategy="shadow",
                                       decision={"approved": False, "decision": "timed out"},
                                       canary_old=held["canary_old"])
    assert rejected["outcome"] == "rolled_back" and rejected["reason"] == "timed out", rejected
    assert now() == {"stable": (6,), "canary": (6,)} and clients.failures == [], clients.failures[:5]
    tags = mlf.get_model_version(MODEL, "7").tags
    assert (tags["serving.outcome"], tags["serving.strategy"]) == ("rolled_back", "shadow"), tags
    assert mlf.get_model_version_by_alias(MODEL, "champion").version == "6"
