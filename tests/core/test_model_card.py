"""The model card built from plain data (no MLflow): per-class / per-slice numbers, every section, the
model's own intended use, cards of a multiclass, a binary and a regression version, escaping."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pytest

from tfmlops import evaluation, model_card

VOID = {"meta", "br", "hr", "img", "input", "link"}


class _Balance(HTMLParser):
    """Every opened element closed in order (the card writes no optional end tags)."""

    def __init__(self):
        super().__init__()
        self.stack, self.problems = [], []

    def handle_starttag(self, tag, attrs):
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.problems.append(tag)


MNIST_MODEL = {"module": "tfmlops_examples.mnist_mlp", "task": "multiclass", "inputs": {"pixels": ["float32", [784]]},
               "label": "label", "class_names": [str(d) for d in range(10)], "source_sha256": "a" * 64,
               "spec_source": "the version's model.* tags"}


def _facts(matrix):
    return {"model_name": "digits", "version": 3, "run_id": "abc123", "created": "2026-12-01T10:00:00+00:00",
            "description": "test accuracy 0.9100", "aliases": ["champion"], "model": MNIST_MODEL,
            "intended_use": {"purpose": "Classify a handwritten digit", "users": "demos", "out_of_scope": "letters"},
            "limitations": ["A small fully connected network."], "declared": "tfmlops_examples.mnist_mlp.MODEL_CARD",
            "data": {"uri": "mnist", "fingerprint": "f" * 64, "train_rows": 1800, "test_rows": 300},
            "lineage": {"dag_id": "tf_offline_retrain", "dag_run_id": "manual__1", "parent_version": "2",
                        "parent_relation": "the champion the validation gate compared it with"},
            "metrics": {"accuracy": 0.91, "precision_macro": 0.905, "recall_macro": 0.9, "f1_macro": 0.902,
                        "split": "test"},
            "confusion_matrix": matrix,
            "plots": [{"name": "confusion_matrix", "title": "Confusion matrix (test split)",
                       "image": "runs:/abc123/plots/confusion_matrix.png",
                       "data": "runs:/abc123/evaluation/confusion_matrix.json"}],
            "gate": {"decision": "passed", "reason": "accuracy 0.9100 >= 0.9000"},
            "formats": [{"artifact": "int8-tflite", "runtime": "litert", "bytes": 54816, "gzipped_bytes": 48618,
                         "metric": "accuracy", "score": 0.9087, "accuracy": 0.9087, "latency_ms": 0.0125,
                         "passed": True},
                        {"artifact": "float-onnx", "runtime": "onnxruntime", "bytes": 1, "passed": False,
                         "problem": "max |diff| 1e-2 > 1e-5"}],
            "variants": [{"variant": "int8", "status": "passed", "metric": "accuracy", "score": 0.9087,
                          "drop": 0.0013, "reason": "within 0.01"},
                         # a report from before variants had metric / score / drop
                         {"variant": "pruned", "status": "rejected", "accuracy": 0.8, "accuracy_drop": 0.11}],
            "mobile": [{"bundle": "digits-v3-int8-mobile.zip", "bytes": 21_004, "task": "multiclass",
                        "input_dtype": "int8", "input_dtypes": {"pixels": "int8"}, "argmax_agreement": 0.998,
                        "max_abs_diff": 0.0039, "labels_match": True, "passed": True}],
            "serving": {"history": [{"at": "2026-12-01T10:05:00+00:00", "event": "promoted", "strategy": "canary",
                                     "endpoints": "localhost:8501", "detail": ""}],
                        "current": {"serving.outcome": "promoted", "serving.strategy": "canary"}}}


def test_per_class_metrics_agree_with_the_evaluation_module():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    overall = evaluation.classification_metrics(y_true, y_pred, 10)
    rows = model_card.per_class_metrics(overall["confusion_matrix"])
    assert [r["class"] for r in rows] == list(range(10)) and [r["name"] for r in rows] == [str(k) for k in range(10)]
    named = model_card.per_class_metrics([[3, 1], [2, 4]], ["stays", "churns"])
    assert [r["name"] for r in named] == ["stays", "churns"] and named[1]["recall"] == pytest.approx(4 / 6)
    assert sum(r["support"] for r in rows) == 500
    assert np.mean([r["precision"] for r in rows]) == pytest.approx(overall["precision_macro"])
    assert np.mean([r["recall"] for r in rows]) == pytest.approx(overall["recall_macro"])
    assert np.mean([r["f1"] for r in rows]) == pytest.approx(overall["f1_macro"])
    with pytest.raises(ValueError, match="square"):
        model_card.per_class_metrics([[1, 2], [3]])


def test_card_has_every_section_with_the_numbers_in_markdown_and_html():
    rng = np.random.default_rng(1)
    matrix = evaluation.classification_metrics(rng.integers(0, 10, 300), rng.integers(0, 10, 300), 10)[
        "confusion_matrix"]
    card = model_card.build(_facts(matrix))
    md, page = model_card.markdown(card), model_card.html(card, {"runs:/abc123/plots/confusion_matrix.png": PNG})
    for title in model_card.SECTIONS:
        assert f"## {title}" in md and f"<h2>{title}</h2>" in page
    for text in ("0.9100", "f" * 64, "manual__1", "the champion the validation gate compared it with",
                 "- **Task:** multiclass", "| pixels | float32 | [784] |", "- **Classes:** 10: 0, 1, 2",
                 "- **Module source (SHA-256):** " + "a" * 64, "- **Headline metric:** Accuracy",
                 "- **Source:** tfmlops_examples.mnist_mlp.MODEL_CARD", "- **Purpose:** Classify a handwritten digit",
                 "| int8-tflite | litert | 54,816 | 48,618 | accuracy | 0.9087 | 0.0125 |", "| promoted | canary |",
                 "accuracy 0.9100 >= 0.9000", "| pruned | rejected | accuracy | 0.8000 | 11.00 pp |",
                 "| int8 | passed | accuracy | 0.9087 | 0.13 pp | within 0.01 |",
                 "| digits-v3-int8-mobile.zip | 21,004 | pixels: int8 | 0.9980 | 3.90e-03 | yes | passed |",
                 "| Confusion matrix (test split) | runs:/abc123/plots/confusion_matrix.png | "
                 "runs:/abc123/evaluation/confusion_matrix.json |", "| float-onnx | onnxruntime | max \\|diff\\|"):
        assert text in md, text
    metric_lines = [line for line in md.split("## Metrics")[1].split("##")[0].splitlines() if line.startswith("- **")]
    assert metric_lines[2] == "- **Accuracy:** 0.9100"  # the headline first, after the split and its name
    verified = md.split("### Verified")[1].split("###")[0]
    assert "int8-tflite" in verified and "float-onnx" not in verified  # a failed check is not a verified format
    assert len(card["per_class"]) == 10 and md.count("\n| ") >= 10
    worst = min(card["per_class"], key=lambda r: r["recall"])
    assert f"class {worst['name']} (recall {worst['recall']:.4f}" in md
    assert any("float-onnx in onnxruntime" in line for line in card["limitations"])
    assert card["limitations"][-1] == "A small fully connected network."  # the model's own, after the measured
    assert 'src="data:image/png;base64,' in page and "http" not in page.split("<body>")[1]
    parser = _Balance()
    parser.feed(page)
    assert parser.problems == [] and parser.stack == []


def test_missing_facts_show_as_not_recorded_and_text_is_escaped():
    card = model_card.build({"model_name": "digits", "version": "1", "description": "<script>alert(1)</script>"})
    md, page = model_card.markdown(card), model_card.html(card)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "- **Metrics:** not recorded" in md and "- **Fingerprint (SHA-256):** not recorded" in md
    assert "- **Task:** not recorded" in md and "_none recorded_" in md.split("## Evaluation plots")[1]
    assert any("No per-class numbers" in line for line in card["limitations"])
    assert any("No exported format has been verified" in line for line in card["limitations"])
    assert any("declares no limitations" in line for line in card["limitations"])
    card = model_card.build({"model_name": "digits", "version": 1, "model": MNIST_MODEL})
    md = model_card.markdown(card)
    assert "- **Accuracy:** not recorded" in md and "- **F1 (macro):** not recorded" in md
    assert "the model module declares no intended use (MODEL_CARD)" in md
    with pytest.raises(ValueError, match="model_name"):
        model_card.build({"version": 1})


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
DIGIT_WORDS = ("digit", "pixel", "784", "MNIST", "handwrit")

CHURN_MODEL = {"module": "tfmlops_examples.churn", "task": "binary", "label": "churned",
               "inputs": {"tenure_months": ["float32", []], "monthly_charges": ["float32", []],
                          "support_calls": ["int64", []], "plan": ["string", []], "region": ["string", []]},
               "class_names": ["stays", "churns"], "source_sha256": "c" * 64,
               "spec_source": "the version's model.* tags"}
DIABETES_MODEL = {"module": "tfmlops_examples.diabetes", "task": "regression", "label": "progression",
                  "inputs": {name: ["float32", []] for name in ("age", "sex", "bmi", "bp", "s1")},
                  "class_names": [], "source_sha256": "d" * 64, "spec_source": "the version's model.* tags"}
NOT_APPLICABLE_ONNX = {"artifact": "float-onnx", "variant": "float", "format": "onnx", "runtime": None, "bytes": None,
                       "metric": None, "score": None, "passed": None,
                       "problem": "not applicable: tf2onnx cannot convert the model's string lookups"}


def _other_facts(model: dict, metrics: dict, **more) -> dict:
    return {"model_name": model["module"].rsplit(".", 1)[1], "version": 2, "run_id": "r2", "model": model,
            "data": {"uri": "data/examples", "test_rows": 480}, "metrics": {**metrics, "split": "test"},
            "gate": {"decision": "passed", "reason": "ok"}, **more}


def test_card_of_a_binary_version_with_string_inputs():
    metric = {"metric": "auc", "score": 0.83, "latency_ms": 0.02, "passed": True, "bytes": 9000,
              "gzipped_bytes": 4000}
    facts = _other_facts(CHURN_MODEL, {"auc": 0.8412, "accuracy": 0.78, "precision": 0.7, "recall": 0.6},
                         plots=[{"name": "roc_curve", "title": "ROC curve (test split)",
                                 "image": "runs:/r2/plots/roc_curve.png",
                                 "data": "runs:/r2/evaluation/roc_curve.json"}],
                         formats=[{"artifact": "float-saved_model", "runtime": "tensorflow", **metric},
                                  NOT_APPLICABLE_ONNX],
                         variants=[{"variant": "int8", "status": "passed", "metric": "auc", "score": 0.835,
                                    "drop": 0.0062, "reason": "auc within 0.01"},
                                   {"variant": "distilled", "status": "skipped", "metric": "auc", "score": None,
                                    "drop": None, "reason": "skipped: the module has no build_student"}],
                         mobile=[{"bundle": "churn-v2-float16-mobile.zip", "bytes": 30_000, "task": "binary",
                                  "input_dtypes": {"plan": "string", "tenure_months": "float32"},
                                  "argmax_agreement": 1.0, "max_abs_diff": 1e-4, "labels_match": True,
                                  "passed": True}])
    card = model_card.build(facts)
    md, page = model_card.markdown(card), model_card.html(card, {"runs:/r2/plots/roc_curve.png": PNG})
    for text in ("- **Task:** binary", "- **Label:** churned", "- **Classes:** 2: stays, churns",
                 "| plan | string | [] (scalar) |", "| support_calls | int64 | [] (scalar) |",
                 "- **Headline metric:** AUC", "- **Precision (threshold 0.5):** 0.7000",
                 "| float-saved_model | tensorflow | 9,000 | 4,000 | auc | 0.8300 |",
                 "| float-onnx | tf2onnx cannot convert the model's string lookups |",
                 "| distilled | skipped | auc | – | – | skipped: the module has no build_student |",
                 "| int8 | passed | auc | 0.8350 | 0.62 pp | auc within 0.01 |",
                 "| churn-v2-float16-mobile.zip | 30,000 | plan: string, tenure_months: float32 | 1.0000 |",
                 "| churns | 0.7000 | 0.6000 | 0.6462 | not recorded |", "| stays | not recorded |",
                 "runs:/r2/plots/roc_curve.png", "- **Formats that do not apply:** 1"):
        assert text in md, text
    metric_lines = [line for line in md.split("## Metrics")[1].split("##")[0].splitlines() if line.startswith("- **")]
    assert metric_lines[2] == "- **AUC:** 0.8412"
    assert any("float-onnx (tf2onnx cannot convert" in line for line in card["limitations"])
    assert any("distilled (the module has no build_student)" in line for line in card["limitations"])
    assert any("'churns' with recall 0.6000" in line for line in card["limitations"])
    assert "Accuracy" not in md.split("## Metrics")[1].split("- **AUC:**")[0]  # AUC leads, not accuracy
    assert not [w for w in DIGIT_WORDS if w.lower() in md.lower()], md
    assert "roc_curve.png" in page and 'src="data:image/png;base64,' in page
    parser = _Balance()
    parser.feed(page)
    assert parser.problems == [] and parser.stack == []


def test_card_of_a_regression_version_names_its_target_and_slices():
    rng = np.random.default_rng(2)
    true = rng.uniform(25, 346, 88)
    predicted = true + rng.normal(0, 50, 88)
    overall = evaluation.regression_metrics(true, predicted)
    facts = _other_facts(DIABETES_MODEL, {k: overall[k] for k in ("rmse", "mae", "r2", "mean_residual")},
                         residuals={"true": true.tolist(), "predicted": predicted.tolist()},
                         formats=[{"artifact": "int8-tflite", "runtime": "litert", "bytes": 5000, "gzipped_bytes": 3000,
                                   "metric": "rmse", "score": 58.2, "latency_ms": 0.01, "passed": True},
                                  {**NOT_APPLICABLE_ONNX, "artifact": "float-tfjs",
                                   "problem": "not applicable: no TF.js runtime for this model"}],
                         variants=[{"variant": "int8", "status": "rejected", "metric": "rmse", "score": 70.0,
                                    "drop": 12.5, "reason": "rmse 70.0000 is worse by more than 5"}],
                         mobile=[{"bundle": "diabetes-v2-int8-mobile.zip", "bytes": 8000, "task": "regression",
                                  "input_dtypes": {"age": "float32"}, "argmax_agreement": None, "max_abs_diff": 4.5,
                                  "quantile": 0.99, "quantile_abs_diff": 4.1, "labels_match": None, "passed": True}],
                         intended_use={"purpose": "Predict a progression score (demo)."},
                         declared="tfmlops_examples.diabetes.MODEL_CARD (generic text for what it does not declare: "
                                  "users, out_of_scope, limitations)")
    card = model_card.build(facts)
    md, page = model_card.markdown(card), model_card.html(card)
    for text in ("- **Task:** regression", "- **Target:** progression (the regressed value)", "| bmi | float32 |",
                 "- **Headline metric:** RMSE", f"- **RMSE:** {overall['rmse']:.4f}", "- **R²:**",
                 "- **Purpose:** Predict a progression score (demo).", "- **Users:** Not declared",
                 "| int8-tflite | litert | 5,000 | 3,000 | rmse | 58.2000 |",
                 "| float-tfjs | no TF.js runtime for this model |",
                 "| int8 | rejected | rmse | 70.0000 | 12.5 (rmse) |",
                 "| diabetes-v2-int8-mobile.zip | 8,000 | age: float32 | n/a (regression) | "
                 "4.50e+00 (q0.99: 4.10e+00) | n/a (no labels) | passed |",
                 "| slice | target from | target to | rows | RMSE | MAE | mean residual |"):
        assert text in md, text
    assert "Classes" not in md and "- **Per class:**" not in md
    metric_lines = [line for line in md.split("## Metrics")[1].split("##")[0].splitlines() if line.startswith("- **")]
    assert metric_lines[2] == f"- **RMSE:** {overall['rmse']:.4f}"
    slices = card["per_slice"]
    assert [s["slice"] for s in slices] == ["Q1", "Q2", "Q3", "Q4"] and sum(s["rows"] for s in slices) == 88
    assert slices[0]["target_min"] == pytest.approx(true.min())
    assert slices[-1]["target_max"] == pytest.approx(true.max())
    squared = sum(s["rmse"] ** 2 * s["rows"] for s in slices) / 88
    assert squared ** 0.5 == pytest.approx(overall["rmse"])  # the slices partition the test rows
    assert any(line.startswith("Largest errors on the test split for targets in") for line in card["limitations"])
    assert any("float-tfjs (no TF.js runtime" in line for line in card["limitations"])
    assert any("progression" in line and "unit" in line for line in card["limitations"])  # generic by task
    assert not [w for w in DIGIT_WORDS if w.lower() in md.lower()], md
    assert "<img" not in page  # no plot recorded, nothing embedded
    # no residuals logged: the slices are not recorded, never made up
    bare = model_card.build({**facts, "residuals": None})
    assert bare["per_slice"] == [] and "- **Per slice:** not recorded" in model_card.markdown(bare)
    assert any("No per-slice numbers" in line for line in bare["limitations"])
