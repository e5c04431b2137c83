"""The model card of a registered version, built from plain data (no MLflow, no TensorFlow).

Sections, in the spirit of "Model Cards for Model Reporting" (Mitchell et al., 2019) and the
TensorFlow Model Card Toolkit's layout, kept to what this project measures:

1. model details — name, version, run, when, aliases;
2. intended use — what the model is for and what it is not for;
3. training data and lineage — dataset URI, SHA-256 fingerprint, rows, the Airflow DAG run that
   produced it, its parent version (the champion it was gated against, or the version an online
   update fine-tuned);
4. metrics — accuracy and macro precision / recall / F1 on the test split, and per class
   (precision, recall, F1, support) from the confusion matrix;
5. validation gate — the decision and its reason;
6. formats — every verified artifact with its runtime, bytes, gzipped bytes, accuracy and latency;
   optimization variants with their gate status; mobile bundles with their smoke run;
7. serving history — each recorded rollout (promoted / rolled back / superseded), the current
   serving tags;
8. known limitations — measured ones (weakest classes, variants rejected, formats not verified)
   and the fixed ones of the data and the model.

:func:`build` normalizes the facts (a dict, see its docstring) into the card (a dict with every
section); :func:`markdown` and :func:`html` render it. A fact that was never recorded shows as
"not recorded" — the card never invents a number.
"""

from __future__ import annotations

import html as html_lib

NOT_RECORDED = "not recorded"

DEFAULT_INTENDED_USE = {
    "purpose": "Classify a handwritten digit (0–9) from a 28×28 grayscale image flattened to 784 floats "
               "in [0, 1] (pixel / 255), white digit on black, centered like MNIST.",
    "users": "Applications and demos that read single digits (forms, the draw-a-digit page), through TF "
             "Serving (REST/gRPC) or an exported format (TFLite on mobile, TF.js in the browser, ONNX).",
    "out_of_scope": "Letters, multi-digit strings, photos of digits in the wild, inverted colors or "
                    "uncentered digits; any decision about people without a human check.",
}

FIXED_LIMITATIONS = (
    "Trained and evaluated on MNIST-style data only (one writer population, centered and size-normalized "
    "digits): accuracy on other handwriting, scanners or cameras is unknown until measured.",
    "A small fully connected network: no translation or rotation invariance; rotated or shifted digits "
    "lose accuracy (tf_model_monitor measures drift on new data).",
    "Probabilities are softmax outputs, not calibrated confidences; the model always answers one of "
    "the 10 classes, even for an input that is no digit.",
)

SECTIONS = ("Model details", "Intended use", "Training data and lineage", "Metrics", "Validation gate",
            "Formats", "Serving history", "Known limitations")


