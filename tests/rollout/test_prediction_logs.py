"""Logged predictions (PredictionLog TFRecords written by the model server's own log collector)
read back per window, the predicted-class distribution check of gray releases and the statistics
and settings of A/B tests, without servers."""

from __future__ import annotations

import numpy as np
import pytest

from tfmlops.deploy.prediction_logs import class_counts, compare_distributions, log_files, logged_predictions
from tfmlops.deploy.progressive import GrayThresholds


def _write(prefix: str, records: list[tuple], outputs=("y",), version: int = 3) -> None:
    """``(request id, timestamp, scores[, model])`` records through tf-serving-local's
    TFRecordLogCollector (``model``: the name in ``model_spec``, as the router mirror's sink sets it)."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tfmlops.serving.core.log_collector import TFRecordLogCollector
    from tfmlops.serving.tensors import make_tensor_proto

    collector = TFRecordLogCollector(prefix)
    for rid, ts, scores, *model in records:
        plog = prediction_log_pb2.PredictionLog()
        plog.log_metadata.request_origin, plog.log_metadata.timestamp_secs = rid, ts
        plog.log_metadata.model_spec.name, plog.log_metadata.model_spec.version.value = "".join(model), version
        for name in outputs:
            make_tensor_proto(np.asarray(scores, np.float32), plog.predict_log.response.outputs[name])
        collector.collect_message(plog)
    collector.close()


def test_logged_predictions_of_a_window_without_the_projects_own_requests(tmp_path):
    prefix = str(tmp_path / "logs" / "requests")
    _write(prefix, [("user-1", 100, [[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]]),
                    ("tfmlops-check", 101, [[0.0, 0.0, 1.0]]),
                    ("user-2", 101, [[0.0, 0.2, 0.7]]),
                    ("user-3", 105, [[1.0, 0.0, 0.0]])])
    files = log_files(prefix)
    assert len(files) == 1 and files[0].endswith(".tfrecord")
    got = logged_predictions(files, since=100.7, until=104)  # the window [floor(since), until] in whole seconds
    assert [(p.request_id, p.version, p.classes.tolist()) for p in got] == [("user-1", 3, [1, 0]), ("user-2", 3, [2])]
    assert class_counts(got) == {0: 1, 1: 1, 2: 1}
    assert [p.request_id for p in logged_predictions(files, exclude_prefix="")] == [
        "user-1", "tfmlops-check", "user-2", "user-3"]
    assert log_files(prefix, since=4e9) == []  # not written since: nothing to read
    assert log_files(str(tmp_path / "nowhere" / "requests")) == []


def test_a_response_with_several_outputs_needs_the_output_named(tmp_path):
    prefix = str(tmp_path / "requests")
    _write(prefix, [("user-1", 1, [[0.2, 0.8]])], outputs=("scores", "logits"))
    with pytest.raises(ValueError, match="name the one whose argmax"):
        logged_predictions(log_files(prefix))
    assert logged_predictions(log_files(prefix), output="scores")[0].classes.tolist() == [1]
    with pytest.raises(ValueError, match="no output 'probs'"):
        logged_predictions(log_files(prefix), output="probs")


def test_distribution_check_needs_distance_and_significance():
    rng = np.random.default_rng(0)
    p = np.array([0.6, 0.3, 0.1])

    def counts(probs, n):
        return {i: int(c) for i, c in enumerate(rng.multinomial(n, probs))}

    args = {"max_tvd": 0.1, "alpha": 0.001, "min_predictions": 50}
    few = compare_distributions(counts(p, 1000), counts(p, 20), **args)
    assert few["status"] == "not measured" and "20 canary" in few["reason"] and few["tvd"] is None
    same = compare_distributions(counts(p, 1000), counts(p, 200), **args)
    assert same["status"] == "ok" and same["p_value"] > 0.001, same
    rotated = compare_distributions(counts(p, 1000), counts(np.roll(p, 1), 200), **args)
    assert rotated["status"] == "breach" and rotated["tvd"] > 0.1 and rotated["p_value"] < 0.001, rotated
    assert "prediction distribution: TVD" in rotated["reason"] and rotated["psi"] > 0
    # a real but small shift on many predictions: significant, yet under the distance limit
    shifted = compare_distributions(counts(p, 200_000), counts([0.58, 0.32, 0.1], 200_000), **args)
    assert shifted["p_value"] < 0.001 and shifted["tvd"] < 0.1 and shifted["status"] == "ok", shifted


@pytest.mark.parametrize("bad", [{"max_prediction_tvd": 1.5}, {"prediction_alpha": -0.1}, {"min_predictions": 0},
                                 {"max_p99_increase_ms": -1}, {"min_requests": 0}])
def test_gray_thresholds_refuse_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        GrayThresholds(**bad)


def test_z_test_agrees_with_scipys_chi_square_and_settings_are_checked(tmp_path):
    from scipy.stats import chi2_contingency

    from tfmlops.deploy.abtest import ABSettings, labeled_accuracy, label_files, two_proportion_z_test
    from tfmlops.deploy.prediction_logs import LoggedPrediction

    for a, na, b, nb in ((70, 100, 85, 100), (400, 500, 390, 520), (9, 10, 10, 10)):
        z, p = two_proportion_z_test(a, na, b, nb)
        chi2, p_chi, _, _ = chi2_contingency([[a, na - a], [b, nb - b]], correction=False)
        assert z ** 2 == pytest.approx(chi2) and p == pytest.approx(p_chi), (a, na, b, nb)
        assert (z > 0) == (b / nb > a / na)
    assert two_proportion_z_test(10, 10, 20, 20) == (0.0, 1.0)
    for bad, match in (({"share_pct": 100}, "share_pct"), ({"alpha": 0}, "alpha"), ({"min_samples": 0}, "min_samples"),
                       ({"labels_wait_s": -1}, "labels_wait_s")):
        with pytest.raises(ValueError, match=match):
            ABSettings(**bad)
    with pytest.raises(ValueError, match="s3:// is not supported"):
        label_files("s3://bucket/labels")
    (tmp_path / "joined").mkdir()
    (tmp_path / "joined" / "a.jsonl").write_text('{"request_id": "r1", "labels": [1, 2]}\n')
    assert label_files(str(tmp_path)) == [str(tmp_path / "joined" / "a.jsonl")]
    preds = [LoggedPrediction("r1", 1, 0, np.array([1, 0])), LoggedPrediction("r2", 1, 0, np.array([2])),
             LoggedPrediction("r3", 1, 0, np.array([0]))]
    acc = labeled_accuracy(preds, {"r1": [1, 2], "r2": [2, 2], "r3": [0]})
    assert (acc["labeled_rows"], acc["correct"], acc["refused_labels"]) == (3, 2, 1)


def test_an_ab_test_without_request_logs_is_refused_before_anything_changes(tmp_path, monkeypatch):
    from tfmlops.deploy.endpoint import Endpoint

    # the registry below is a closed port: fail at once instead of MLflow's ~4 minutes of retries
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from tfmlops.steps.rollout import ab_test_registered

    groups = {"stable": [Endpoint("s", request_log_prefix="/logs")], "canary": [Endpoint("c")]}
    with pytest.raises(ValueError, match="the canary group's endpoints have no request_log_prefix"):
        ab_test_registered("http://127.0.0.1:9", "m", "2", router=None, groups=groups, labels="/labels")
    # the router mirror's logs stand in for the endpoints' (past the check: the registry is not there)
    mirror = {"stable": ["/mirror/stable/requests"], "canary": ["/mirror/canary/requests"]}
    with pytest.raises(Exception) as exc:
        ab_test_registered("http://127.0.0.1:9", "m", "2", router=None, groups=groups, labels=str(tmp_path),
                           log_prefixes=mirror)
    assert "request_log_prefix" not in str(exc.value)


def test_the_router_mirrors_per_group_logs_feed_the_distribution_check(tmp_path):
    """One prefix per group (the sink's layout) holding every model of the group: only the
    candidate's model is compared; s3:// prefixes are reported, not read."""
    from tfmlops.deploy.endpoint import Endpoint
    from tfmlops.deploy.mirror_sink import group_log_prefix
    from tfmlops.deploy.progressive import GrayRelease
    from tfmlops.deploy.rollout import Candidate
    from tfmlops.deploy.router import Router

    prefixes = {g: [group_log_prefix(str(tmp_path / "router"), g)] for g in ("stable", "canary")}
    for g, version, cls in (("stable", 2, 0), ("canary", 3, 1)):
        _write(prefixes[g][0], [(f"{g}-user", 100, np.eye(3)[[cls] * 60].tolist(), "m"),
                                (f"{g}-user-2", 100, np.eye(3)[[2] * 60].tolist(), "m"),
                                (f"{g}-other-model", 100, np.eye(3)[[2] * 500].tolist(), "other")], version=version)
    groups = {g: [Endpoint(g)] for g in ("stable", "canary")}  # the replicas log nothing themselves
    gray = GrayRelease(Candidate("m", 3, "", {}), Router(str(tmp_path / "sock"), []), groups,
                       log_prefixes=prefixes)
    check = gray._prediction_check({"since": 99, "until": 101})
    assert check["status"] == "breach" and check["stable_classes"] == {"0": 60, "2": 60}
    assert check["canary_classes"] == {"1": 60, "2": 60}
    remote = {g: [group_log_prefix("s3://bucket/router", g)] for g in ("stable", "canary")}
    gray = GrayRelease(Candidate("m", 3, "", {}), Router(str(tmp_path / "sock"), []), groups, log_prefixes=remote)
    check = gray._prediction_check({"since": 99, "until": 101})
    assert check["status"] == "not measured" and "s3:// is not supported" in check["reason"]


def test_ab_decisions(tmp_path):
    """Breaches, missing logs or labels, and the test's direction, on synthetic numbers."""
    from tfmlops.deploy.abtest import ABSettings, ABTest
    from tfmlops.deploy.endpoint import Endpoint
    from tfmlops.deploy.rollout import Candidate
    from tfmlops.deploy.router import Router

    groups = {g: [Endpoint(g, request_log_prefix=str(tmp_path))] for g in ("stable", "canary")}
    ab = ABTest(Candidate("m", 2, "", {}), Router(str(tmp_path / "sock"), []), groups, labels=str(tmp_path),
                settings=ABSettings(alpha=0.05, min_samples=100), thresholds=GrayThresholds(min_requests=20))

    def step(canary_requests=500, breaches=()):
        return {"canary": {"requests": canary_requests}, "breaches": list(breaches)}

    def acc(correct, rows):
        return {"correct": correct, "labeled_rows": rows, "accuracy": correct / rows if rows else None}

    def decide(s, a, problems=()):
        return ab._decide(s, a, list(problems))[:2]

    good = {"stable": acc(700, 1000), "canary": acc(800, 1000)}
    assert decide(step(), good)[0] == "promote"
    assert decide(step(), {"stable": good["canary"], "canary": good["stable"]})[0] == "keep"
    assert decide(step(), {"stable": acc(700, 1000), "canary": acc(710, 1000)})[0] == "inconclusive"
    assert decide(step(breaches=["p99 90 ms vs stable 4 ms"]), good) == ("keep", "challenger: p99 90 ms vs stable 4 ms")
    starved = step(canary_requests=3, breaches=["canary group got 3 requests in the window (< 20)"])
    assert decide(starved, good)[0] == "inconclusive"
    assert decide(step(), None, ["no request logs configured"]) == (
        "inconclusive", "no logged predictions to join labels with: no request logs configured")
    few = decide(step(), {"stable": acc(70, 90), "canary": acc(300, 300)}, ["no *.jsonl label files in x"])
    assert few[0] == "inconclusive" and "each needs >= 100" in few[1] and "no *.jsonl label files" in few[1]


def test_a_regressions_logged_values_and_their_distribution_check(tmp_path):
    """One value per row ([B] or [B, 1]): logged as values; gray compares their distributions with
    the two-sample KS test (distance and significance both needed), not class histograms."""
    from tfmlops.deploy.prediction_logs import compare_value_distributions, predicted_values

    prefix = str(tmp_path / "requests")
    _write(prefix, [("user-1", 1, [150.0, 200.5]), ("user-2", 1, [[90.0]])], outputs=("outputs",))
    got = logged_predictions(log_files(prefix))
    assert [p.values.tolist() for p in got] == [[150.0, 200.5], [90.0]]
    assert predicted_values(got).tolist() == [150.0, 200.5, 90.0]
    _write(str(tmp_path / "cls"), [("user-3", 1, [[0.2, 0.8]])])
    assert predicted_values(logged_predictions(log_files(str(tmp_path / "cls")))) is None

    rng = np.random.default_rng(0)
    stable = rng.normal(150, 40, 400)
    same = compare_value_distributions(stable, rng.normal(150, 40, 400), 0.1, 0.001, 50)
    assert same["status"] == "ok" and same["ks"] < 0.1
    shifted = compare_value_distributions(stable, rng.normal(220, 40, 400), 0.1, 0.001, 50)
    assert shifted["status"] == "breach" and "KS distance" in shifted["reason"] and shifted["p_value"] < 1e-6
    assert shifted["canary_quantiles"]["p50"] > shifted["stable_quantiles"]["p50"] + 50
    few = compare_value_distributions(stable, rng.normal(220, 40, 10), 0.1, 0.001, 50)
    assert few["status"] == "not measured" and "each needs >= 50" in few["reason"]


def test_ab_decisions_of_a_regression_on_squared_errors(tmp_path):
    """A/B of a regressor: numeric labels joined on request ids, squared errors per variant,
    Welch's t-test; the challenger is promoted only when its errors are significantly lower."""
    import json

    from tfmlops.deploy.abtest import ABSettings, ABTest, labeled_errors, read_label_files, welch_t_test
    from tfmlops.deploy.endpoint import Endpoint
    from tfmlops.deploy.prediction_logs import LoggedPrediction
    from tfmlops.deploy.rollout import Candidate
    from tfmlops.deploy.router import Router

    (tmp_path / "labels.jsonl").write_text("\n".join(json.dumps(d) for d in [
        {"request_id": "a", "labels": [100.0, 150.5]}, {"request_id": "b", "label": 80},
        {"request_id": "c", "labels": [float("nan")]}]) + "\n")
    labels, problems = read_label_files(str(tmp_path), numeric=True)
    assert labels == {"a": [100.0, 150.5], "b": [80]} and len(problems) == 1 and "finite numbers" in problems[0]
    preds = [LoggedPrediction("a", 2, 1, np.zeros(2, int), np.array([110.0, 150.5])),
             LoggedPrediction("b", 2, 1, np.zeros(2, int), np.array([1.0, 2.0]))]  # two rows, one label
    errors = labeled_errors(preds, labels)
    assert (errors["labeled_rows"], errors["mse"], errors["refused_labels"]) == (2, 50.0, 1)

    rng = np.random.default_rng(1)
    champion, better = list(rng.normal(0, 10, 500) ** 2), list(rng.normal(0, 7, 500) ** 2)
    t, p = welch_t_test(champion, better)
    assert t < 0 and p < 0.05
    groups = {g: [Endpoint(g, request_log_prefix=str(tmp_path))] for g in ("stable", "canary")}
    ab = ABTest(Candidate("m", 2, "", {}), Router(str(tmp_path / "sock"), []), groups, labels=str(tmp_path),
                settings=ABSettings(alpha=0.05, min_samples=100), thresholds=GrayThresholds(min_requests=20))

    def scores(sq):
        return {"labeled_rows": len(sq), "mse": float(np.mean(sq)), "rmse": float(np.sqrt(np.mean(sq))),
                "squared_errors": list(sq)}

    step = {"canary": {"requests": 500}, "breaches": []}
    decision, reason, test = ab._decide(step, {"stable": scores(champion), "canary": scores(better)}, [])
    assert decision == "promote" and "challenger RMSE" in reason and test["method"].startswith("Welch")
    assert ab._decide(step, {"stable": scores(better), "canary": scores(champion)}, [])[0] == "keep"
    close = [e * 1.01 for e in champion]  # 1 % larger errors: no significant difference
    assert ab._decide(step, {"stable": scores(champion), "canary": scores(close)}, [])[0] == "inconclusive"
