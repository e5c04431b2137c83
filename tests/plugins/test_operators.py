"""Unit tests of every operator with its step mocked (as Airflow's providers test their operators):
what each passes to the step (coerced templated values, hooks built from connections, lineage),
and how each outcome maps to Airflow (fail without retry, skip, retry, asset events).
The end-to-end DAG runs against real servers are elsewhere (tests/test_*_e2e.py, tests/*/test_*_dag.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from unittest import mock

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

MLFLOW = {"conn_type": "http", "host": "mlflow.test", "port": 5000}
SERVING = {"conn_type": "http", "host": "serving.test", "port": 9501,
           "extra": {"grpc_port": 9500, "models_root": "/models", "server_models_root": "/srv/models",
                     "model_config_file": "/models/models.config"}}


@pytest.fixture(autouse=True)
def connections(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps(MLFLOW))
    monkeypatch.setenv("AIRFLOW_CONN_TF_SERVING_DEFAULT", json.dumps(SERVING))
    monkeypatch.setenv("AIRFLOW_CONN_PROBE_ONLY", json.dumps({"conn_type": "http", "host": "probe.test", "port": 1}))
    monkeypatch.setenv("AIRFLOW__TFMLOPS__ALLOWED_PARTITIONS_ROOTS", "/parts, s3://bucket/parts,/elsewhere")


def context(**extra) -> dict:
    ti = SimpleNamespace(dag_id="dag", task_id="task")
    outlet_events = mock.MagicMock()
    return {"ti": ti, "run_id": "manual__1", "outlet_events": outlet_events, **extra}


TRACKING = "http://mlflow.test:5000"
LINEAGE = {"airflow.dag_id": "dag", "airflow.run_id": "manual__1", "airflow.task_id": "task"}


# ------------------------------------------------------------------------------------ retrain
def test_resolve_uses_the_connection_and_a_champion_event():
    from tfmlops_airflow.assets import CHAMPION
    from tfmlops_airflow.operators.retrain import ResolveModelVersionOperator

    op = ResolveModelVersionOperator(task_id="resolve", model_name="m", version="champion")
    with mock.patch("tfmlops.steps.retrain.resolve", return_value={"version": 3}) as step:
        assert op.execute(context()) == {"version": 3}
        step.assert_called_once_with(TRACKING, "m", "champion")
        event = SimpleNamespace(extra={"model_name": "other", "version": 7})
        op.execute(context(triggering_asset_events={CHAMPION: [event]}))
        step.assert_called_with(TRACKING, "other", 7)
    with mock.patch("tfmlops.steps.retrain.resolve", side_effect=LookupError("no alias x")):
        with pytest.raises(AirflowFailException, match="no alias x"):
            op.execute(context())


def test_validate_fails_without_retry_on_bad_data():
    from tfmlops.data import DatasetError
    from tfmlops_airflow.operators.retrain import ValidateDatasetOperator

    op = ValidateDatasetOperator(task_id="v", dataset_uri="/data/x.npz", sample_fraction="0.5", seed="3")
    with mock.patch("tfmlops.steps.retrain.validate_data", side_effect=DatasetError("x.npz: NaN in x_train")) as step:
        with pytest.raises(AirflowFailException, match="NaN in x_train"):
            op.execute(context())
    spec = step.call_args.args[0]
    assert (spec.uri, spec.sample_fraction, spec.seed, spec.s3_client) == ("/data/x.npz", 0.5, 3, None)


def test_train_passes_the_model_spec_and_lineage():
    from tfmlops.modelspec import ModelModuleError
    from tfmlops_airflow.operators.retrain import TrainModelOperator

    op = TrainModelOperator(task_id="train", experiment="m", model_spec={"module": "tfmlops_examples.churn"},
                            dataset_uri="examples/churn.parquet")
    with mock.patch("tfmlops.steps.retrain.train", return_value={"run_id": "r"}) as step:
        assert op.execute(context()) == {"run_id": "r"}
    kwargs = step.call_args.kwargs
    assert step.call_args.args == (TRACKING, "m")
    assert kwargs["tags"] == LINEAGE and kwargs["run_name"] == "manual__1"
    spec = kwargs["spec"]
    assert (spec.model_spec, spec.uri, spec.model_module) == (
        {"module": "tfmlops_examples.churn"}, "examples/churn.parquet", "tfmlops_examples.mnist_mlp")
    # a module whose own code fails (NaN loss, a bad train loop) fails the task without retry
    with mock.patch("tfmlops.steps.retrain.train", side_effect=ModelModuleError("m: training diverged")):
        with pytest.raises(AirflowFailException, match="training diverged"):
            op.execute(context())
    # a search's lineage goes on the run; a retrain without a search passes None, left out
    op.lineage_tags = {"search.parent_run_id": "p1", "search.best_trial": 3}
    with mock.patch("tfmlops.steps.retrain.train", return_value={"run_id": "r"}) as step:
        op.execute(context())
    assert step.call_args.kwargs["tags"] == {**LINEAGE, "search.parent_run_id": "p1", "search.best_trial": "3"}
    op.lineage_tags = {"search.parent_run_id": None, "search.best_trial": None}
    with mock.patch("tfmlops.steps.retrain.train", return_value={"run_id": "r"}) as step:
        op.execute(context())
    assert step.call_args.kwargs["tags"] == LINEAGE


def test_validate_reads_the_module_and_hyperparameters():
    from tfmlops.modelspec import ModelModuleError
    from tfmlops_airflow.operators.retrain import ValidateDatasetOperator

    op = ValidateDatasetOperator(task_id="v", model_module="models.churn", hyperparameters={"epochs": 2})
    broken = ModelModuleError("models.churn: no TASK")
    with mock.patch("tfmlops.steps.retrain.validate_data", side_effect=broken) as step:
        with pytest.raises(AirflowFailException, match="no TASK"):
            op.execute(context())
    spec = step.call_args.args[0]
    assert (spec.model_module, spec.hyperparameters, spec.model_spec) == ("models.churn", {"epochs": 2}, None)


def test_evaluate_and_export_use_the_training_run():
    from tfmlops_airflow.operators.retrain import EvaluateModelOperator, ExportSavedModelOperator

    for cls, step_name in ((EvaluateModelOperator, "evaluate"), (ExportSavedModelOperator, "export")):
        op = cls(task_id=step_name, run_id="r1", model_uri="runs:/r1/model")
        with mock.patch(f"tfmlops.steps.retrain.{step_name}", return_value={"ok": 1}) as step:
            assert op.execute(context()) == {"ok": 1}
        assert step.call_args.args[:3] == (TRACKING, "r1", "runs:/r1/model")


def test_gate_rejection_skips_with_the_reason():
    from tfmlops_airflow.operators.retrain import ModelGateOperator

    op = ModelGateOperator(task_id="gate", model_name="m", run_id="r", metrics={"rmse": 41.0}, gate_metric="None",
                           gate_threshold="40", tolerance="")
    rejected = {"passed": False, "reason": "rmse 41.0000 is above the threshold 40.0000"}
    with mock.patch("tfmlops.steps.retrain.gate_against_champion", return_value=rejected) as step:
        with pytest.raises(AirflowSkipException, match="above the threshold"):
            op.execute(context())
    assert step.call_args.args[:4] == (TRACKING, "m", "r", {"rmse": 41.0})
    assert step.call_args.kwargs == {"threshold": "40", "tolerance": None, "metric": None}
    with mock.patch("tfmlops.steps.retrain.gate_against_champion", return_value={"passed": True, "reason": "ok"}):
        assert op.execute(context())["passed"]


def test_register_tags_lineage_and_fingerprint():
    from tfmlops_airflow.operators.retrain import RegisterModelOperator

    op = RegisterModelOperator(task_id="task", model_name="m", run_id="r", model_uri="runs:/r/model",
                               metrics={"accuracy": 0.9}, dataset_fingerprint="abc")
    with mock.patch("tfmlops.steps.retrain.register", return_value={"version": 4}) as step:
        assert op.execute(context()) == {"version": 4}
    step.assert_called_once_with(TRACKING, "m", "r", "runs:/r/model", {"accuracy": 0.9},
                                 {**LINEAGE, "dataset_fingerprint": "abc"}, model_spec=None)


# ----------------------------------------------------------------------------------- optimize
MODEL = {"model_name": "m", "version": "2", "run_id": "r", "model_uri": "models:/m/2", "serving_artifact_uri": "x"}


def test_optimize_skips_unselected_and_rejected_variants():
    from tfmlops_airflow.operators.optimize import OptimizeModelOperator

    op = OptimizeModelOperator(task_id="o", variant="int8", variants=["float16"], model=MODEL)
    with mock.patch("tfmlops.steps.optimize.optimize_variant") as step:
        with pytest.raises(AirflowSkipException, match="not selected"):
            op.execute(context())
        step.assert_not_called()
    op = OptimizeModelOperator(task_id="o", variant="int8", variants=["int8"], model=MODEL, int8_samples="50",
                               max_accuracy_drop="0.02", seed="1")
    result = {"status": "rejected", "reason": "drop 2.5 pp"}
    with mock.patch("tfmlops.steps.optimize.optimize_variant", return_value=result) as step:
        with pytest.raises(AirflowSkipException, match="int8 rejected: drop 2.5 pp"):
            op.execute(context())
    args = step.call_args.args
    assert args[1] == {"model_name": "m", "version": 2, "run_id": "r", "model_uri": "models:/m/2", "model_spec": None,
                       "dataset_uri": None}
    assert args[2] == "int8" and args[4]["int8_samples"] == 50 and args[4]["max_accuracy_drop"] == 0.02
    # fields left empty go as None: the model module's OPTIMIZE, else the platform's default
    assert args[4]["pruning_epochs"] is None and args[4]["target_sparsity"] is None
    assert args[4]["seed"] == 1 and step.call_args.kwargs == {"stamp": "manual__1"}

    qat = OptimizeModelOperator(task_id="q", variant="qat_int8", variants=["qat_int8"], model=MODEL, qat_epochs="3")
    assert "qat_epochs" in OptimizeModelOperator.template_fields
    with mock.patch("tfmlops.steps.optimize.optimize_variant", return_value={"status": "passed"}) as step:
        assert qat.execute(context()) == {"status": "passed"}
    assert step.call_args.args[2] == "qat_int8" and step.call_args.args[4]["qat_epochs"] == 3


def test_mobile_bundles_skip_without_a_verified_target_and_fail_on_a_bad_bundle():
    from tfmlops.steps.optimize import MobileBundleError
    from tfmlops_airflow.operators.optimize import MobileBundleOperator

    op = MobileBundleOperator(task_id="m", model=MODEL, targets="int8,float16")
    assert op.trigger_rule == "all_done" and "targets" in MobileBundleOperator.template_fields
    with mock.patch("tfmlops.steps.optimize.mobile_bundles", return_value={"bundles": {}, "missing": ["int8"]}):
        with pytest.raises(AirflowSkipException, match="no verified TFLite artifact of"):
            op.execute(context())
    with mock.patch("tfmlops.steps.optimize.mobile_bundles",
                    return_value={"bundles": {"float16": {"passed": True}}, "missing": ["int8"]}) as step:
        assert op.execute(context())["missing"] == ["int8"]
    assert step.call_args.args[3] == ["int8", "float16"] and step.call_args.kwargs == {"stamp": "manual__1"}
    with mock.patch("tfmlops.steps.optimize.mobile_bundles", side_effect=MobileBundleError("agreement 0.4")):
        with pytest.raises(AirflowFailException, match="agreement 0.4"):
            op.execute(context())


def test_export_format_check_failure_fails_the_task():
    from tfmlops.formats import FormatCheckError
    from tfmlops_airflow.operators.optimize import ExportFormatOperator

    op = ExportFormatOperator(task_id="e", variant="float", fmt="onnx", formats=["onnx"], model=MODEL,
                              max_abs_diff="1e-5", min_agreement="0.99")
    with mock.patch("tfmlops.steps.optimize.export_format", side_effect=FormatCheckError("diff 0.1", [])):
        with pytest.raises(AirflowFailException, match="diff 0.1"):
            op.execute(context())
    row = {"artifact": "float-onnx", "checks": [{"runtime": "onnxruntime", "details": {"big": 1}, "accuracy": 0.9}]}
    with mock.patch("tfmlops.steps.optimize.export_format", return_value=row):
        assert op.execute(context())["checks"] == [{"runtime": "onnxruntime", "accuracy": 0.9}]
    skipped = ExportFormatOperator(task_id="e", variant="float", fmt="onnx", formats="keras,h5", model=MODEL)
    with pytest.raises(AirflowSkipException, match="not selected"):
        skipped.execute(context())


def test_report_runs_whatever_happened_upstream():
    from tfmlops_airflow.operators.optimize import FormatReportOperator

    op = FormatReportOperator(task_id="report", model=MODEL)
    assert op.trigger_rule == "all_done"
    with mock.patch("tfmlops.steps.optimize.report", return_value={"verified": []}) as step:
        op.execute(context())
    assert step.call_args.kwargs == {"stamp": "manual__1"}


# ------------------------------------------------------------------------------------ rollout
def test_hook_builds_the_endpoint_from_the_connection():
    from tfmlops_airflow.hooks import TFServingHook

    ep = TFServingHook().endpoint()
    assert (ep.name, ep.host, ep.rest_port, ep.grpc_port) == ("tf_serving_default", "serving.test", 9501, 9500)
    assert (ep.models_root, ep.server_models_root, ep.model_config_file) == (
        "/models", "/srv/models", "/models/models.config")
    assert ep.base_path("m") == "/srv/models/m"
    probe = TFServingHook("probe_only").endpoint()
    assert (probe.rest_port, probe.grpc_port, probe.models_root, probe.model_config_file) == (1, 8500, "", None)


def test_publish_needs_a_models_root_and_closes_its_endpoints():
    from tfmlops_airflow.operators.rollout import PublishServingVersionOperator
    from tfmlops_airflow.params import ROLLOUT_POOL

    op = PublishServingVersionOperator(task_id="publish", model_name="m", version=3, targets="tf_serving_default")
    assert op.pool == ROLLOUT_POOL
    with mock.patch("tfmlops.steps.rollout.publish_registered", return_value={"version": 3}) as step, \
            mock.patch("tfmlops.deploy.endpoint.Endpoint.close") as close:
        assert op.execute(context()) == {"version": 3}
    (endpoint,) = step.call_args.args[3]
    assert endpoint.name == "tf_serving_default" and step.call_args.kwargs["s3_client"] is None
    close.assert_called_once()
    op = PublishServingVersionOperator(task_id="publish", model_name="m", version=3, targets=["probe_only"])
    with pytest.raises(AirflowFailException, match="probe_only.*models_root"):
        op.execute(context())


def test_model_card_skips_without_a_version_and_fails_on_an_unknown_one():
    from tfmlops_airflow.operators.card import ModelCardOperator

    assert ModelCardOperator.template_fields == ("model_name", "version")
    for unset in (None, "", "None"):  # register was skipped: its XCom renders as nothing
        op = ModelCardOperator(task_id="c", model_name="m", version=unset)
        assert op.trigger_rule == "all_done"
        with mock.patch("tfmlops.steps.card.write_model_card") as step:
            with pytest.raises(AirflowSkipException, match="no registered version"):
                op.execute(context())
        step.assert_not_called()
    op = ModelCardOperator(task_id="c", model_name="m", version=2)
    with mock.patch("tfmlops.steps.card.write_model_card", return_value={"version": 2}) as step:
        assert op.execute(context()) == {"version": 2}
    step.assert_called_once_with(TRACKING, "m", 2)
    with mock.patch("tfmlops.steps.card.write_model_card", side_effect=LookupError("no version 9")):
        with pytest.raises(AirflowFailException, match="no version 9"):
            ModelCardOperator(task_id="c", model_name="m", version="9").execute(context())


def test_rollout_maps_rollback_and_promotion():
    from tfmlops_airflow.assets import CHAMPION
    from tfmlops_airflow.operators.rollout import ServingRolloutFailed, ServingRolloutOperator

    op = ServingRolloutOperator(task_id="rollout", model_name="m", version="3", targets=["tf_serving_default"],
                                strategy="canary", holdout_uri="None", min_accuracy="0.9", latency_budget_ms="None",
                                keep="2", announce_champion=True)
    assert op.outlets == [CHAMPION]
    rolled_back = {"outcome": "rolled_back", "version": 3, "rolled_back": ["tf_serving_default"],
                   "reason": "canary accuracy 0.5 < 0.9"}
    with mock.patch("tfmlops.steps.rollout.rollout_registered", return_value=rolled_back) as step, \
            mock.patch("tfmlops.steps.rollout.load_canary_holdout") as holdout:
        with pytest.raises(ServingRolloutFailed, match="canary accuracy 0.5"):
            op.execute(context())
    holdout.assert_not_called()  # "None" from an unset Param means no holdout
    args = step.call_args.args
    assert args[:3] == (TRACKING, "m", "3") and args[4:7] == ("canary", args[5], 2)
    assert (args[5].min_accuracy, args[5].latency_budget_ms) == (0.9, None)
    promoted = {k: k for k in ("model", "strategy", "endpoints", "old_versions", "checks", "published", "retired",
                               "aliases", "seconds")} | {"outcome": "promoted", "version": 3}
    ctx = context()
    with mock.patch("tfmlops.steps.rollout.rollout_registered", return_value=promoted):
        assert op.execute(ctx)["outcome"] == "promoted"
    assert ctx["outlet_events"][CHAMPION].extra == {"model_name": "m", "version": 3}


def _router_connections(monkeypatch, **extra):
    """The router connection (its ``extra`` plus ``extra``) and the TF Serving connections of its
    two replica groups."""
    for conn, port in (("TF_SERVING_DEFAULT", 8501), ("TF_SERVING_CANARY", 8511)):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn}", json.dumps({"conn_type": "http", "host": "127.0.0.1",
                                                               "port": port, "extra": {"models_root": "/m"}}))
    monkeypatch.setenv("AIRFLOW_CONN_TF_SERVING_ROUTER", json.dumps({"conn_type": "generic", "extra": {
        "admin_socket": "/r.sock", "stable": ["tf_serving_default"], "canary": ["tf_serving_canary"], **extra}}))


def test_gray_rollout_goes_through_the_router(monkeypatch):
    from tfmlops_airflow.assets import CHAMPION
    from tfmlops_airflow.operators.rollout import ServingRolloutFailed, ServingRolloutOperator

    _router_connections(monkeypatch)
    op = ServingRolloutOperator(task_id="rollout", model_name="m", version="4", strategy="gray",
                                gray_steps="[10, 50, 100]", gray_window_s="30", max_error_rate_increase="0.02",
                                max_p99_increase_ms="40", announce_champion=True)
    promoted = {"model": "m", "version": 4, "strategy": "gray", "outcome": "promoted", "endpoints": ["a", "b"],
                "steps": [], "aliases": {}, "seconds": 1.0}
    ctx = context()
    with mock.patch("tfmlops.steps.rollout.gray_release_registered", return_value=promoted) as step:
        assert op.execute(ctx)["outcome"] == "promoted"
    args, kwargs = step.call_args.args, step.call_args.kwargs
    assert args[:3] == (TRACKING, "m", "4") and args[3].admin_socket == "/r.sock"
    assert {g: [ep.name for ep in eps] for g, eps in args[4].items()} == {
        "stable": ["tf_serving_default"], "canary": ["tf_serving_canary"]}
    assert kwargs["steps"] == [10.0, 50.0, 100.0] and kwargs["window_s"] == 30.0
    assert kwargs["log_prefixes"] is None  # no mirror logs named: the replicas' own request logs
    assert (kwargs["thresholds"].max_error_rate_increase, kwargs["thresholds"].max_p99_increase_ms) == (0.02, 40.0)
    assert ctx["outlet_events"][CHAMPION].extra == {"model_name": "m", "version": 4}
    rolled_back = {**promoted, "outcome": "rolled_back", "reason": "at 10 %: p99 90 ms vs stable 4 ms"}
    with mock.patch("tfmlops.steps.rollout.gray_release_registered", return_value=rolled_back):
        with pytest.raises(ServingRolloutFailed, match="rolled back \\(gray\\): at 10 %"):
            op.execute(context())


def test_ab_test_promotes_only_a_significant_win(monkeypatch):
    from tfmlops_airflow.assets import CHAMPION
    from tfmlops_airflow.operators.rollout import ABTestNotWon, ServingRolloutFailed, ServingRolloutOperator

    _router_connections(monkeypatch)
    args = {"task_id": "rollout", "model_name": "m", "version": "5", "strategy": "ab", "ab_share_pct": "30",
            "ab_window_s": "120", "ab_alpha": "0.01", "ab_min_samples": "500", "ab_labels_uri": "/labels",
            "ab_labels_wait_s": "60", "announce_champion": True}
    op = ServingRolloutOperator(**args)
    won = {"model": "m", "version": 5, "strategy": "ab", "outcome": "promoted", "decision": "promote",
           "challenger_failed": False, "endpoints": ["a", "b"], "variants": {}, "test": {"p_value": 0.001},
           "aliases": {}, "seconds": 1.0, "reason": "challenger significantly better"}
    ctx = context()
    with mock.patch("tfmlops.steps.rollout.ab_test_registered", return_value=won) as step:
        assert op.execute(ctx)["decision"] == "promote"
    kwargs = step.call_args.kwargs
    assert step.call_args.args[:3] == (TRACKING, "m", "5") and kwargs["labels"] == "/labels"
    assert kwargs["window_s"] == 120.0 and kwargs["settings"].share_pct == 30.0
    assert (kwargs["settings"].alpha, kwargs["settings"].min_samples, kwargs["settings"].labels_wait_s) == (0.01, 500,
                                                                                                          60.0)
    assert ctx["outlet_events"][CHAMPION].extra == {"model_name": "m", "version": 5}
    undecided = {**won, "outcome": "rolled_back", "decision": "inconclusive", "reason": "no significant difference"}
    with mock.patch("tfmlops.steps.rollout.ab_test_registered", return_value=undecided):
        with pytest.raises(ABTestNotWon, match="A/B inconclusive: no significant difference"):
            op.execute(context())
    broke = {**undecided, "decision": "keep", "challenger_failed": True, "reason": "challenger: error rate 9%"}
    with mock.patch("tfmlops.steps.rollout.ab_test_registered", return_value=broke):
        with pytest.raises(ServingRolloutFailed, match="A/B keep: challenger: error rate"):
            op.execute(context())
    for bad, match in (({"ab_labels_uri": "None"}, "needs ab_labels_uri"), ({"ab_share_pct": "100"}, "share_pct")):
        with mock.patch("tfmlops.steps.rollout.ab_test_registered") as step:
            with pytest.raises(AirflowFailException, match=match):
                ServingRolloutOperator(**{**args, **bad}).execute(context())
        step.assert_not_called()
    # a router connection naming its mirror's logs: A/B (and gray) read each group's logs there
    _router_connections(monkeypatch, mirror_log_prefix="/var/request-logs/router/")
    with mock.patch("tfmlops.steps.rollout.ab_test_registered", return_value=won) as step:
        op.execute(context())
    assert step.call_args.kwargs["log_prefixes"] == {"stable": ["/var/request-logs/router/stable/requests"],
                                                     "canary": ["/var/request-logs/router/canary/requests"]}
    refused = ValueError("the canary group's endpoints have no request_log_prefix")
    with mock.patch("tfmlops.steps.rollout.ab_test_registered", side_effect=refused):
        with pytest.raises(AirflowFailException, match="ab: the canary group's endpoints have no request_log_prefix"):
            op.execute(context())


def test_shadow_rollout_replays_through_the_router_and_fails_on_hold(monkeypatch):
    from tfmlops_airflow.assets import CHAMPION
    from tfmlops_airflow.operators.rollout import ServingRolloutFailed, ServingRolloutOperator

    _router_connections(monkeypatch, mirror_sink="http://127.0.0.1:8650")
    op = ServingRolloutOperator(task_id="rollout", model_name="m", version="4", strategy="shadow",
                                shadow_window_s="30", shadow_min_agreement="0.98", shadow_min_compared="40",
                                max_error_rate_increase="0.02", max_p99_increase_ms="40", announce_champion=True)
    promoted = {"model": "m", "version": 4, "strategy": "shadow", "outcome": "promoted", "endpoints": ["a", "b"],
                "report": {"agreement": 1.0}, "aliases": {}, "seconds": 1.0}
    ctx = context()
    with mock.patch("tfmlops.steps.rollout.shadow_release_registered", return_value=promoted) as step:
        assert op.execute(ctx)["report"] == {"agreement": 1.0}
    args, kwargs = step.call_args.args, step.call_args.kwargs
    assert args[:3] == (TRACKING, "m", "4") and args[3].admin_socket == "/r.sock"
    assert kwargs["sink_url"] == "http://127.0.0.1:8650" and kwargs["window_s"] == 30.0
    t = kwargs["thresholds"]
    assert (t.min_agreement, t.min_compared, t.max_error_rate_increase, t.max_p99_increase_ms) == (0.98, 40, 0.02, 40)
    assert ctx["outlet_events"][CHAMPION].extra == {"model_name": "m", "version": 4}
    held = {**promoted, "outcome": "rolled_back", "reason": "top-1 agreement 5.00% with the champion"}
    with mock.patch("tfmlops.steps.rollout.shadow_release_registered", return_value=held):
        with pytest.raises(ServingRolloutFailed, match="held \\(shadow\\): top-1 agreement"):
            op.execute(context())
    # a router connection without the mirror's sink: the task fails (no retry) saying what is missing
    _router_connections(monkeypatch)
    with mock.patch("tfmlops.steps.rollout.shadow_release_registered") as step:
        with pytest.raises(AirflowFailException, match="shadow: .*extra needs mirror_sink"):
            op.execute(context())
    step.assert_not_called()


def test_docker_targets_come_from_the_fleet():
    from tfmlops.deploy.endpoint import Endpoint
    from tfmlops_airflow.operators.rollout import ServingRolloutOperator

    op = ServingRolloutOperator(task_id="rollout", model_name="m", version=1, targets="docker:blue,tf_serving_default")
    replicas = [Endpoint("blue-0", models_root="/m"), Endpoint("blue-1", models_root="/m")]
    with mock.patch("tfmlops.steps.rollout.fleet_endpoints", return_value=replicas) as fleet:
        names = [ep.name for ep in op.serving_endpoints(op.targets)]
    fleet.assert_called_once_with("blue")
    assert names == ["blue-0", "blue-1", "tf_serving_default"]
    with pytest.raises(AirflowFailException, match="no serving endpoints"):
        op.serving_endpoints("None")


# ------------------------------------------------------------------------------------- online
def test_simulate_announces_the_partition():
    from tfmlops_airflow.assets import NEW_PARTITIONS
    from tfmlops_airflow.operators.online import SimulatePartitionOperator

    op = SimulatePartitionOperator(task_id="simulate", root="/parts", dataset="ds", size="30", drift="noise",
                                   amount="0.5", seed="-1")
    written = {"dataset": "ds", "partition_id": "p1", "uri": "/parts/ds/incoming/p1/data.npz", "drift": "noise",
               "amount": 0.5}
    ctx = context()
    with mock.patch("tfmlops.steps.simulate.simulate", return_value=written) as step:
        op.execute(ctx)
    assert step.call_args.args == ("/parts", "ds", 30, "noise", 0.5, None)
    event = ctx["outlet_events"][NEW_PARTITIONS]
    event.add_partitions.assert_called_once_with("ds|p1")
    assert event.extra == {**written, "root": "/parts"}


def test_feedback_join_announces_its_partition_or_skips():
    from tfmlops_airflow.assets import NEW_PARTITIONS
    from tfmlops_airflow.operators.online import FeedbackJoinOperator

    op = FeedbackJoinOperator(task_id="join", root="/parts", dataset="ds", log_prefix="/logs/m/requests",
                              min_rows="20")
    joined = {"partition_id": "p9", "uri": "/parts/ds/incoming/p9/data.parquet", "rows": 25}
    ctx = context()
    with mock.patch("tfmlops.steps.online.join_feedback", return_value=joined) as step:
        op.execute(ctx)
    assert step.call_args.args == ("/logs/m/requests", "/parts", "ds", 20, None, None)  # no model: the default spec
    event = ctx["outlet_events"][NEW_PARTITIONS]
    event.add_partitions.assert_called_once_with("ds|p9")
    assert event.extra == {"dataset": "ds", "partition_id": "p9", "uri": joined["uri"], "root": "/parts",
                           "source": "feedback"}
    with mock.patch("tfmlops.steps.online.join_feedback", return_value={"partition_id": None, "rows": 3}):
        with pytest.raises(AirflowSkipException, match="3 labeled rows, fewer than 20"):
            op.execute(context())


def test_ingest_reads_the_partition_of_its_run():
    from tfmlops_airflow.assets import NEW_PARTITIONS
    from tfmlops_airflow.operators.online import IngestPartitionsOperator

    op = IngestPartitionsOperator(task_id="ingest", root="/parts", dataset="ds", partitions="None")
    event = SimpleNamespace(extra={"dataset": "ds", "partition_id": "p2", "root": "/elsewhere"})
    found = {"valid": [{"partition_id": "p2"}], "quarantined": [], "consumed": [], "missing": []}
    with mock.patch("tfmlops.steps.online.ingest", return_value=found) as step:
        result = op.execute(context(partition_key="ds|p2", triggering_asset_events={NEW_PARTITIONS: [event]}))
    assert step.call_args.args[:3] == ("/elsewhere", "ds", ["p2"]) and result["root"] == "/elsewhere"
    assert result["valid_ids"] == ["p2"]
    with pytest.raises(AirflowSkipException, match="belongs to dataset 'other'"):
        op.execute(context(partition_key="other|p1"))
    with pytest.raises(AirflowFailException, match="is not '<dataset>|<partition-id>'"):
        op.execute(context(partition_key="no-separator"))
    nothing = {"valid": [], "quarantined": [{"partition_id": "p3", "reason": "NaN"}], "consumed": ["p1"], "missing": []}
    with mock.patch("tfmlops.steps.online.ingest", return_value=nothing) as step:
        with pytest.raises(AirflowSkipException, match=r"quarantined \['p3'\], already consumed \['p1'\]"):
            IngestPartitionsOperator(task_id="i", root="/parts", dataset="ds", partitions="").execute(context())
    assert step.call_args.args[2] is None  # every partition not consumed yet


def test_partitions_roots_outside_the_allow_list_are_refused(monkeypatch):
    """A form or an asset event cannot point the partition operators (which move and delete files
    on quarantine) at any folder: the root must be allowed, naming it otherwise."""
    from tfmlops_airflow.assets import NEW_PARTITIONS
    from tfmlops_airflow.operators.online import IngestPartitionsOperator, SimulatePartitionOperator

    event = SimpleNamespace(extra={"dataset": "ds", "partition_id": "p2", "root": "/etc"})
    op = IngestPartitionsOperator(task_id="ingest", root="/parts", dataset="ds")
    with mock.patch("tfmlops.steps.online.ingest") as step:
        with pytest.raises(AirflowFailException, match="partitions root '/etc' is not allowed"):
            op.execute(context(partition_key="ds|p2", triggering_asset_events={NEW_PARTITIONS: [event]}))
        for root in ("/parts/../etc", "s3://bucket/partsX", "/partsX"):
            with pytest.raises(AirflowFailException, match="is not allowed"):
                IngestPartitionsOperator(task_id="i", root=root, dataset="ds").execute(context())
        step.assert_not_called()
        ok = {"valid": [{"partition_id": "p"}], "quarantined": [], "consumed": [], "missing": []}
        step.return_value = ok
        for root in ("/parts/sub", "s3://bucket/parts/stream", "/elsewhere"):
            assert IngestPartitionsOperator(task_id="i", root=root, dataset="ds").execute(context())["root"] == root
    with mock.patch("tfmlops.steps.simulate.simulate") as step, pytest.raises(AirflowFailException):
        SimulatePartitionOperator(task_id="s", root="/tmp/x", dataset="ds").execute(context())
    step.assert_not_called()


def test_online_update_outcomes():
    from tfmlops.steps.online import OnlineUpdateError
    from tfmlops_airflow.operators.online import OnlineUpdateOperator

    op = OnlineUpdateOperator(task_id="task", model_name="m", root="/parts", dataset="ds", partition_ids=["p1"],
                              epochs="3", learning_rate="0.0003", holdout_rows="500", tolerance="None",
                              gate_metric="mae")
    outcomes = [({"status": "noop", "partitions": ["p1"]}, AirflowSkipException, "already consumed"),
                ({"status": "rejected", "gate": {"reason": "gain +0.0000"}}, AirflowSkipException, "gain"),
                (OnlineUpdateError("no champion to update"), AirflowFailException, "no champion")]
    for outcome, raised, match in outcomes:
        kwargs = {"side_effect": outcome} if isinstance(outcome, Exception) else {"return_value": outcome}
        with mock.patch("tfmlops.steps.online.update", **kwargs) as step, pytest.raises(raised, match=match):
            op.execute(context())
    args, kwargs = step.call_args.args, step.call_args.kwargs
    assert args[:5] == (TRACKING, "m", "/parts", "ds", ["p1"]) and kwargs["tags"] == LINEAGE
    assert (args[5].epochs, args[5].learning_rate, args[5].holdout_rows) == (3, 0.0003, 500)
    assert (args[5].tolerance, args[5].gate_metric) == (None, "mae")  # empty: the module's GATE
    with mock.patch("tfmlops.steps.online.update", return_value={"status": "registered", "version": 5}):
        assert op.execute(context())["version"] == 5


# ------------------------------------------------------------------------------------ monitor
def test_health_breach_fails_with_the_numbers():
    from tfmlops_airflow.operators.monitor import ServingHealthBreached, ServingHealthOperator

    op = ServingHealthOperator(task_id="health", model_name="m", targets="tf_serving_default,probe_only",
                               requests="20", max_p99_ms="250", max_error_rate="None")
    breached = {"breaches": ["tf_serving_default version 2 REST: p99 latency 300.0 ms > 250.0 ms"]}
    with mock.patch("tfmlops.steps.monitor.check_health", return_value=breached) as step:
        with pytest.raises(ServingHealthBreached, match="p99 latency 300.0 ms"):
            op.execute(context())
    tracking, model, endpoints, thresholds, requests = step.call_args.args
    assert [ep.name for ep in endpoints] == ["tf_serving_default", "probe_only"] and requests == 20
    assert (thresholds.max_p99_ms, thresholds.max_error_rate) == (250.0, 0.01)  # unset: the default
    # no prometheus_default connection: the replicas' metrics are scraped (at TF Serving's path)
    assert step.call_args.kwargs == {"prometheus": None, "window_s": 300, "scrape_window_s": 15.0}
    assert endpoints[0].metrics_url == "http://serving.test:9501/monitoring/prometheus/metrics"


def test_health_reads_prometheus_when_its_connection_exists(monkeypatch):
    from tfmlops_airflow.hooks import PrometheusHook
    from tfmlops_airflow.operators.monitor import ServingHealthOperator

    monkeypatch.setenv("AIRFLOW_CONN_PROMETHEUS_DEFAULT", json.dumps({
        "conn_type": "http", "host": "prom.test", "port": 9091, "login": "u", "password": "p",
        "extra": {"path_prefix": "/prom/", "timeout": 4, "selector": 'job="tf-serving"'}}))
    monkeypatch.setenv("AIRFLOW_CONN_TF_SERVING_METRICS", json.dumps({
        "conn_type": "http", "host": "s.test", "port": 8601, "extra": {"metrics_path": "/metrics"}}))
    op = ServingHealthOperator(task_id="health", model_name="m", targets=["tf_serving_metrics"], window_s="600",
                               scrape_window_s="5")
    with mock.patch("tfmlops.steps.monitor.check_health", return_value={"breaches": [], "sources": {}}) as step, \
            mock.patch.object(PrometheusHook, "close") as close:
        op.execute(context())
    hook = step.call_args.kwargs["prometheus"]
    assert isinstance(hook, PrometheusHook) and hook.prometheus_conn_id == "prometheus_default"
    assert (step.call_args.kwargs["window_s"], step.call_args.kwargs["scrape_window_s"]) == (600, 5.0)
    close.assert_called_once()
    client = hook.client
    assert (client.base_url, client.timeout, client.selector) == ("http://prom.test:9091/prom", 4.0, 'job="tf-serving"')
    assert client._session.auth == ("u", "p")
    assert step.call_args.args[2][0].metrics_url == "http://s.test:8601/metrics"
    assert PrometheusHook.configured() and not PrometheusHook.configured("no_such_connection")
    off = ServingHealthOperator(task_id="health", model_name="m", prometheus_conn_id=None)
    with mock.patch("tfmlops.steps.monitor.check_health", return_value={"breaches": []}) as step:
        off.execute(context())
    assert step.call_args.kwargs["prometheus"] is None


def test_quality_drift_returns_the_retrain_decision():
    from tfmlops_airflow.operators.monitor import ModelQualityDriftOperator

    op = ModelQualityDriftOperator(task_id="q", model_name="m", root="/parts", dataset="ds", newest="2",
                                   gate_metric="f1_macro", gate_threshold="0.8", max_input_psi="0.3",
                                   max_prediction_psi="0.3")
    decision = {"retrain": True, "reason": "input drift"}
    with mock.patch("tfmlops.steps.monitor.check_quality_drift", return_value=decision) as step:
        assert op.execute(context()) == decision
    assert step.call_args.args[2].name == "tf_serving_default" and step.call_args.kwargs["newest"] == 2
    assert (step.call_args.args[5].gate_metric, step.call_args.args[5].gate_threshold) == ("f1_macro", 0.8)
    empty = ModelQualityDriftOperator(task_id="q", model_name="m", root="/parts", gate_metric="None",
                                      gate_threshold="None")
    with mock.patch("tfmlops.steps.monitor.check_quality_drift", return_value=decision) as step:
        empty.execute(context())
    assert (step.call_args.args[5].gate_metric, step.call_args.args[5].gate_threshold) == (None, None)
    with mock.patch("tfmlops.steps.monitor.check_quality_drift", side_effect=LookupError("not AVAILABLE")):
        with pytest.raises(AirflowFailException, match="not AVAILABLE"):
            op.execute(context())
    outside = ModelQualityDriftOperator(task_id="q", model_name="m", root="/etc", dataset="ds")
    with mock.patch("tfmlops.steps.monitor.check_quality_drift") as step:
        with pytest.raises(AirflowFailException, match="partitions root '/etc' is not allowed"):
            outside.execute(context())
    step.assert_not_called()


def test_live_drift_passes_its_settings_and_returns_the_decision():
    from tfmlops_airflow.operators.monitor import LiveDriftOperator

    op = LiveDriftOperator(task_id="live", model_name="m", log_prefix="/logs/m/requests", window_s="600",
                           min_rows="50", max_input_psi="0.3", max_prediction_psi="0.4")
    decision = {"retrain": True, "reason": "live input drift"}
    with mock.patch("tfmlops.steps.monitor.check_live_drift", return_value=decision) as step:
        assert op.execute(context()) == decision
    assert step.call_args.args[1:4:2] == ("m", "/logs/m/requests")
    assert step.call_args.args[2].name == "tf_serving_default"
    assert (step.call_args.args[4].max_input_psi, step.call_args.args[4].max_prediction_psi) == (0.3, 0.4)
    assert (step.call_args.kwargs["window_s"], step.call_args.kwargs["min_rows"]) == (600.0, 50)
    with mock.patch("tfmlops.steps.monitor.check_live_drift", side_effect=LookupError("no champion")):
        with pytest.raises(AirflowFailException, match="no champion"):
            op.execute(context())


# ------------------------------------------------------------------------------------- search
def test_prepare_search_pushes_the_study_and_returns_the_worker_indices():
    from tfmlops.search import SearchError
    from tfmlops_airflow.operators.search import SEARCH_KEY, PrepareSearchOperator

    op = PrepareSearchOperator(task_id="prepare", model_name="m", model_spec={"module": "x"}, search_space="{}",
                               n_trials="6", parallelism="3", time_budget_s="600", storage="journal:/s.log",
                               pruner="median", seed="2", gate_metric="None", dataset_uri="mnist")
    prepared = {"study_name": "m-r1", "workers": [0, 1, 2]}
    ctx = context()
    ctx["ti"].xcom_push = mock.MagicMock()
    with mock.patch("tfmlops.steps.search.prepare", return_value=prepared) as step:
        assert op.execute(ctx) == [0, 1, 2]  # the mapped worker task expands over the return value
    args = step.call_args.args
    assert args[:3] == (TRACKING, "m", "search manual__1") and args[3] == LINEAGE
    assert args[5:] == ("{}", 6, 3, 600.0, "journal:/s.log", "median", 2, None)
    ctx["ti"].xcom_push.assert_called_once_with(key=SEARCH_KEY, value=prepared)
    assert op.multiple_outputs is False
    with mock.patch("tfmlops.steps.search.prepare", side_effect=SearchError("'x': low (2) must be below high (1)")):
        with pytest.raises(AirflowFailException, match="must be below high"):
            op.execute(ctx)


def test_search_worker_passes_its_index_and_try_number_and_finish_fails_without_a_trial():
    from tfmlops.search import SearchError
    from tfmlops_airflow.operators.search import FinishSearchOperator, SearchWorkerOperator

    op = SearchWorkerOperator(task_id="w", search={"study_name": "s"}, worker="1", model_spec={"module": "x"},
                              dataset_uri="mnist")
    ctx = context()
    ctx["ti"].try_number = 2
    with mock.patch("tfmlops.steps.search.work", return_value={"complete": [3]}) as step:
        assert op.execute(ctx) == {"complete": [3]}
    assert step.call_args.args[:4] == (TRACKING, {"study_name": "s"}, 1, 2)  # a retry is attempt 2
    finish = FinishSearchOperator(task_id="finish", search={"study_name": "s"})
    with mock.patch("tfmlops.steps.search.finish", side_effect=SearchError("no trial completed out of 2")):
        with pytest.raises(AirflowFailException, match="no trial completed"):
            finish.execute(context())


def test_no_search_asked_prepares_nothing_and_finish_passes_the_spec_on():
    """tf_offline_retrain's default (0 trials): no study and no run; the mapped workers get no index
    (they skip) and finish returns the module's spec with no search lineage."""
    from tfmlops_airflow.operators.search import SEARCH_KEY, FinishSearchOperator, PrepareSearchOperator

    op = PrepareSearchOperator(task_id="prepare", model_name="m", model_spec={"module": "x"}, search_space="",
                               n_trials="0", parallelism="2", time_budget_s="600", storage="journal:/s.log",
                               dataset_uri="mnist")
    ctx = context()
    ctx["ti"].xcom_push = mock.MagicMock()
    with mock.patch("tfmlops.steps.search.prepare") as step:
        assert op.execute(ctx) == []
    step.assert_not_called()
    ctx["ti"].xcom_push.assert_called_once_with(key=SEARCH_KEY, value={})
    finish = FinishSearchOperator(task_id="finish", search={}, model_spec={"module": "x", "hparams": {"a": 1}})
    assert finish.trigger_rule == "none_failed"
    with mock.patch("tfmlops.steps.search.finish") as step:
        assert finish.execute(context()) == {"model_spec": {"module": "x", "hparams": {"a": 1}},
                                             "parent_run_id": None, "best_trial": None}
    step.assert_not_called()


