"""A/B tests through a real router (Debian's HAProxy) in front of two real tf-serving-local
replica groups, under real REST + gRPC user load with the users' own request ids, decided on the
labels that come back for those ids (JSON-lines files, as a labeler writes them), the versions
registered in a real MLflow server: a challenger clearly better than a weak champion wins
significantly and is promoted (champion alias, ``ab.*`` metrics and the report on its run); an
equal challenger is inconclusive and removed, the champion stays (the statistics alone:
test_prediction_logs.py)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from . import models
from .conftest import MODEL
from .load import UserClients
from .router_stack import needs_haproxy, router_stack, served
from .models import register

BATCH = 5  # rows per user request; each batch has exactly one row whose label is wrong (see labels)


def _labels(zoo) -> np.ndarray:
    """The truth users learn: v1's classes (what every v1-derived version predicts), with the first row
    of every batch mislabeled — every v1-derived version is right on exactly 4 of each request's 5 rows."""
    y = np.array(zoo.holdout_y)
    y[::BATCH] = (y[::BATCH] + 1) % 3
    return y


pytestmark = [pytest.mark.e2e, needs_haproxy]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, zoo, mlflow_server):
    """Both groups start on the weak model ``bad`` as version 1, the champion; ``v2`` and ``v3``
    (v1's classes) are registered as versions 2 and 3."""
    from tfmlops import registry

    assert [register(mlflow_server, zoo, name, model=MODEL) for name in ("bad", "v2", "v3")] == [1, 2, 3]
    registry.set_alias(mlflow_server, MODEL, registry.CHAMPION, 1)
    with router_stack(tmp_path_factory.mktemp("ab"), zoo, initial="bad") as s:
        yield {**s, "mlflow": mlflow_server}


def _ab(stack, version: int, labels_dir, **kwargs):
    from tfmlops.deploy.abtest import ABSettings
    from tfmlops.deploy.progressive import GrayThresholds
    from tfmlops.steps.rollout import ab_test_registered

    groups = {g: [s.endpoint] for g, s in stack["groups"].items()}
    res = ab_test_registered(stack["mlflow"], MODEL, str(version), stack["router"], groups, labels=str(labels_dir),
                             settings=ABSettings(share_pct=50, min_samples=200), window_s=5.0,
                             thresholds=GrayThresholds(min_requests=5), **kwargs)
    return SimpleNamespace(**res)


def _recorded(stack, version: int) -> tuple[dict, dict, dict]:
    """The version's ``ab.*`` metrics, its A/B report artifact and the model's aliases, from MLflow."""
    from mlflow import MlflowClient

    mlf = MlflowClient(stack["mlflow"])
    run_id = mlf.get_model_version(MODEL, str(version)).run_id
    metrics = {k: v for k, v in mlf.get_run(run_id).data.metrics.items() if k.startswith("ab.")}
    with tempfile.TemporaryDirectory() as tmp:
        report = json.loads(Path(mlf.download_artifacts(run_id, f"serving/ab_v{version}.json", tmp)).read_text())
    return metrics, report, dict(mlf.get_registered_model(MODEL).aliases)


def _users(stack, zoo, names, labels_path):
    config = stack["config"]
    allowed = {n: models.predict(zoo.path[n], zoo.holdout_x) for n in names}
    return UserClients("127.0.0.1", config.rest_port, config.grpc_port, MODEL, zoo.holdout_x, allowed,
                       y=_labels(zoo), labels_path=str(labels_path), batch=BATCH)


def _batch_accuracies(zoo, name: str) -> np.ndarray:
    right = models.predict(zoo.path[name], zoo.holdout_x).argmax(axis=1) == _labels(zoo)
    return right.reshape(-1, BATCH).mean(axis=1)


def _check_report(res, zoo, names):
    json.dumps(vars(res), allow_nan=False)  # what Airflow stores as XCom
    for variant, name in zip(("champion", "challenger"), names):
        v = res.variants[variant]
        assert v["errors"] == 0 and v["labeled_rows"] >= 200, v
        assert v["accuracy"] == v["correct"] / v["labeled_rows"]
        # a mix of the variant's per-request accuracies, whatever requests it got
        per_batch = _batch_accuracies(zoo, name)
        assert per_batch.min() - 1e-9 <= v["accuracy"] <= per_batch.max() + 1e-9, (variant, v, per_batch)
    measured = 100 * res.variants["challenger"]["requests"] / (
        res.variants["challenger"]["requests"] + res.variants["champion"]["requests"])
    assert abs(measured - res.window["share_pct"]) <= 10, measured


