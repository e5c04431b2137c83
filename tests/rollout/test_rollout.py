"""Rolling updates under steady REST + gRPC load against two real tf-serving-local endpoints.

The tests run in order on one shared fleet (versions accumulate, as in production):
replace 2 → canary 3 (+ keep-2 retirement, re-run no-op) → corrupt 4, wrong outputs 5, failing
accuracy 6 (each rolled back) → 7 fails on the second endpoint (the first is rolled back)."""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest

from tfmlops.deploy.checks import CanaryChecks
from tfmlops.deploy.errors import RolloutBusy
from tfmlops.deploy.locking import endpoints_locked
from tfmlops.deploy.model_config import apply_config, find_entry, read_config, with_versions
from tfmlops.deploy.rollout import PROMOTED, ROLLED_BACK, Candidate, rollout
from tfmlops.deploy.status import serving_versions, version_states

from .conftest import MODEL
from .load import LoadLoop

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def outputs(zoo):
    """What each version number answers on the load batch (5 and 6 are the 'bad' model)."""
    return {1: zoo.out["v1"], 2: zoo.out["v2"], 3: zoo.out["v3"], 5: zoo.out["bad"], 6: zoo.out["bad"],
            7: zoo.out["v7"]}


def load(fleet, zoo, outputs, label=None):
    return LoadLoop(fleet, MODEL, np.asarray(zoo.smoke["v1"]["instances"], np.float32), outputs, label=label)


def labels(ep) -> dict:
    entry = find_entry(read_config(ep), MODEL)
    return dict(entry.version_labels)


def assert_clean(loop, versions):
    assert loop.failures == [], loop.failures[:5]
    assert loop.ok > 20, loop.ok
    assert loop.versions <= set(versions), loop.versions


def test_replace_under_load(fleet, zoo, outputs):
    with load(fleet, zoo, outputs) as loop:
        res = rollout(Candidate(MODEL, 2, zoo.path["v2"], zoo.smoke["v2"]), fleet, "replace", keep=5)
    assert res.outcome == PROMOTED, res.reason
    assert res.endpoints == ["ep1", "ep2"] and res.old_versions == {"ep1": [1], "ep2": [1]}
    assert_clean(loop, {1, 2})
    assert loop.versions == {1, 2}
    for ep in fleet:
        assert serving_versions(ep.client, MODEL) == [2]
        entry = find_entry(read_config(ep), MODEL)
        assert entry.model_version_policy.WhichOneof("policy_choice") == "latest"
        assert res.checks[ep.name]["smoke_rest_max_abs_diff"] <= 1e-5


def test_canary_under_load_promotes_and_retires(fleet, zoo, outputs):
    for ep in fleet:  # clients address the stable label
        cfg = read_config(ep)
        apply_config(ep, with_versions(cfg, MODEL, find_entry(cfg, MODEL).base_path, [2], {"stable": 2}))
    checks = CanaryChecks(holdout_x=zoo.holdout_x, holdout_y=zoo.holdout_y, min_accuracy=0.95,
                          latency_budget_ms=5000, latency_requests=10)
    with load(fleet, zoo, outputs, label="stable") as loop:
        res = rollout(Candidate(MODEL, 3, zoo.path["v3"], zoo.smoke["v3"]), fleet, "canary", checks, keep=2)
    assert res.outcome == PROMOTED, res.reason
    assert_clean(loop, {2, 3})
    assert loop.versions == {2, 3}
    for ep in fleet:
        assert serving_versions(ep.client, MODEL) == [3]
        assert labels(ep) == {"stable": 3}
        assert res.checks[ep.name]["holdout_accuracy"] == 1.0
        assert res.checks[ep.name]["latency_p99_ms"] < 5000
        assert sorted(os.listdir(os.path.join(ep.models_root, MODEL))) == ["2", "3"]  # keep 2: 1 retired
    assert len(res.retired) == 2


def test_rerun_of_a_promoted_version_changes_nothing(fleet, zoo, outputs):
    before = [read_config(ep) for ep in fleet]
    with load(fleet, zoo, outputs, label="stable") as loop:
        res = rollout(Candidate(MODEL, 3, zoo.path["v3"], zoo.smoke["v3"]), fleet, "canary", keep=2)
    assert res.outcome == PROMOTED, res.reason
    assert_clean(loop, {3})
    assert [read_config(ep) for ep in fleet] == before
    assert res.published and res.retired == []
    for ep in fleet:
        assert serving_versions(ep.client, MODEL) == [3]