# ------------------------------------------------------------------------------------ reconcile
def test_reconcile_plans_a_rollout_per_model_that_differs_with_its_settings(monkeypatch):
    from tfmlops.steps.reconcile import Intent
    from tfmlops_airflow.operators.reconcile import ReconcileServingOperator

    _router_connections(monkeypatch)
    monkeypatch.setenv("AIRFLOW_VAR_TFMLOPS_SERVING_GRAYED", json.dumps({"strategy": "gray", "gray_window_s": 30,
                                                                          "targets": ["tf_serving_canary"]}))
    looked_at = {}

    def decide(tracking_uri, model, endpoints):
        looked_at[model] = [ep.name for ep in endpoints]
        if model == "same":
            return {"model": model, "champion": 4, "off": {}, "action": "none", "reason": "every target serves 4"}
        return {"model": model, "champion": 3, "off": {"x": 2}, "action": "rollout", "reason": "r" * 600}

    intents = [Intent("grayed", 3, 2), Intent("same", 4, 4)]
    with mock.patch("tfmlops.steps.reconcile.registry_intents", return_value=intents) as listed, \
            mock.patch("tfmlops.steps.reconcile.decide", side_effect=decide):
        confs = ReconcileServingOperator(task_id="plan", model_name="None", models=["grayed", "same"]).execute(
            context())
    listed.assert_called_once_with(TRACKING, ["grayed", "same"])
    # gray: the router's stable group is what clients get (not the targets); replace: the form's targets
    assert looked_at == {"grayed": ["tf_serving_default"], "same": ["tf_serving_default"]}
    (conf,) = confs
    assert (conf["model_name"], conf["version"], conf["strategy"], conf["gray_window_s"]) == ("grayed", "3", "gray", 30)
    assert conf["reason"] == "r" * 500 and conf["targets"] == ["tf_serving_canary"]