def per_class_metrics(confusion_matrix: list[list[int]]) -> list[dict]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows: true
    class, columns: predicted); a class never predicted has precision 0."""
    n = len(confusion_matrix)
    if n == 0 or any(len(row) != n for row in confusion_matrix):
        raise ValueError(f"the confusion matrix must be square, got {[len(r) for r in confusion_matrix]} columns "
                         f"for {n} rows")
    rows = []
    for k in range(n):
        true_pos = confusion_matrix[k][k]
        support = sum(confusion_matrix[k])
        predicted = sum(confusion_matrix[i][k] for i in range(n))
        precision = true_pos / predicted if predicted else 0.0
        recall = true_pos / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": k, "precision": precision, "recall": recall, "f1": f1, "support": support})
    return rows


def build(facts: dict) -> dict:
    """The card from ``facts``: ``model_name``, ``version`` (required); optional ``run_id``,
    ``created``, ``description``, ``aliases`` (list), ``intended_use`` (dict), ``data``
    (``uri``, ``fingerprint``, ``train_rows``, ``test_rows``, ``sample_fraction``), ``lineage``
    (``dag_id``, ``dag_run_id``, ``task_id``, ``parent_version``, ``parent_relation``,
    ``partitions``), ``metrics`` (``accuracy``, ``precision_macro``, ``recall_macro``, ``f1_macro``),
    ``confusion_matrix``, ``gate`` (``decision``, ``reason``), ``formats`` (report rows:
    ``artifact``, ``runtime``, ``bytes``, ``gzipped_bytes``, ``accuracy``, ``latency_ms``, ``passed``),
    ``variants`` (``variant``, ``status``, ``accuracy``, ``accuracy_drop``, ``reason``), ``serving``
    (``history``: list of events, ``current``: the ``serving.*`` tags), ``mobile`` (smoke results of
    the mobile bundles: ``bundle``, ``bytes``, ``input_dtype``, ``argmax_agreement``, ``passed``),
    ``limitations`` (extra lines)."""
    missing = [key for key in ("model_name", "version") if facts.get(key) in (None, "")]
    if missing:
        raise ValueError(f"a model card needs {missing}")
    matrix = facts.get("confusion_matrix")
    per_class = per_class_metrics(matrix) if matrix else []
    formats = list(facts.get("formats") or [])
    variants = list(facts.get("variants") or [])
    history = list((facts.get("serving") or {}).get("history") or [])
    card = {
        "model_name": facts["model_name"], "version": int(facts["version"]),
        "details": {"run_id": facts.get("run_id"), "created": facts.get("created"),
                    "description": facts.get("description"), "aliases": sorted(facts.get("aliases") or [])},
        "intended_use": {**DEFAULT_INTENDED_USE, **(facts.get("intended_use") or {})},
        "data": dict(facts.get("data") or {}),
        "lineage": dict(facts.get("lineage") or {}),
        "metrics": dict(facts.get("metrics") or {}),
        "per_class": per_class,
        "gate": dict(facts.get("gate") or {}),
        "formats": {"verified": [f for f in formats if f.get("passed")],
                    "failed": [f for f in formats if not f.get("passed")]},
        "variants": variants,
        "mobile": list(facts.get("mobile") or []),
        "serving": {"history": history, "current": dict((facts.get("serving") or {}).get("current") or {})},
    }
    card["limitations"] = _limitations(card) + list(FIXED_LIMITATIONS) + list(facts.get("limitations") or [])
    return card


def _limitations(card: dict) -> list[str]:
    """Limitations the recorded numbers show."""
    lines = []
    if card["per_class"]:
        worst = sorted(card["per_class"], key=lambda r: r["recall"])[:2]
        overall = card["metrics"].get("accuracy")
        lines.append("Weakest classes on the test split: " + ", ".join(
            f"digit {r['class']} (recall {r['recall']:.4f}, {r['support']} rows)" for r in worst)
            + (f"; overall accuracy {overall:.4f}." if overall is not None else "."))
    else:
        lines.append("No per-class numbers were recorded for this version (no confusion matrix on its run).")
    test_rows = card["data"].get("test_rows")
    if test_rows:
        lines.append(f"Metrics come from {test_rows:,} test rows: one standard error of the accuracy is about "
                     f"{_stderr(card['metrics'].get('accuracy'), test_rows)} pp.")
    not_passed = [v for v in card["variants"] if v.get("status") != "passed"]
    if not_passed:
        lines.append("Optimization variants that did not pass: " + ", ".join(
            f"{v['variant']} ({v.get('status')})" for v in not_passed) + ".")
    if card["formats"]["failed"]:
        lines.append("Formats whose check failed (not published): " + ", ".join(
            sorted({f"{f['artifact']} in {f['runtime']}" for f in card["formats"]["failed"]})) + ".")
    if not card["formats"]["verified"]:
        lines.append("No exported format has been verified yet (tf_optimize_export has not run on this version).")
    return lines


def _stderr(accuracy, rows: int) -> str:
    if accuracy is None:
        return "?"
    return f"{100 * (accuracy * (1 - accuracy) / rows) ** 0.5:.2f}"


# --- rendering ---------------------------------------------------------------------------------

def _v(value, kind: str = "") -> str:
    """One value as text: numbers formatted by ``kind``, missing ones as 'not recorded', empty ones as '–'."""
    if value is None:
        return NOT_RECORDED
    if value == "":
        return "–"
    if kind == "ratio":
        return f"{value:.4f}"
    if kind == "bytes":
        return f"{int(value):,}"
    if kind == "ms":
        return f"{value:.4f}"
    if kind == "pp":
        return f"{value * 100:.2f}"
    return str(value)


def _tables(card: dict) -> list[tuple[str, list[tuple[str, str]] | None, list[str] | None, list[list[str]] | None]]:
    """Each section as (title, key/value pairs, table header, table rows): the one structure both
    renderers draw, so Markdown and HTML always hold the same facts."""
    d, data, lineage, m, gate = card["details"], card["data"], card["lineage"], card["metrics"], card["gate"]
    sections = [
        ("Model details", [("Model", card["model_name"]), ("Version", str(card["version"])),
                           ("MLflow run", _v(d.get("run_id"))), ("Registered", _v(d.get("created"))),
                           ("Aliases", ", ".join(d["aliases"]) or "none"),
                           ("Description", _v(d.get("description")))], None, None),
        ("Intended use", [("Purpose", card["intended_use"]["purpose"]), ("Users", card["intended_use"]["users"]),
                          ("Out of scope", card["intended_use"]["out_of_scope"])], None, None),
        ("Training data and lineage", [
            ("Dataset", _v(data.get("uri"))), ("Fingerprint (SHA-256)", _v(data.get("fingerprint"))),
            ("Train rows", _v(data.get("train_rows"), "bytes")), ("Test rows", _v(data.get("test_rows"), "bytes")),
            ("Sample fraction", _v(data.get("sample_fraction"))),
            ("Airflow DAG run", f"{_v(lineage.get('dag_id'))} / {_v(lineage.get('dag_run_id'))}"
                                + (f" (task {lineage['task_id']})" if lineage.get("task_id") else "")),
            ("Parent version", _v(lineage.get("parent_version"))
             + (f" ({lineage['parent_relation']})" if lineage.get("parent_relation") else "")),
            *([("Partitions", lineage["partitions"])] if lineage.get("partitions") else [])], None, None),
        ("Metrics", [("Accuracy", _v(m.get("accuracy"), "ratio")),
                     ("Precision (macro)", _v(m.get("precision_macro"), "ratio")),
                     ("Recall (macro)", _v(m.get("recall_macro"), "ratio")),
                     ("F1 (macro)", _v(m.get("f1_macro"), "ratio"))],
         ["class", "precision", "recall", "F1", "support"] if card["per_class"] else None,
         [[str(r["class"]), f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", str(r["support"])]
          for r in card["per_class"]] or None),
        ("Validation gate", [("Decision", _v(gate.get("decision"))), ("Reason", _v(gate.get("reason")))],
         None, None),
        ("Formats", [("Verified artifacts", str(len(card["formats"]["verified"]))),
                     ("Failed checks", str(len(card["formats"]["failed"])))],
         ["artifact", "runtime", "bytes", "gzipped bytes", "accuracy", "latency (ms, one row)"],
         [[f["artifact"], f["runtime"], _v(f.get("bytes"), "bytes"), _v(f.get("gzipped_bytes"), "bytes"),
           _v(f.get("accuracy"), "ratio"), _v(f.get("latency_ms"), "ms")] for f in card["formats"]["verified"]]),
    ]
    if card["variants"]:
        sections.append(("Optimization variants", None, ["variant", "status", "accuracy", "drop vs float (pp)",
                                                         "reason"],
                         [[v["variant"], _v(v.get("status")), _v(v.get("accuracy"), "ratio"),
                           _v(v.get("accuracy_drop"), "pp"), _v(v.get("reason"))] for v in card["variants"]]))
    if card["mobile"]:
        sections.append(("Mobile bundles", None, ["bundle", "bytes", "input dtype", "agreement with the model",
                                                  "smoke run"],
                         [[m["bundle"], _v(m.get("bytes"), "bytes"), _v(m.get("input_dtype")),
                           _v(m.get("argmax_agreement"), "ratio"), "passed" if m.get("passed") else "failed"]
                          for m in card["mobile"]]))
    current = card["serving"]["current"]
    sections.append(("Serving history", [("Last outcome", _v(current.get("serving.outcome"))),
                                         ("Strategy", _v(current.get("serving.strategy"))),
                                         ("Endpoints", _v(current.get("serving.endpoints"))),
                                         ("Reason", _v(current.get("serving.reason")))],
                     ["when", "event", "strategy", "endpoints", "detail"],
                     [[_v(e.get("at")), _v(e.get("event")), _v(e.get("strategy")), _v(e.get("endpoints")),
                       _v(e.get("detail"))] for e in card["serving"]["history"]]))
    sections.append(("Known limitations", None, None, None))
    return sections


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(card: dict) -> str:
    lines = [f"# Model card: {card['model_name']} version {card['version']}", ""]
    for title, pairs, header, rows in _tables(card):
        lines += [f"## {title}", ""]
        if pairs:
            lines += [f"- **{k}:** {_md_cell(v)}" for k, v in pairs] + [""]
        if header:
            if rows:
                lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows] + [""]
            else:
                lines += ["_none recorded_", ""]
        if title == "Known limitations":
            lines += [f"- {line}" for line in card["limitations"]] + [""]
    return "\n".join(lines)


STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
         "table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #ccc;padding:.25rem .5rem;"
         "text-align:left}th{background:#f3f3f3}dt{font-weight:600}dd{margin:0 0 .4rem 0}")


def html(card: dict) -> str:
    """A standalone HTML page (no script, no external resource), every text escaped."""
    e = html_lib.escape
    title = f"Model card: {card['model_name']} version {card['version']}"
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>{STYLE}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>"]
    for title, pairs, header, rows in _tables(card):
        slug = title.lower().replace(" ", "-")
        out.append(f'<section id="{e(slug)}">')
        out.append(f"<h2>{e(title)}</h2>")
        if pairs:
            out.append("<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in pairs) + "</dl>")
        if header:
            if rows:
                out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>"
                           + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
                           + "</tbody></table>")
            else:
                out.append("<p><em>none recorded</em></p>")
        if title == "Known limitations":
            out.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in card["limitations"]) + "</ul>")
        out.append("</section>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