def test_concurrent_rollouts_are_serialized(fleet, zoo):
    """Rollouts lock every endpoint's config file: a second one waits for the first (whatever
    process or DAG it runs in), and one that cannot get the lock in time touches nothing."""
    cand = Candidate(MODEL, 3, zoo.path["v3"], zoo.smoke["v3"])
    before = [read_config(ep) for ep in fleet]
    with endpoints_locked(fleet, 5), pytest.raises(RolloutBusy, match="another rollout has held"):
        rollout(cand, fleet, "canary", keep=2, timeout_s=1)  # another rollout is running: retry later
    assert [read_config(ep) for ep in fleet] == before

    events, results = [], {}

    def run(name):
        results[name] = rollout(cand, fleet, "canary", keep=2, timeout_s=60,
                                on_event=lambda msg: events.append((name, msg)))

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    with endpoints_locked(fleet, 5):  # both start while the lock is taken, then race for it
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while {n for n, m in events if m.startswith("waiting for another rollout")} != {"a", "b"}:
            assert time.monotonic() < deadline, events
            time.sleep(0.05)
    for t in threads:
        t.join(120)
    assert {n: r.outcome for n, r in results.items()} == {"a": PROMOTED, "b": PROMOTED}
    work = [n for n, m in events if not m.startswith("waiting for another rollout")]
    first = work[0]
    assert work == [first] * work.count(first) + [n for n in work if n != first], work  # no interleaving
    assert [read_config(ep) for ep in fleet] == before


def _assert_rolled_back(res, fleet, version):
    assert res.outcome == ROLLED_BACK
    assert res.endpoints == []
    for ep in fleet:
        assert serving_versions(ep.client, MODEL) == [3]
        assert labels(ep) == {"stable": 3}
        assert version_states(ep.client, MODEL).get(version, ("END",))[0] == "END"


def test_corrupt_savedmodel_rolls_back(fleet, zoo, outputs):
    with load(fleet, zoo, outputs, label="stable") as loop, load(fleet, zoo, outputs) as loop2:
        res = rollout(Candidate(MODEL, 4, zoo.path["corrupt"], zoo.smoke["corrupt"]), fleet, "replace")
    _assert_rolled_back(res, fleet, 4)
    assert "failed to load" in res.reason and "version 4" in res.reason
    assert res.rolled_back == ["ep1"]  # the first endpoint failed: the second was never touched
    assert_clean(loop, {3})
    assert_clean(loop2, {3})


def test_model_with_different_outputs_rolls_back(fleet, zoo, outputs):
    with load(fleet, zoo, outputs, label="stable") as loop, load(fleet, zoo, outputs) as loop2:
        res = rollout(Candidate(MODEL, 5, zoo.path["bad"], zoo.smoke["v8"]), fleet, "replace")
    _assert_rolled_back(res, fleet, 5)
    assert "differ from the registered model" in res.reason
    assert_clean(loop, {3})
    assert_clean(loop2, {3, 5})  # unversioned requests reach the highest AVAILABLE version (TF Serving)


def test_canary_failing_accuracy_rolls_back(fleet, zoo, outputs):
    checks = CanaryChecks(holdout_x=zoo.holdout_x, holdout_y=zoo.holdout_y, min_accuracy=0.9)
    with load(fleet, zoo, outputs, label="stable") as loop:
        res = rollout(Candidate(MODEL, 6, zoo.path["bad"], zoo.smoke["bad"]), fleet, "canary", checks)
    _assert_rolled_back(res, fleet, 6)
    assert f"holdout accuracy {zoo.bad_accuracy:.4f} < minimum 0.9000" in res.reason
    assert_clean(loop, {3})


def test_failure_on_second_endpoint_rolls_back_the_first(fleet, zoo, outputs):
    # a stale, different version 7 on the second replica's volume: publishing there must fail
    shutil.copytree(zoo.path["other"], os.path.join(fleet[1].models_root, MODEL, "7"))
    with load(fleet, zoo, outputs, label="stable") as loop:
        res = rollout(Candidate(MODEL, 7, zoo.path["v7"], zoo.smoke["v7"]), fleet, "canary")
    assert "ep2" in res.reason and "never reused" in res.reason, res.reason
    assert res.rolled_back == ["ep2", "ep1"]
    _assert_rolled_back(res, fleet, 7)
    assert_clean(loop, {3, 7})