def test_approval_settings_hold_router_releases_and_gate_other_rollouts(monkeypatch):
    """``before_promote``: the router strategies hold (the step gets ``hold_for_approval``) and the
    task returns the held result for the approval task; a canary refuses it (``before_rollout``
    instead). ``before_rollout``: the rollout runs only on an approval; a rejection is kept on the
    version and skips the task, with nothing rolled out."""
    from tfmlops_airflow.operators.rollout import ServingRolloutOperator

    _router_connections(monkeypatch, mirror_sink="http://sink:8650")
    held = {"model": "m", "version": 5, "strategy": "shadow", "outcome": "awaiting_approval", "held_share_pct": 0.0,
            "canary_old": [4], "report": {"agreement": 1.0}, "reason": "", "seconds": 2.0, "decision": "promote"}
    op = ServingRolloutOperator(task_id="rollout", model_name="m", version="5", strategy="shadow",
                                approval="before_promote")
    with mock.patch("tfmlops.steps.rollout.shadow_release_registered", return_value=held) as step:
        result = op.execute(context())
    assert step.call_args.kwargs["hold_for_approval"] is True
    assert result == {k: held[k] for k in ("model", "version", "strategy", "outcome", "held_share_pct", "canary_old",
                                           "report", "reason", "seconds")}
    canary = ServingRolloutOperator(task_id="rollout", model_name="m", version="5", strategy="canary",
                                    approval="before_promote")
    with pytest.raises(AirflowFailException, match="approved before it starts: approval before_rollout"):
        canary.execute(context())

    rejected = {"approved": False, "decision": "rejected", "by": "ana", "note": "freeze"}
    gated = ServingRolloutOperator(task_id="rollout", model_name="m", version="5", strategy="replace",
                                   approval="before_rollout", decision=rejected)
    with mock.patch("tfmlops.steps.rollout.record_decision") as record, \
            mock.patch("tfmlops.steps.rollout.rollout_registered") as rollout:
        with pytest.raises(AirflowSkipException, match="not rolled out: rejected by ana: freeze"):
            gated.execute(context())
    record.assert_called_once_with(TRACKING, "m", 5, rejected)
    rollout.assert_not_called()
    gated.decision = None  # the approval before it never ran
    with pytest.raises(AirflowFailException, match="no decision reached this task"):
        gated.execute(context())