def test_a_clearly_better_challenger_wins_and_is_promoted(stack, zoo, tmp_path):
    """First awaiting approval (the win holds: share 0 %, the challenger kept on the canary group,
    nothing recorded as served) and rejected — the canary group back on the champion; then without
    approval: promoted."""
    from mlflow import MlflowClient

    from tfmlops.steps.rollout import conclude_registered

    (tmp_path / "labels").mkdir()
    with _users(stack, zoo, ["bad", "v2"], tmp_path / "labels" / "users.jsonl") as users:
        held = _ab(stack, 2, tmp_path / "labels", hold_for_approval=True)
        assert (held.decision, held.outcome, held.held_share_pct) == ("promote", "awaiting_approval", 0.0), vars(held)
        assert served(stack) == {"stable": (1,), "canary": (2,)} and stack["router"].share_pct == 0.0
        tags = MlflowClient(stack["mlflow"]).get_model_version(MODEL, "2").tags
        assert (tags["serving.outcome"], tags["serving.strategy"]) == ("awaiting_approval", "ab"), tags
        groups = {g: [s.endpoint] for g, s in stack["groups"].items()}
        rejected = conclude_registered(stack["mlflow"], MODEL, 2, stack["router"], groups, strategy="ab",
                                       decision={"approved": False, "decision": "rejected", "by": "carol",
                                                 "note": "wait for the weekly review"}, canary_old=held.canary_old)
        assert rejected["outcome"] == "rolled_back" and rejected["strategy"] == "ab", rejected
        assert served(stack) == {"stable": (1,), "canary": (1,)}
        tags = MlflowClient(stack["mlflow"]).get_model_version(MODEL, "2").tags
        assert tags["serving.reason"] == "rejected by carol: wait for the weekly review", tags
        assert dict(MlflowClient(stack["mlflow"]).get_registered_model(MODEL).aliases)["champion"] == "1"

        res = _ab(stack, 2, tmp_path / "labels")
    assert (res.decision, res.outcome) == ("promote", "promoted"), vars(res)
    _check_report(res, zoo, ("bad", "v2"))
    assert res.test["p_value"] < res.test["alpha"] and res.test["z"] > 0 and res.test["difference"] > 0, res.test
    assert "challenger significantly better" in res.reason
    assert users.failures == [] and users.answered["v2"] > 0, users.failures[:5]
    assert served(stack) == {"stable": (2,), "canary": (2,)} and stack["router"].share_pct == 0.0
    metrics, report, aliases = _recorded(stack, 2)
    assert (aliases["champion"], aliases["previous"]) == ("2", "1")
    assert metrics["ab.challenger.accuracy"] == res.variants["challenger"]["accuracy"]
    assert metrics["ab.p_value"] == res.test["p_value"] and report["decision"] == "promote"


def test_an_equal_challenger_is_inconclusive_and_removed(stack, zoo, tmp_path):
    """v3 predicts v2's classes on every row: each variant is right on 4 of every 5 labeled rows."""
    (tmp_path / "labels").mkdir()
    with _users(stack, zoo, ["v2", "v3"], tmp_path / "labels" / "users.jsonl") as users:
        res = _ab(stack, 3, tmp_path / "labels")
    assert (res.decision, res.outcome) == ("inconclusive", "rolled_back"), vars(res)
    _check_report(res, zoo, ("v2", "v3"))
    assert res.test["p_value"] >= res.test["alpha"] and "no significant difference" in res.reason, res.test
    assert users.failures == [] and users.answered["v3"] > 0, users.failures[:5]
    assert served(stack) == {"stable": (2,), "canary": (2,)} and stack["router"].share_pct == 0.0
    metrics, report, aliases = _recorded(stack, 3)
    assert (aliases["champion"], aliases["previous"], aliases.get("challenger")) == ("2", "1", None)  # removed
    assert report["decision"] == "inconclusive" and metrics["ab.champion.labeled_rows"] >= 200
