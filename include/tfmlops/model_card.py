"""The model card of a registered version, built from plain data (no MLflow, no TensorFlow).

Sections, in the spirit of "Model Cards for Model Reporting" (Mitchell et al., 2019) and the
TensorFlow Model Card Toolkit's layout, kept to what this project measures:

1. model details — name, version, run, when, aliases;
2. model — the model module, its task, its inputs (name, dtype, shape), its class names (a
   classifier) or its target (a regressor), the SHA-256 of the module's source;
3. intended use — what the model is for and what it is not for, as the model module declares it
   (its optional ``MODEL_CARD``), else a generic text by task saying it declares none;
4. training data and lineage — dataset URI, SHA-256 fingerprint, rows, the Airflow DAG run that
   produced it, its parent version (the champion it was gated against, or the version an online
   update fine-tuned);
5. metrics — what the run recorded for its task on the test (or holdout) split, the task's
   headline first (accuracy, AUC or RMSE); per class (a classifier: precision, recall, F1, support
   from the confusion matrix, or what was recorded at threshold 0.5) or per slice (a regressor:
   errors by quartile of the true target, from the recorded residuals);
6. evaluation plots — the run's plots (``runs:/`` links; embedded in the HTML when given);
7. validation gate — the decision and its reason;
8. formats — every verified artifact with its runtime, bytes, gzipped bytes, the task's metric and
   latency; formats that do not apply with why; failed checks; optimization variants with their
   gate status (skipped ones with the reason); mobile bundles with their smoke run;
9. serving history — each recorded rollout (promoted / rolled back / superseded), the current
   serving tags, and the model's audit trail entries for this version (served version from → to,
   why — a rollout, or a reconcile of a champion moved in the registry — and the run that did it);
10. known limitations — measured ones (weakest classes or slices, variants rejected, formats not
    verified) and the model's own (``MODEL_CARD["limitations"]``).

:func:`build` normalizes the facts (a dict, see its docstring) into the card (a dict with every
section); :func:`markdown` and :func:`html` render it. A fact that was never recorded shows as
"not recorded" — the card never invents a number.
"""

from __future__ import annotations

import base64
import html as html_lib

NOT_RECORDED = "not recorded"

SECTIONS = ("Model details", "Model", "Intended use", "Training data and lineage", "Metrics", "Evaluation plots",
            "Validation gate", "Formats", "Serving history", "Known limitations")
TASKS = ("multiclass", "binary", "regression")
# the task's metrics as the evaluation logs them, headline first (tfmlops.evaluation.task_metrics)
TASK_METRICS = {
    "multiclass": ("accuracy", "precision_macro", "recall_macro", "f1_macro"),
    "binary": ("auc", "accuracy", "precision", "recall", "f1"),
    "regression": ("rmse", "mae", "r2", "mean_residual"),
}
HEADLINE = {task: keys[0] for task, keys in TASK_METRICS.items()}
METRIC_LABELS = {"accuracy": "Accuracy", "precision_macro": "Precision (macro)", "recall_macro": "Recall (macro)",
                 "f1_macro": "F1 (macro)", "auc": "AUC", "rmse": "RMSE", "mae": "MAE", "r2": "R²",
                 "mean_residual": "Mean residual (predicted − true)"}
BINARY_LABELS = {"accuracy": "Accuracy (threshold 0.5)", "precision": "Precision (threshold 0.5)",
                 "recall": "Recall (threshold 0.5)", "f1": "F1 (threshold 0.5)"}
# ratio metrics whose difference reads in percentage points; the others are in the label's unit
RATIO_METRICS = ("accuracy", "auc", "f1_macro", "precision_macro", "recall_macro", "precision", "recall", "f1")
INTENDED_USE_KEYS = ("purpose", "users", "out_of_scope")
MAX_CLASSES_SHOWN = 50
SLICES = 4