def test_an_approval_by_whoever_triggered_the_run_is_asked_again(monkeypatch):
    """Separation of duties: the triggering user's Approve re-asks the same question until the same
    deadline; their Reject counts; with ``[tfmlops] allow_self_approval`` their Approve counts."""
    from tfmlops_airflow.operators.approval import ServingApprovalOperator

    op = ServingApprovalOperator(task_id="approve", model_name="m", version="5", rollout={})
    question = {"subject": "Promote m version 5?", "body": "…", "champion": 4, "deadline": "2026-12-07T12:00:00+00:00",
                "assigned_users": None}
    ctx = context(dag_run=SimpleNamespace(triggering_user_name="otto"))
    approve = {"chosen_options": ["Approve"], "params_input": {"note": "mine"}, "responded_by_user": {"name": "otto"}}
    with mock.patch.object(ServingApprovalOperator, "_ask", return_value=None) as ask:
        assert op.execute_complete(ctx, approve, question=question) is None
        ask.assert_called_once_with(ctx, question)
        reject = {**approve, "chosen_options": ["Reject"]}
        assert op.execute_complete(ctx, reject, question=question)["decision"] == "rejected"
        other = {**approve, "responded_by_user": {"name": "alma"}}
        assert op.execute_complete(ctx, other, question=question) | {"at": None} == {
            "approved": True, "decision": "approved", "by": "alma", "note": "mine", "at": None}
        monkeypatch.setenv("AIRFLOW__TFMLOPS__ALLOW_SELF_APPROVAL", "True")
        assert op.execute_complete(ctx, approve, question=question)["by"] == "otto"
    assert ask.call_count == 1
