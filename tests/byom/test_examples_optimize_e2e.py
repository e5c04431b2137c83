"""Bring your own model, part 2: ``tf_optimize_export`` with its default form on each shipped example
(an image CNN, a tabular binary classifier with string columns, a regressor, a text classifier),
each version as ``tf_offline_retrain`` registered it (``trained``, shared with the serving tests).

Every variant passes its gate by the task's metric or is skipped with the reason (a layer tfmot cannot
wrap, no TFLite builtin for an op, no ``build_student``); every format that applies is verified in
its runtime and the ones that do not are recorded with what they lack, in the report and the card;
a tabular regressor's mobile bundles carry its input names and run from their own files.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import pytest

from .conftest import EXAMPLES, ROOT, states

pytestmark = pytest.mark.e2e

# what does not apply to each example, and the words its reason must contain
NOT_APPLICABLE = {
    "digits_cnn": {},
    "churn": {"float-tflite": "DenseBincount", "float-h5": "StringLookup", "float-tfjs_layers": "StringLookup",
              "float-tfjs_graph": "1-D keys only"},
    "diabetes": {"float-tfjs_layers": "Normalization"},
    "reviews": {"float-tflite": "StringSplitV2", "float-h5": "TextVectorization", "float-onnx": "onnxruntime"},
}
SKIPPED = {  # variant -> words of its reason
    "digits_cnn": {},
    "churn": {"int8": "DenseBincount", "pruned": "StringLookup not supported by tfmot", "qat_int8": "tfmot"},
    "diabetes": {"pruned": "Normalization not supported by tfmot", "qat_int8": "Normalization"},
    "reviews": {"pruned": "TextVectorization not supported by tfmot", "distilled": "build_student"},
}


@pytest.fixture(scope="module")
def optimized(trained, connections, mlflow_server):
    """One tf_optimize_export run with the default form per example's champion: {module: (run, states)}."""
    from airflow.dag_processing.dagbag import DagBag

    from .conftest import require_tfjs

    require_tfjs()
    bag = DagBag(dag_folder=str(ROOT / "dags" / "tf_optimize_export.py"))
    assert not bag.import_errors
    dag = bag.get_dag("tf_optimize_export")
    return {name: (run, states(run)) for name in EXAMPLES
            for run in [dag.test(run_conf={"model_name": f"byom_{name}"})]}


def _artifact(mlflow_server, run_id: str, path: str, tmp: str):
    from tfmlops import registry

    return registry.download(mlflow_server, f"runs:/{run_id}/{path}", tmp)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_defaults_pass_or_skip_every_variant_and_verify_every_format_that_applies(name, optimized, mlflow_server):
    from mlflow import MlflowClient

    run, task_states = optimized[name]
    assert str(run.state) == "success", {t: s for t, s in task_states.items() if s != "success"}
    assert not [t for t, s in task_states.items() if s not in ("success", "skipped")], task_states
    version = MlflowClient(mlflow_server).get_model_version_by_alias(f"byom_{name}", "champion")
    with tempfile.TemporaryDirectory() as tmp:
        report = json.loads(_artifact(mlflow_server, version.run_id, "formats/report/report.json", tmp).read_text())
        card = json.loads(_artifact(mlflow_server, version.run_id, "model_card/model_card.json", tmp).read_text())
    task = version.tags["model.task"]
    metric = {"multiclass": "accuracy", "binary": "auc", "regression": "rmse"}[task]

    variants = {v["variant"]: v for v in report["variants"] if v.get("stamp") == run.run_id} or \
        {v["variant"]: v for v in report["variants"]}
    assert {v["status"] for v in variants.values()} <= {"passed", "skipped"}, \
        {k: (v["status"], v["reason"]) for k, v in variants.items()}
    for variant, words in SKIPPED[name].items():
        assert variants[variant]["status"] == "skipped" and words in variants[variant]["reason"], variants[variant]
    artifacts = {a["artifact"]: a for a in report["artifacts"]}
    not_applicable = {k: a["reason"] for k, a in artifacts.items() if a.get("status") == "not_applicable"}
    for variant in (v for v in variants.values() if v["status"] == "passed"):
        assert variant["metric"] == metric and variant["reason"]  # gated in the task's own metric
        exported = "skipped" if f"{variant['variant']}-tflite" in not_applicable else "success"
        assert task_states[f"export_{variant['variant']}_tflite"] == exported, task_states
    for artifact, words in NOT_APPLICABLE[name].items():
        assert words in not_applicable.get(artifact, ""), (artifact, not_applicable)
    verified = {k for k, a in artifacts.items() if a.get("passed")}
    assert verified and not [k for k, a in artifacts.items() if a.get("passed") is False], artifacts
    assert "float-saved_model" in verified and "float-keras" in verified  # every model keeps these two
    for row in artifacts.values():
        if row.get("passed"):
            assert all(c["metric"] == metric and c["score"] is not None for c in row["checks"]), row
    # the export task of a format that does not apply is skipped, with the record kept for the card
    for key in not_applicable:
        variant, fmt = key.split("-", 1)
        assert task_states[f"export_{variant}_{fmt}"] == "skipped", task_states
    if name == "digits_cnn":  # a plain CNN converts to every format
        assert not not_applicable and len(verified) >= 9, artifacts
    card_text = json.dumps(card)
    assert all(reason.split(":")[0] in card_text for reason in not_applicable.values()), card


@pytest.mark.skipif("diabetes" not in EXAMPLES, reason="BYOM_ONLY leaves the regression example out")
def test_mobile_bundle_of_a_tabular_regressor_carries_its_inputs_and_runs(optimized, mlflow_server):
    from mlflow import MlflowClient

    run, task_states = optimized["diabetes"]
    assert task_states["mobile_bundles"] == "success", task_states
    version = MlflowClient(mlflow_server).get_model_version_by_alias("byom_diabetes", "champion")
    inputs = json.loads(version.tags["model.inputs"])
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("int8", "float16"):
            smoke = json.loads(_artifact(mlflow_server, version.run_id, f"mobile/{variant}/smoke.json",
                                         tmp).read_text())
            assert smoke["passed"] and smoke["task"] == "regression" and smoke["stamp"] == run.run_id, smoke
            bundle = _artifact(mlflow_server, version.run_id, f"mobile/{variant}/{smoke['bundle']}", tmp)
            with zipfile.ZipFile(bundle) as archive:
                names = set(archive.namelist())
                io = json.loads(archive.read("io.json"))
                text = " ".join(archive.read(n).decode() for n in names if Path(n).suffix in (".md", ".kt", ".swift"))
            assert "labels.txt" not in names  # a regressor has no labels
            assert sorted(e["name"] for e in io["inputs"]) == sorted(inputs)
            assert not any(word in text.lower() for word in ("pixel", "digit", "image")), text[:500]