def per_class_metrics(confusion_matrix: list[list[int]], class_names: list[str] | None = None) -> list[dict]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows: true
    class, columns: predicted); a class never predicted has precision 0. ``name`` is the class's
    name when ``class_names`` fits the matrix, else its index."""
    n = len(confusion_matrix)
    if n == 0 or any(len(row) != n for row in confusion_matrix):
        raise ValueError(f"the confusion matrix must be square, got {[len(r) for r in confusion_matrix]} columns "
                         f"for {n} rows")
    names = list(class_names) if class_names and len(class_names) == n else [str(k) for k in range(n)]
    rows = []
    for k in range(n):
        true_pos = confusion_matrix[k][k]
        support = sum(confusion_matrix[k])
        predicted = sum(confusion_matrix[i][k] for i in range(n))
        precision = true_pos / predicted if predicted else 0.0
        recall = true_pos / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": k, "name": names[k], "precision": precision, "recall": recall, "f1": f1,
                     "support": support})
    return rows


def binary_recorded_per_class(metrics: dict, class_names: list[str] | None) -> list[dict]:
    """A binary version without a confusion matrix: the positive class's precision / recall (/ F1)
    at threshold 0.5 as recorded; the negative class's numbers and the supports were not recorded."""
    if metrics.get("precision") is None and metrics.get("recall") is None:
        return []
    names = list(class_names) if class_names and len(class_names) == 2 else ["0", "1"]
    p, r = metrics.get("precision"), metrics.get("recall")
    f1 = metrics.get("f1")
    if f1 is None and p is not None and r is not None:
        f1 = 2 * p * r / (p + r) if p + r else 0.0
    return [{"class": 0, "name": names[0], "precision": None, "recall": None, "f1": None, "support": None},
            {"class": 1, "name": names[1], "precision": p, "recall": r, "f1": f1, "support": None}]


