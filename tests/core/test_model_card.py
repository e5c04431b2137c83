"""The model card built from plain data (no MLflow): per-class numbers, every section, escaping."""

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


def _facts(matrix):
    return {"model_name": "digits", "version": 3, "run_id": "abc123", "created": "2026-12-01T10:00:00+00:00",
            "description": "test accuracy 0.9100", "aliases": ["champion"],
            "data": {"uri": "mnist", "fingerprint": "f" * 64, "train_rows": 1800, "test_rows": 300},
            "lineage": {"dag_id": "tf_offline_retrain", "dag_run_id": "manual__1", "parent_version": "2",
                        "parent_relation": "the champion the validation gate compared it with"},
            "metrics": {"accuracy": 0.91, "precision_macro": 0.905, "recall_macro": 0.9, "f1_macro": 0.902},
            "confusion_matrix": matrix,
            "gate": {"decision": "passed", "reason": "accuracy 0.9100 >= 0.9000"},
            "formats": [{"artifact": "int8-tflite", "runtime": "litert", "bytes": 54816, "gzipped_bytes": 48618,
                         "accuracy": 0.9087, "latency_ms": 0.0125, "passed": True},
                        {"artifact": "float-onnx", "runtime": "onnxruntime", "bytes": 1, "passed": False}],
            "variants": [{"variant": "int8", "status": "passed", "accuracy": 0.9087, "accuracy_drop": 0.0013},
                         {"variant": "pruned", "status": "rejected", "accuracy": 0.8, "accuracy_drop": 0.11}],
            "mobile": [{"bundle": "digits-v3-int8-mobile.zip", "bytes": 21_004, "input_dtype": "int8",
                        "argmax_agreement": 0.998, "passed": True}],
            "serving": {"history": [{"at": "2026-12-01T10:05:00+00:00", "event": "promoted", "strategy": "canary",
                                     "endpoints": "localhost:8501", "detail": ""}],
                        "current": {"serving.outcome": "promoted", "serving.strategy": "canary"}}}


def test_per_class_metrics_agree_with_the_evaluation_module():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    overall = evaluation.classification_metrics(y_true, y_pred, 10)
    rows = model_card.per_class_metrics(overall["confusion_matrix"])
    assert [r["class"] for r in rows] == list(range(10))
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
    md, page = model_card.markdown(card), model_card.html(card)
    for title in model_card.SECTIONS:
        assert f"## {title}" in md and f"<h2>{title}</h2>" in page
    for text in ("0.9100", "f" * 64, "manual__1", "the champion the validation gate compared it with",
                 "| int8-tflite | litert | 54,816 | 48,618 | 0.9087 | 0.0125 |", "| promoted | canary |",
                 "accuracy 0.9100 >= 0.9000", "| pruned | rejected | 0.8000 | 11.00 |",
                 "| digits-v3-int8-mobile.zip | 21,004 | int8 | 0.9980 | passed |"):
        assert text in md, text
    assert "float-onnx" not in md.split("## Formats")[1].split("## Optimization")[0].split("|---|")[1]
    assert len(card["per_class"]) == 10 and md.count("\n| ") >= 10
    worst = min(card["per_class"], key=lambda r: r["recall"])
    assert f"digit {worst['class']} (recall {worst['recall']:.4f}" in md
    assert any("float-onnx in onnxruntime" in line for line in card["limitations"])
    parser = _Balance()
    parser.feed(page)
    assert parser.problems == [] and parser.stack == []


def test_missing_facts_show_as_not_recorded_and_text_is_escaped():
    card = model_card.build({"model_name": "digits", "version": "1", "description": "<script>alert(1)</script>"})
    md, page = model_card.markdown(card), model_card.html(card)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "- **Accuracy:** not recorded" in md and "- **Fingerprint (SHA-256):** not recorded" in md
    assert any("No per-class numbers" in line for line in card["limitations"])
    assert any("No exported format has been verified" in line for line in card["limitations"])
    with pytest.raises(ValueError, match="model_name"):
        model_card.build({"version": 1})
