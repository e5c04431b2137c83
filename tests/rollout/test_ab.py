"""A/B tests through a real router (Debian's HAProxy) in front of two real tf-serving-local
replica groups, under real REST + gRPC user load with the users' own request ids, decided on the
labels that come back for those ids (JSON-lines files, as a labeler writes them): a challenger
clearly better than a weak champion wins significantly and is promoted; an equal challenger is
inconclusive and removed, the champion stays (the statistics alone: test_prediction_logs.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from . import models
from .conftest import MODEL
from .load import UserClients
from .router_stack import needs_haproxy, router_stack, served

BATCH = 5  # rows per user request; each batch has exactly one row whose label is wrong (see labels)


def _labels(zoo) -> np.ndarray:
    """The truth users learn: v1's classes (what every v1-derived version predicts), with the first row
    of every batch mislabeled — every v1-derived version is right on exactly 4 of each request's 5 rows."""
    y = np.array(zoo.holdout_y)
    y[::BATCH] = (y[::BATCH] + 1) % 3
    return y


pytestmark = [pytest.mark.e2e, needs_haproxy]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, zoo):
    """Both groups start on the weak model ``bad`` as version 1 (the champion)."""
    with router_stack(tmp_path_factory.mktemp("ab"), zoo, initial="bad") as s:
        yield s


def _ab(stack, zoo, name: str, version: int, labels_dir, **settings):
    from tfmlops.deploy.abtest import ABSettings, ab_test
    from tfmlops.deploy.progressive import GrayThresholds
    from tfmlops.deploy.rollout import Candidate

    groups = {g: [s.endpoint] for g, s in stack["groups"].items()}
    return ab_test(Candidate(MODEL, version, zoo.path[name], zoo.smoke[name]), stack["router"], groups,
                   labels=str(labels_dir), settings=ABSettings(**{"share_pct": 50, "min_samples": 200, **settings}),
                   window_s=5.0, poll_s=0.25, thresholds=GrayThresholds(min_requests=5))


def _users(stack, zoo, names, labels_path):
    config = stack["config"]
    allowed = {n: models.predict(zoo.path[n], zoo.holdout_x) for n in names}
    return UserClients("127.0.0.1", config.rest_port, config.grpc_port, MODEL, zoo.holdout_x, allowed,
                       y=_labels(zoo), labels_path=str(labels_path), batch=BATCH)


def _batch_accuracies(zoo, name: str) -> np.ndarray:
    right = models.predict(zoo.path[name], zoo.holdout_x).argmax(axis=1) == _labels(zoo)
    return right.reshape(-1, BATCH).mean(axis=1)


def _check_report(res, zoo, names):
    assert json.loads(json.dumps(res.to_dict(), allow_nan=False))  # what Airflow stores as XCom
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
    (tmp_path / "labels").mkdir()
    with _users(stack, zoo, ["bad", "v2"], tmp_path / "labels" / "users.jsonl") as users:
        res = _ab(stack, zoo, "v2", 2, tmp_path / "labels")
    assert (res.decision, res.outcome) == ("promote", "promoted"), res.to_dict()
    _check_report(res, zoo, ("bad", "v2"))
    assert res.test["p_value"] < res.test["alpha"] and res.test["z"] > 0 and res.test["difference"] > 0, res.test
    assert "challenger significantly better" in res.reason
    assert users.failures == [] and users.answered["v2"] > 0, users.failures[:5]
    assert served(stack) == {"stable": (2,), "canary": (2,)} and stack["router"].share_pct == 0.0


def test_an_equal_challenger_is_inconclusive_and_removed(stack, zoo, tmp_path):
    """v3 predicts v2's classes on every row: each variant is right on 4 of every 5 labeled rows."""
    (tmp_path / "labels").mkdir()
    with _users(stack, zoo, ["v2", "v3"], tmp_path / "labels" / "users.jsonl") as users:
        res = _ab(stack, zoo, "v3", 3, tmp_path / "labels")
    assert (res.decision, res.outcome) == ("inconclusive", "rolled_back"), res.to_dict()
    _check_report(res, zoo, ("v2", "v3"))
    assert res.test["p_value"] >= res.test["alpha"] and "no significant difference" in res.reason, res.test
    assert users.failures == [] and users.answered["v3"] > 0, users.failures[:5]
    assert served(stack) == {"stable": (2,), "canary": (2,)} and stack["router"].share_pct == 0.0
