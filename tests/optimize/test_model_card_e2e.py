"""The model card of real registered versions (a small MNIST run against a real ``mlflow server``):
every section with the recorded numbers — the model's spec, its own intended use (the module's
``MODEL_CARD``), the task's metrics and plots —, attached to the version, and rendered in headless
Chromium."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tfmlops import model_card, registry

from .conftest import require_tfjs_runtimes

MODEL = "card_e2e"
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def _train_register_roll_out(mlflow_server, spec, dag_run_id: str) -> dict:
    """What tf_offline_retrain records, step by step (the rollout's record without a server)."""
    from tfmlops.steps import retrain

    lineage = {"airflow.dag_id": "tf_offline_retrain", "airflow.run_id": dag_run_id, "airflow.task_id": "register"}
    trained = retrain.train(mlflow_server, MODEL, dag_run_id, lineage, spec, train_config={"epochs": 2})
    metrics = retrain.evaluate(mlflow_server, trained["run_id"], trained["model_uri"], spec)
    gate = retrain.gate_against_champion(mlflow_server, MODEL, trained["run_id"], metrics["accuracy"], spec,
                                         threshold=0.5, tolerance=1.0)
    assert gate["passed"], gate
    version = retrain.register(mlflow_server, MODEL, trained["run_id"], trained["model_uri"], metrics,
                               {**lineage, "dataset_fingerprint": trained["dataset_fingerprint"]})["version"]
    registry.record_rollout(mlflow_server, MODEL, version, {
        "outcome": "promoted", "strategy": "replace", "endpoints": ["tf_serving_default"], "reason": ""})
    return {**trained, "metrics": metrics, "version": version, "gate": gate}


def test_model_card_of_a_registered_version(mlflow_server, tmp_path):
    from tfmlops.optimize import OptimizeConfig
    from tfmlops.steps import optimize as optimize_steps
    from tfmlops.steps.card import write_model_card
    from tfmlops.steps.retrain import DataSpec, resolve

    spec = DataSpec(sample_fraction=0.03)
    first = _train_register_roll_out(mlflow_server, spec, "manual__card1")
    second = _train_register_roll_out(mlflow_server, spec, "manual__card2")
    model = resolve(mlflow_server, MODEL, "champion")
    assert model["version"] == second["version"] == first["version"] + 1
    optimize_steps.optimize_variant(mlflow_server, model, "int8", spec, OptimizeConfig(int8_samples=100), stamp="c")
    tflite = optimize_steps.export_format(mlflow_server, model, "int8", "tflite", spec, stamp="c")
    optimize_steps.report(mlflow_server, model, stamp="c")
    mobile = optimize_steps.mobile_bundles(mlflow_server, model, spec, ["int8", "float16"], stamp="c")
    assert list(mobile["bundles"]) == ["int8"] and mobile["missing"] == ["float16"]  # float16 was not built

    summary = write_model_card(mlflow_server, MODEL, "champion")
    assert summary["version"] == second["version"] and summary["verified_formats"] == 1
    assert summary["per_class"] == 10 and summary["serving_events"] == 1 and summary["task"] == "multiclass"
    assert summary["plots"] == 2 and summary["declared"] == "tfmlops_examples.mnist_mlp.MODEL_CARD"
    files = {Path(a.path).name for a in registry.client(mlflow_server).list_artifacts(second["run_id"], "model_card")}
    assert files == {"model_card.md", "model_card.html", "model_card.json"}
    local = registry.download(mlflow_server, summary["card_uri"].rsplit("/", 1)[0], tmp_path / "card")
    md = (local / "model_card.md").read_text()

    for title in model_card.SECTIONS:
        assert f"## {title}" in md, title
    m = second["metrics"]
    smoke = mobile["bundles"]["int8"]
    dtypes = ", ".join(f"{k}: {v}" for k, v in smoke["input_dtypes"].items())
    run = f"runs:/{second['run_id']}"
    for text in (f"- **Accuracy:** {m['accuracy']:.4f}", f"- **F1 (macro):** {m['f1_macro']:.4f}",
                 "- **Module:** tfmlops_examples.mnist_mlp", "- **Task:** multiclass", "| pixels | float32 | [784] |",
                 "- **Classes:** 10: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9", "- **Headline metric:** Accuracy",
                 "- **Spec read from:** its run's model.* tags",  # register() got no spec in this test
                 "- **Source:** tfmlops_examples.mnist_mlp.MODEL_CARD", "- **Purpose:** Classify a handwritten digit",
                 f"| Confusion matrix (test split) | {run}/plots/confusion_matrix.png | "
                 f"{run}/evaluation/confusion_matrix.json |",
                 f"| Training curves | {run}/plots/training_curves.png | – |",
                 f"- **Fingerprint (SHA-256):** {second['dataset_fingerprint']}", "tf_offline_retrain / manual__card2",
                 f"- **Parent version:** {first['version']} (the champion the validation gate compared it with)",
                 "- **Decision:** passed", f"- **Reason:** {second['gate']['reason']}",
                 f"| int8-tflite | litert | {tflite['bytes']:,} | {tflite['gzipped_bytes']:,} | accuracy | "
                 f"{tflite['checks'][0]['accuracy']:.4f} |", "| promoted | replace | tf_serving_default |",
                 f"| {MODEL}-v2-int8-mobile.zip | {smoke['bytes']:,} | {dtypes} | {smoke['argmax_agreement']:.4f} | "
                 f"{smoke['max_abs_diff']:.2e} | yes | passed |",
                 "| 1 → 2 (promoted) | rollout |",  # the model's audit trail: served version 1, then 2
                 "- **Aliases:** challenger, champion"):  # record_rollout leaves challenger where it was
        assert text in md, text
    assert "Trained and evaluated on MNIST-style data only" in md  # the module's own limitations
    card = json.loads((local / "model_card.json").read_text())
    assert card["model"]["source_sha256"] == registry.client(mlflow_server).get_run(
        second["run_id"]).data.tags["model.module_sha256"]
    assert [p["name"] for p in card["plots"]] == ["confusion_matrix", "training_curves"]
    page = (local / "model_card.html").read_text()
    assert page.count('<img src="data:image/png;base64,iVBORw0KGgo') == 2  # embedded: the page stays standalone
    assert sum(r["support"] for r in card["per_class"]) == card["data"]["test_rows"] > 0
    matrix = json.loads(registry.download(mlflow_server, f"runs:/{second['run_id']}/evaluation/confusion_matrix.json",
                                          tmp_path / "cm").read_text())
    assert [r["recall"] for r in card["per_class"]] == [row[k] / sum(row) for k, row in enumerate(matrix)]

    mv = registry.client(mlflow_server).get_model_version(MODEL, str(second["version"]))
    assert mv.tags["model_card"] == summary["card_uri"]
    assert mv.description.startswith("test accuracy") and f"`{summary['card_uri']}`" in mv.description
    write_model_card(mlflow_server, MODEL, str(second["version"]))  # again: the link is replaced, not added
    mv = registry.client(mlflow_server).get_model_version(MODEL, str(second["version"]))
    assert mv.description.count("Model card:") == 1

    # the first version: superseded by the second, parent none, no formats yet
    write_model_card(mlflow_server, MODEL, str(first["version"]))
    first_md = registry.download(mlflow_server, f"runs:/{first['run_id']}/model_card/model_card.md",
                                 tmp_path / "first").read_text()
    assert "| superseded | replace |" in first_md and f"version {second['version']} promoted" in first_md
    assert "- **Aliases:** previous" in first_md and "no champion when it was gated" in first_md
    assert "No exported format has been verified yet" in first_md
    with pytest.raises(LookupError):
        write_model_card(mlflow_server, MODEL, "99")

    # rendered by a browser: every section visible with its numbers, nothing executed, no page error
    require_tfjs_runtimes(browser=True)
    from tfmlops.formats.runtimes import chromium_binary, node_binary

    result_file = tmp_path / "rendered.json"
    subprocess.run([node_binary(), str(ROOT / "web" / "scripts" / "card_check.mjs"),
                    "--page", (local / "model_card.html").as_uri(), "--result", str(result_file),
                    "--screenshot", str(tmp_path / "card.png"), "--chromium", chromium_binary()],
                   check=True, timeout=120, capture_output=True)
    rendered = json.loads(result_file.read_text())
    assert rendered["console"] == [] and rendered["scripts"] == 0
    assert rendered["title"] == f"Model card: {MODEL} version {second['version']}"
    sections = {s["heading"]: s for s in rendered["sections"]}
    assert set(model_card.SECTIONS) <= set(sections) and all(s["visible"] for s in rendered["sections"])
    assert sections["Metrics"]["terms"]["Accuracy"] == f"{m['accuracy']:.4f}"
    assert sections["Model"]["terms"]["Task"] == "multiclass" and sections["Model"]["rows"] == [
        ["pixels", "float32", "[784]"]]
    assert len(sections["Evaluation plots"]["rows"]) == 2
    assert len(sections["Metrics"]["rows"]) == 10
    assert sections["Formats"]["rows"][0][:3] == ["int8-tflite", "litert", f"{tflite['bytes']:,}"]
    assert sections["Serving history"]["rows"][0][1:3] == ["promoted", "replace"]
    assert len(sections["Known limitations"]["items"]) >= 4
    assert (tmp_path / "card.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


DIGIT_WORDS = ("digit", "pixel", "784", "mnist", "handwrit")


@pytest.mark.parametrize("module", ["tfmlops_examples.churn", "tfmlops_examples.diabetes"])
def test_model_card_of_a_binary_and_a_regression_version(mlflow_server, tmp_path, module):
    """What a churn-like (binary, string inputs, AUC) and a diabetes-like (regression, RMSE, no
    classes) version record — the spec on the version, the task's test metrics and plots, a report
    with a format that does not apply and a skipped variant, a mobile smoke run — read back into
    their cards (no training: the records are written as the steps write them)."""
    import numpy as np

    from tfmlops import evaluation, modelspec
    from tfmlops.steps.card import write_model_card

    spec = modelspec.read_spec(module)
    name = f"card_{spec.task}"
    rng = np.random.default_rng(0)
    if spec.task == "binary":
        y = rng.integers(0, 2, 200)
        outputs = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    else:
        y = rng.uniform(25, 346, 88)
        outputs = y + rng.normal(0, 55, 88)
    metrics = evaluation.task_metrics(spec.task, y, outputs, spec.num_classes)
    scalars = {k: v for k, v in metrics.items() if k not in evaluation.PLOT_KEYS}
    metric, headline = ("auc", "AUC") if spec.task == "binary" else ("rmse", "RMSE")
    run_id = registry.start_run(mlflow_server, name, "records", {**spec.to_tags(), "dataset_uri": "data/examples",
                                                                  "dataset_fingerprint": "e" * 64})
    registry.log_params(mlflow_server, run_id, {"data.train_rows": 800, "data.test_rows": len(y)})
    registry.log_metrics(mlflow_server, run_id, {f"test_{k}": v for k, v in scalars.items()})
    registry.log_evaluation_plots(mlflow_server, run_id, spec.task, metrics, y, outputs, spec.class_names)
    records = tmp_path / "records"
    (records / "report").mkdir(parents=True)
    (records / "report" / "report.json").write_text(json.dumps({
        "rows": [{"artifact": "float-saved_model", "variant": "float", "format": "saved_model",
                  "runtime": "tensorflow", "bytes": 12_345, "gzipped_bytes": 6_789, "metric": metric,
                  "score": scalars[metric], "accuracy": None, "latency_ms": 0.05, "passed": True, "problem": None},
                 {"artifact": "float-onnx", "variant": "float", "format": "onnx", "runtime": None, "bytes": None,
                  "gzipped_bytes": None, "metric": None, "score": None, "accuracy": None, "latency_ms": None,
                  "passed": None, "problem": "not applicable: no converter for this model here"}],
        "variants": [{"variant": "distilled", "status": "skipped", "metric": metric,
                      "reason": "skipped: the model module has no build_student"}]}))
    (records / "smoke").mkdir()
    (records / "smoke" / "smoke.json").write_text(json.dumps({
        "bundle": f"{name}-v1-float16-mobile.zip", "task": spec.task, "rows": 8, "bytes": 20_000,
        "argmax_agreement": 1.0 if spec.task == "binary" else None, "max_abs_diff": 0.001,
        "labels_match": True if spec.task == "binary" else None,
        "input_dtypes": {k: d for k, (d, _) in spec.inputs.items()}, "passed": True}))
    registry.log_files(mlflow_server, run_id, records / "report", "formats/report")
    registry.log_files(mlflow_server, run_id, records / "smoke", "mobile/float16")
    registry.log_files(mlflow_server, run_id, records / "smoke", "model")  # something for the version's source
    version = registry.register(mlflow_server, name, f"runs:/{run_id}/model", run_id,
                                {**spec.to_tags(), **{f"test_{k}": round(v, 6) for k, v in scalars.items()}})

    summary = write_model_card(mlflow_server, name, str(version))
    assert summary["task"] == spec.task and summary["not_applicable_formats"] == 1 and summary["plots"] == 1
    local = registry.download(mlflow_server, summary["card_uri"].rsplit("/", 1)[0], tmp_path / "card")
    md, page = (local / "model_card.md").read_text(), (local / "model_card.html").read_text()
    for title in model_card.SECTIONS:
        assert f"## {title}" in md, title
    for dtype_name, (dtype, _) in spec.inputs.items():
        assert f"| {dtype_name} | {dtype} | [] (scalar) |" in md
    metric_lines = [line for line in md.split("## Metrics")[1].split("##")[0].splitlines() if line.startswith("- **")]
    assert metric_lines[1:3] == [f"- **Headline metric:** {headline}", f"- **{headline}:** {scalars[metric]:.4f}"]
    plot = "roc_curve" if spec.task == "binary" else "residuals"
    for text in (f"- **Module:** {module}", f"- **Task:** {spec.task}", f"- **Module source (SHA-256):** "
                 f"{spec.source_sha256}", "- **Spec read from:** the version's model.* tags",
                 f"- **Source:** {module}.MODEL_CARD", "| float-onnx | no converter for this model here |",
                 f"| float-saved_model | tensorflow | 12,345 | 6,789 | {metric} | {scalars[metric]:.4f} |",
                 "| distilled | skipped | ", "the model module has no build_student",
                 f"| runs:/{run_id}/plots/{plot}.png | runs:/{run_id}/evaluation/{plot}.json |",
                 "synthetic" if spec.task == "binary" else "demo"):  # the module's own honest purpose
        assert text in md, text
    if spec.task == "binary":
        assert "- **Classes:** 2: stays, churns" in md and "- **Label:** churned" in md
        assert "| churns | " in md and "| stays | not recorded |" in md  # no confusion matrix logged for binary
    else:
        assert "- **Target:** progression (the regressed value)" in md and "Classes" not in md
        assert md.count("\n| Q") == 4 and "n/a (regression)" in md
    words = re.sub(r"\b[0-9a-f]{32,64}\b", "", md.lower())  # hashes and run ids may hold "784"
    assert not [w for w in DIGIT_WORDS if w in words], md
    assert page.count('<img src="data:image/png;base64,') == 1
