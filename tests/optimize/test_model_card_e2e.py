"""The model card of real registered versions (a small MNIST run against a real ``mlflow server``):
every section with the recorded numbers, attached to the version, and rendered in headless Chromium."""

from __future__ import annotations

import json
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
    assert summary["per_class"] == 10 and summary["serving_events"] == 1
    files = {Path(a.path).name for a in registry.client(mlflow_server).list_artifacts(second["run_id"], "model_card")}
    assert files == {"model_card.md", "model_card.html", "model_card.json"}
    local = registry.download(mlflow_server, summary["card_uri"].rsplit("/", 1)[0], tmp_path / "card")
    md = (local / "model_card.md").read_text()

    for title in model_card.SECTIONS:
        assert f"## {title}" in md, title
    m = second["metrics"]
    for text in (f"- **Accuracy:** {m['accuracy']:.4f}", f"- **F1 (macro):** {m['f1_macro']:.4f}",
                 f"- **Fingerprint (SHA-256):** {second['dataset_fingerprint']}", "tf_offline_retrain / manual__card2",
                 f"- **Parent version:** {first['version']} (the champion the validation gate compared it with)",
                 "- **Decision:** passed", f"- **Reason:** {second['gate']['reason']}",
                 f"| int8-tflite | litert | {tflite['bytes']:,} | {tflite['gzipped_bytes']:,} | "
                 f"{tflite['checks'][0]['accuracy']:.4f} |", "| promoted | replace | tf_serving_default |",
                 f"| {MODEL}-v2-int8-mobile.zip | {mobile['bundles']['int8']['bytes']:,} | int8 | "
                 f"{mobile['bundles']['int8']['argmax_agreement']:.4f} | passed |",
                 "- **Aliases:** challenger, champion"):  # record_rollout leaves challenger where it was
        assert text in md, text
    card = json.loads((local / "model_card.json").read_text())
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
    assert len(sections["Metrics"]["rows"]) == 10
    assert sections["Formats"]["rows"][0][:3] == ["int8-tflite", "litert", f"{tflite['bytes']:,}"]
    assert sections["Serving history"]["rows"][0][1:3] == ["promoted", "replace"]
    assert len(sections["Known limitations"]["items"]) >= 4
    assert (tmp_path / "card.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