def per_slice_metrics(true: list[float], predicted: list[float], slices: int = SLICES) -> list[dict]:
    """A regressor's errors by quantile of the true target (``slices`` groups of equal row count,
    rows sorted by the true value): the target's range, rows, RMSE, MAE and mean residual
    (predicted − true) of each."""
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} true values for {len(predicted)} predictions")
    pairs = sorted(zip((float(t) for t in true), (float(p) for p in predicted)))
    n = len(pairs)
    if n == 0:
        return []
    slices = max(1, min(slices, n))
    rows = []
    for k in range(slices):
        group = pairs[k * n // slices:(k + 1) * n // slices]
        errors = [p - t for t, p in group]
        rows.append({"slice": f"Q{k + 1}" if slices == 4 else f"{k + 1}/{slices}",
                     "target_min": group[0][0], "target_max": group[-1][0], "rows": len(group),
                     "rmse": (sum(e * e for e in errors) / len(errors)) ** 0.5,
                     "mae": sum(abs(e) for e in errors) / len(errors),
                     "mean_residual": sum(errors) / len(errors)})
    return rows


def _model(facts: dict) -> dict:
    m = dict(facts.get("model") or {})
    task = m.get("task") if m.get("task") in TASKS else None
    inputs = {str(k): (str(v[0]), [int(x) for x in v[1]]) for k, v in (m.get("inputs") or {}).items()}
    return {"module": m.get("module"), "task": task, "inputs": inputs, "label": m.get("label"),
            "class_names": [str(c) for c in m.get("class_names") or []],
            "source_sha256": m.get("source_sha256") or None, "spec_source": m.get("spec_source"),
            "module_changed": m.get("module_changed")}


def _describe_outputs(model: dict) -> str:
    task, names = model["task"], model["class_names"]
    if task == "regression":
        return f"predicts {model['label'] or 'a value'}"
    if task == "binary" and len(names) == 2:
        return f"the probability of {names[1]!r} vs {names[0]!r}"
    if names:
        return f"one of {len(names)} classes ({_class_list(names, 5)})"
    return f"a {task} output"


def _class_list(names: list[str], limit: int = MAX_CLASSES_SHOWN) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def generic_intended_use(model: dict) -> dict:
    """The intended use of a model whose module declares none (no ``MODEL_CARD``): what the spec says."""
    undeclared = "the model module declares no intended use (MODEL_CARD)"
    if model["task"] is None:
        purpose = f"Not recorded: the version carries no model spec and {undeclared}."
    else:
        inputs = ", ".join(model["inputs"]) or "its inputs"
        purpose = (f"A {model['task']} model on inputs {inputs}: {_describe_outputs(model)}; {undeclared}.")
    return {"purpose": purpose,
            "users": "Not declared by the model module (MODEL_CARD['users']).",
            "out_of_scope": "Not declared by the model module (MODEL_CARD['out_of_scope']); inputs unlike its "
                            "training data are untested."}


def generic_limitations(model: dict) -> list[str]:
    """Limitations of a model whose module declares none: only what holds for any model of its task."""
    lines = ["The model module declares no limitations (MODEL_CARD['limitations']): beyond the measured ones "
             "above, how the model behaves on data unlike its training data is unknown until measured."]
    if model["task"] in ("multiclass", "binary") and model["class_names"]:
        lines.append(f"It always answers one of its {len(model['class_names'])} classes "
                     f"({_class_list(model['class_names'], 10)}), even for an input that belongs to none of them.")
    if model["task"] == "binary":
        lines.append("Accuracy, precision and recall are measured at threshold 0.5; AUC is the threshold-free "
                     "figure (pick a threshold from the ROC curve for a real use).")
    if model["task"] == "regression":
        lines.append(f"Errors (RMSE, MAE) are in the target's unit ({model['label'] or 'the label'}); the model "
                     "gives no uncertainty with its value.")
    return lines


def _metrics(facts: dict, task: str | None) -> dict:
    recorded = {k: v for k, v in (facts.get("metrics") or {}).items() if k != "split"}
    order = list(TASK_METRICS[task]) if task else [k for keys in TASK_METRICS.values() for k in keys if k in recorded]
    order = list(dict.fromkeys(order))
    values = {k: recorded.get(k) for k in order}
    values.update({k: recorded[k] for k in sorted(recorded) if k not in values})
    return {"split": (facts.get("metrics") or {}).get("split"), "headline": HEADLINE.get(task), "values": values}


def build(facts: dict) -> dict:
    """The card from ``facts``: ``model_name``, ``version`` (required); optional ``run_id``,
    ``created``, ``description``, ``aliases`` (list), ``model`` (the version's spec: ``module``,
    ``task``, ``inputs`` {name: [dtype, shape]}, ``label``, ``class_names``, ``source_sha256``,
    ``spec_source`` — where the spec was read —, ``module_changed``), ``intended_use`` (``purpose``,
    ``users``, ``out_of_scope``: the module's ``MODEL_CARD``; missing ones are generic by task),
    ``limitations`` (the module's ``MODEL_CARD["limitations"]``; None: a generic line), ``declared``
    (where intended use and limitations come from), ``data`` (``uri``, ``fingerprint``,
    ``train_rows``, ``test_rows``, ``sample_fraction``), ``lineage`` (``dag_id``, ``dag_run_id``,
    ``task_id``, ``parent_version``, ``parent_relation``, ``partitions``, ``search_run``,
    ``search_best_trial``), ``metrics`` (the task's
    metrics as logged, without the ``test_`` / ``holdout_`` prefix, and ``split``),
    ``confusion_matrix`` (multiclass, or binary if the run logged one), ``residuals`` (regression:
    ``true`` and ``predicted`` lists), ``plots`` (``name``, ``title``, ``image`` and ``data``
    ``runs:/`` URIs), ``gate`` (``decision``, ``reason``), ``formats`` (report rows: ``artifact``,
    ``runtime``, ``bytes``, ``gzipped_bytes``, ``metric``, ``score``, ``latency_ms``, ``passed`` —
    None for a format that does not apply, ``problem``), ``variants`` (``variant``, ``status``,
    ``metric``, ``score``, ``drop``, ``reason``; or the former ``accuracy`` / ``accuracy_drop``),
    ``serving`` (``history``: list of events, ``current``: the ``serving.*`` tags), ``mobile`` (smoke
    results of the mobile bundles: ``bundle``, ``bytes``, ``task``, ``input_dtypes``,
    ``argmax_agreement``, ``max_abs_diff``, ``quantile``, ``quantile_abs_diff``, ``labels_match``,
    ``passed``)."""
    missing = [key for key in ("model_name", "version") if facts.get(key) in (None, "")]
    if missing:
        raise ValueError(f"a model card needs {missing}")
    model = _model(facts)
    task = model["task"]
    metrics = _metrics(facts, task)
    matrix = facts.get("confusion_matrix")
    per_class, per_class_source = [], None
    if matrix and task != "regression":
        per_class = per_class_metrics(matrix, model["class_names"])
        per_class_source = "from the confusion matrix the run logged (evaluation/confusion_matrix.json)" + (
            ", threshold 0.5" if task == "binary" else "")
    elif task == "binary":
        per_class = binary_recorded_per_class(metrics["values"], model["class_names"])
        if per_class:
            per_class_source = ("the positive class's precision / recall at threshold 0.5 as recorded; the run "
                                "logged no confusion matrix, so the negative class's numbers and the supports "
                                "were not recorded")
    residuals = facts.get("residuals") or {}
    per_slice = per_slice_metrics(residuals.get("true") or [], residuals.get("predicted") or []) \
        if task == "regression" and residuals.get("true") else []
    formats = list(facts.get("formats") or [])
    declared = {k: v for k, v in (facts.get("intended_use") or {}).items() if k in INTENDED_USE_KEYS and v}
    history = list((facts.get("serving") or {}).get("history") or [])
    card = {
        "model_name": facts["model_name"], "version": int(facts["version"]),
        "details": {"run_id": facts.get("run_id"), "created": facts.get("created"),
                    "description": facts.get("description"), "aliases": sorted(facts.get("aliases") or [])},
        "model": model,
        "intended_use": {**generic_intended_use(model), **declared},
        "declared": facts.get("declared") or ("the model module's MODEL_CARD" if declared else
                                              "generic: the model module declares no MODEL_CARD"),
        "data": dict(facts.get("data") or {}),
        "lineage": dict(facts.get("lineage") or {}),
        "metrics": metrics,
        "per_class": per_class, "per_class_source": per_class_source,
        "per_slice": per_slice,
        "plots": [dict(p) for p in facts.get("plots") or []],
        "gate": dict(facts.get("gate") or {}),
        "formats": {"verified": [f for f in formats if f.get("passed") is True],
                    "not_applicable": [f for f in formats if f.get("passed") is None],
                    "failed": [f for f in formats if f.get("passed") is False]},
        "variants": list(facts.get("variants") or []),
        "mobile": list(facts.get("mobile") or []),
        "serving": {"history": history, "current": dict((facts.get("serving") or {}).get("current") or {}),
                    "audit": list((facts.get("serving") or {}).get("audit") or [])},
    }
    own = facts.get("limitations")
    card["limitations"] = _limitations(card) + (list(own) if own else generic_limitations(model))
    return card


def _limitations(card: dict) -> list[str]:
    """Limitations the recorded numbers show."""
    lines = []
    task, values = card["model"]["task"], card["metrics"]["values"]
    split = card["metrics"]["split"] or "test"
    measured = [r for r in card["per_class"] if r["recall"] is not None]
    if task == "regression":
        if card["per_slice"]:
            worst = max(card["per_slice"], key=lambda r: r["rmse"])
            overall = values.get("rmse")
            lines.append(f"Largest errors on the {split} split for targets in [{worst['target_min']:.4g}, "
                         f"{worst['target_max']:.4g}] ({worst['slice']}, {worst['rows']} rows): RMSE "
                         f"{worst['rmse']:.4f}" + (f" vs {overall:.4f} overall." if overall is not None else "."))
        else:
            lines.append("No per-slice numbers were recorded for this version (no residuals on its run).")
    elif task == "binary" and card["per_class"] and card["per_class"][0]["recall"] is None:
        positive = card["per_class"][1]
        lines.append(f"At threshold 0.5 the model finds {positive['name']!r} with recall "
                     f"{_v(positive['recall'], 'ratio')} and precision {_v(positive['precision'], 'ratio')}; other "
                     f"thresholds trade one for the other (AUC {_v(values.get('auc'), 'ratio')}).")
    elif measured:
        worst = sorted(measured, key=lambda r: r["recall"])[:2]
        overall = values.get("accuracy")
        lines.append(f"Weakest classes on the {split} split: " + ", ".join(
            f"class {r['name']} (recall {r['recall']:.4f}, {r['support']} rows)" for r in worst)
            + (f"; overall accuracy {overall:.4f}." if overall is not None else "."))
    else:
        lines.append("No per-class numbers were recorded for this version (no confusion matrix on its run).")
    test_rows = card["data"].get("test_rows")
    if test_rows and task != "regression" and values.get("accuracy") is not None:
        lines.append(f"Metrics come from {test_rows:,} test rows: one standard error of the accuracy is about "
                     f"{_stderr(values.get('accuracy'), test_rows)} pp.")
    elif test_rows:
        lines.append(f"Metrics come from {test_rows:,} test rows.")
    if card["model"]["module_changed"]:
        lines.append(f"{card['model']['module_changed']} (the intended use and limitations here are read from "
                     "the current source).")
    not_passed = [v for v in card["variants"] if v.get("status") not in ("passed", "skipped")]
    if not_passed:
        lines.append("Optimization variants that did not pass: " + ", ".join(
            f"{v['variant']} ({v.get('status')})" for v in not_passed) + ".")
    skipped = [v for v in card["variants"] if v.get("status") == "skipped"]
    if skipped:
        lines.append("Optimization variants that do not apply to this model: " + ", ".join(
            f"{v['variant']} ({_strip(v.get('reason'), 'skipped: ')})" for v in skipped) + ".")
    if card["formats"]["failed"]:
        lines.append("Formats whose check failed (not published): " + ", ".join(
            sorted({f"{f['artifact']} in {f['runtime']}" for f in card["formats"]["failed"]})) + ".")
    if card["formats"]["not_applicable"]:
        lines.append("Formats that do not apply to this model: " + ", ".join(
            f"{f['artifact']} ({_strip(f.get('problem'), 'not applicable: ')})"
            for f in card["formats"]["not_applicable"]) + ".")
    if not card["formats"]["verified"]:
        lines.append("No exported format has been verified yet (tf_optimize_export has not run on this version)."
                     if not (card["formats"]["failed"] or card["formats"]["not_applicable"]) else
                     "No exported format has been verified: every checked format failed or does not apply.")
    return lines


def _strip(text, prefix: str) -> str:
    return NOT_RECORDED if text in (None, "") else str(text).removeprefix(prefix)


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
    if kind == "diff":
        return f"{value:.2e}"
    return str(value)


def _metric_label(key: str, task: str | None) -> str:
    if task == "binary" and key in BINARY_LABELS:
        return BINARY_LABELS[key]
    return METRIC_LABELS.get(key, key)


def _shape(shape: list[int]) -> str:
    return "[] (scalar)" if not shape else "[" + ", ".join(str(d) for d in shape) + "]"


def _drop(v: dict) -> str:
    """How much worse than the float model a variant is: pp for a ratio metric, the label's unit for RMSE."""
    drop = v.get("drop", v.get("accuracy_drop"))
    if drop is None:
        return "–" if v.get("status") in ("skipped", "failed") else NOT_RECORDED
    metric = v.get("metric", "accuracy")
    return f"{drop * 100:.2f} pp" if metric in RATIO_METRICS else f"{drop:.4g} ({metric})"


def _mobile_row(m: dict) -> list[str]:
    regression = m.get("task") == "regression"
    dtypes = m.get("input_dtypes")
    inputs = ", ".join(f"{k}: {d}" for k, d in dtypes.items()) if dtypes else _v(m.get("input_dtype"))
    agreement = m.get("argmax_agreement")
    diff = _v(m.get("max_abs_diff"), "diff")
    if m.get("quantile") is not None and m.get("quantile_abs_diff") is not None:
        diff += f" (q{m['quantile']:g}: {m['quantile_abs_diff']:.2e})"
    labels = m.get("labels_match")
    return [m["bundle"], _v(m.get("bytes"), "bytes"), inputs,
            "n/a (regression)" if agreement is None and regression else _v(agreement, "ratio"), diff,
            "n/a (no labels)" if labels is None and regression else ({True: "yes", False: "no"}.get(labels)
                                                                      or NOT_RECORDED),
            "passed" if m.get("passed") else "failed"]


def _section(title, pairs=None, tables=None, items=None, images=None) -> dict:
    return {"title": title, "pairs": pairs or [], "tables": tables or [], "items": items or [],
            "images": images or []}


def _table(header, rows, caption=None, always=True) -> dict:
    return {"caption": caption, "header": header, "rows": rows, "always": always}


def _sections(card: dict) -> list[dict]:
    """Every section as (title, key/value pairs, tables, list items, images): the one structure both
    renderers draw, so Markdown and HTML always hold the same facts."""
    d, data, lineage, gate, model = card["details"], card["data"], card["lineage"], card["gate"], card["model"]
    task, metrics = model["task"], card["metrics"]
    sections = [_section("Model details", [
        ("Model", card["model_name"]), ("Version", str(card["version"])), ("MLflow run", _v(d.get("run_id"))),
        ("Registered", _v(d.get("created"))), ("Aliases", ", ".join(d["aliases"]) or "none"),
        ("Description", _v(d.get("description")))])]

    pairs = [("Module", _v(model["module"])), ("Task", _v(task))]
    if task == "regression":
        pairs.append(("Target", f"{_v(model['label'])} (the regressed value)"))
    else:
        pairs.append(("Label", _v(model["label"])))
        pairs.append(("Classes", f"{len(model['class_names'])}: {_class_list(model['class_names'])}"
                      if model["class_names"] else NOT_RECORDED))
    pairs.append(("Module source (SHA-256)", _v(model["source_sha256"])))
    if model["spec_source"]:
        pairs.append(("Spec read from", model["spec_source"]))
    if model["module_changed"]:
        pairs.append(("Module changed", model["module_changed"]))
    sections.append(_section("Model", pairs, [_table(["input", "dtype", "shape"], [
        [name, dtype, _shape(shape)] for name, (dtype, shape) in model["inputs"].items()])]))

    use = card["intended_use"]
    sections.append(_section("Intended use", [("Purpose", use["purpose"]), ("Users", use["users"]),
                                              ("Out of scope", use["out_of_scope"]), ("Source", card["declared"])]))
    sections.append(_section("Training data and lineage", [
        ("Dataset", _v(data.get("uri"))), ("Fingerprint (SHA-256)", _v(data.get("fingerprint"))),
        ("Train rows", _v(data.get("train_rows"), "bytes")), ("Test rows", _v(data.get("test_rows"), "bytes")),
        ("Sample fraction", _v(data.get("sample_fraction"))),
        ("Airflow DAG run", f"{_v(lineage.get('dag_id'))} / {_v(lineage.get('dag_run_id'))}"
                            + (f" (task {lineage['task_id']})" if lineage.get("task_id") else "")),
        ("Parent version", _v(lineage.get("parent_version"))
         + (f" ({lineage['parent_relation']})" if lineage.get("parent_relation") else "")),
        *([("Partitions", lineage["partitions"])] if lineage.get("partitions") else []),
        *([("Hyperparameter search", f"MLflow run {lineage['search_run']} (best trial "
                                     f"{_v(lineage.get('search_best_trial'))}; tf_hparam_search)")]
          if lineage.get("search_run") else [])]))

    pairs = [(_metric_label(k, task), _v(v, "ratio")) for k, v in metrics["values"].items()] or \
        [("Metrics", NOT_RECORDED)]
    pairs.insert(0, ("Split", _v(metrics["split"])))
    if metrics["headline"]:
        pairs.insert(1, ("Headline metric", _metric_label(metrics["headline"], task)))
    tables = []
    if task == "regression":
        pairs.append(("Per slice", f"errors by quartile of the true target, computed from the "
                                   f"{sum(r['rows'] for r in card['per_slice']):,} predictions the run logged "
                                   "(evaluation/residuals.json)" if card["per_slice"] else NOT_RECORDED))
        if card["per_slice"]:
            tables.append(_table(["slice", "target from", "target to", "rows", "RMSE", "MAE", "mean residual"],
                                 [[r["slice"], f"{r['target_min']:.4g}", f"{r['target_max']:.4g}", str(r["rows"]),
                                   f"{r['rmse']:.4f}", f"{r['mae']:.4f}", f"{r['mean_residual']:.4f}"]
                                  for r in card["per_slice"]], always=False))
    else:
        pairs.append(("Per class", card["per_class_source"] or NOT_RECORDED))
        if card["per_class"]:
            tables.append(_table(["class", "precision", "recall", "F1", "support"],
                                 [[r["name"], _v(r["precision"], "ratio"), _v(r["recall"], "ratio"),
                                   _v(r["f1"], "ratio"), _v(r["support"])] for r in card["per_class"]],
                                 always=False))
    sections.append(_section("Metrics", pairs, tables))

    sections.append(_section("Evaluation plots", tables=[_table(["plot", "image", "data"], [
        [p.get("title") or p.get("name") or "plot", _v(p.get("image")), p.get("data") or "–"]
        for p in card["plots"]])], images=[p for p in card["plots"] if p.get("image")]))
    sections.append(_section("Validation gate", [("Decision", _v(gate.get("decision"))),
                                                 ("Reason", _v(gate.get("reason")))]))

    formats = card["formats"]
    metric_names = sorted({f.get("metric") or "accuracy" for f in formats["verified"]})
    tables = [_table(["artifact", "runtime", "bytes", "gzipped bytes", "metric", "score", "latency (ms, one row)"],
                     [[f["artifact"], f["runtime"], _v(f.get("bytes"), "bytes"), _v(f.get("gzipped_bytes"), "bytes"),
                       f.get("metric") or "accuracy", _v(f.get("score", f.get("accuracy")), "ratio"),
                       _v(f.get("latency_ms"), "ms")] for f in formats["verified"]], caption="Verified")]
    if formats["not_applicable"]:
        tables.append(_table(["artifact", "why it does not apply"],
                             [[f["artifact"], _strip(f.get("problem"), "not applicable: ")]
                              for f in formats["not_applicable"]], caption="Formats that do not apply"))
    if formats["failed"]:
        tables.append(_table(["artifact", "runtime", "problem"],
                             [[f["artifact"], _v(f.get("runtime")), _v(f.get("problem"))] for f in formats["failed"]],
                             caption="Failed checks"))
    sections.append(_section("Formats", [
        ("Verified artifacts", str(len(formats["verified"]))),
        ("Formats that do not apply", str(len(formats["not_applicable"]))),
        ("Failed checks", str(len(formats["failed"]))),
        ("Scored by", ", ".join(metric_names) + " on the test split" if metric_names else NOT_RECORDED)], tables))
    if card["variants"]:
        sections.append(_section("Optimization variants", tables=[_table(
            ["variant", "status", "metric", "score", "worse than float by", "reason"],
            [[v["variant"], _v(v.get("status")), v.get("metric", "accuracy"),
              "–" if v.get("status") in ("skipped", "failed") and v.get("score", v.get("accuracy")) is None
              else _v(v.get("score", v.get("accuracy")), "ratio"), _drop(v), _v(v.get("reason"))]
             for v in card["variants"]])]))
    if card["mobile"]:
        sections.append(_section("Mobile bundles", tables=[_table(
            ["bundle", "bytes", "inputs (dtype)", "agreement with the model", "max |diff|", "labels match",
             "smoke run"], [_mobile_row(m) for m in card["mobile"]])]))
    current = card["serving"]["current"]
    audit = card["serving"].get("audit") or []
    sections.append(_section("Serving history", [("Last outcome", _v(current.get("serving.outcome"))),
                                                 ("Strategy", _v(current.get("serving.strategy"))),
                                                 ("Endpoints", _v(current.get("serving.endpoints"))),
                                                 ("Reason", _v(current.get("serving.reason")))],
                             [_table(["when", "event", "strategy", "endpoints", "detail"],
                                     [[_v(e.get("at")), _v(e.get("event")), _v(e.get("strategy")),
                                       _v(e.get("endpoints")), _v(e.get("detail"))]
                                      for e in card["serving"]["history"]]),
                              _table(["when", "served version", "why", "run"],
                                     [[_v(e.get("at")), f"{_v(e.get('from'))} → {_v(e.get('to'))} "
                                       f"({_v(e.get('event'))})", _v(e.get("reason")), _v(e.get("run"))]
                                      for e in audit],
                                     caption="Audit trail (the model's served version)", always=False)]))
    sections.append(_section("Known limitations", items=card["limitations"]))
    return sections


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(card: dict) -> str:
    lines = [f"# Model card: {card['model_name']} version {card['version']}", ""]
    for s in _sections(card):
        lines += [f"## {s['title']}", ""]
        if s["pairs"]:
            lines += [f"- **{k}:** {_md_cell(v)}" for k, v in s["pairs"]] + [""]
        for t in s["tables"]:
            if t["caption"]:
                lines += [f"### {t['caption']}", ""]
            if t["rows"]:
                lines += ["| " + " | ".join(t["header"]) + " |", "|" + "---|" * len(t["header"])]
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t["rows"]] + [""]
            elif t["always"]:
                lines += ["_none recorded_", ""]
        if s["items"]:
            lines += [f"- {line}" for line in s["items"]] + [""]
    return "\n".join(lines)


STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
         "table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #ccc;padding:.25rem .5rem;"
         "text-align:left}th{background:#f3f3f3}dt{font-weight:600}dd{margin:0 0 .4rem 0}"
         "figure{display:inline-block;margin:0 1rem 1rem 0}figure img{max-width:28rem;border:1px solid #ddd}"
         "figcaption{font-size:.9rem;color:#555}")


def html(card: dict, images: dict[str, bytes] | None = None) -> str:
    """A standalone HTML page (no script, no external resource), every text escaped. ``images``
    (a plot's ``image`` URI → its PNG bytes) are embedded as ``data:`` URIs in "Evaluation plots"."""
    e = html_lib.escape
    images = images or {}
    title = f"Model card: {card['model_name']} version {card['version']}"
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>{STYLE}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>"]
    for s in _sections(card):
        slug = s["title"].lower().replace(" ", "-")
        out.append(f'<section id="{e(slug)}">')
        out.append(f"<h2>{e(s['title'])}</h2>")
        if s["pairs"]:
            out.append("<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in s["pairs"]) + "</dl>")
        for t in s["tables"]:
            if t["caption"] and (t["rows"] or t["always"]):
                out.append(f"<h3>{e(t['caption'])}</h3>")
            if t["rows"]:
                out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in t["header"])
                           + "</tr></thead><tbody>"
                           + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in t["rows"])
                           + "</tbody></table>")
            elif t["always"]:
                out.append("<p><em>none recorded</em></p>")
        for plot in s["images"]:
            data = images.get(plot["image"])
            if data:
                src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
                caption = plot.get("title") or plot.get("name") or "plot"
                out.append(f'<figure><img src="{e(src)}" alt="{e(caption)}"><figcaption>{e(caption)} '
                           f"({e(plot['image'])})</figcaption></figure>")
        if s["items"]:
            out.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in s["items"]) + "</ul>")
        out.append("</section>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
