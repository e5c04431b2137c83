"""Export one artifact and check it in each of its runtimes against the source model."""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import numpy as np

from tfmlops.formats import (RUNTIMES, FormatCheckError, NotApplicable, Tolerance, artifact_name,
                             predicted_classes, task_outputs, tolerance_for)
from tfmlops.formats import runtimes, writers

log = logging.getLogger(__name__)

HELD_OUT_ROWS = 256
CHECK_FILE = "verification.json"


def sizes(folder: Path) -> dict:
    """Bytes of the artifact's files, and the sum of their gzip -9 sizes (what a download or a
    compressed bundle costs; pruning only pays off there)."""
    files = [p for p in sorted(Path(folder).rglob("*")) if p.is_file()]
    raw = sum(p.stat().st_size for p in files)
    gz = sum(len(gzip.compress(p.read_bytes(), compresslevel=9, mtime=0)) for p in files)
    return {"bytes": raw, "gzipped_bytes": gz, "files": len(files)}


def compare(got, expected, tolerance: Tolerance, task: str = "multiclass") -> dict:
    """An artifact's outputs vs its source's, both raw (any of the task's output shapes):
    max |diff|, and for classification the share of rows with the same predicted class."""
    try:
        got, expected = task_outputs(task, got), task_outputs(task, expected)
    except ValueError as exc:
        return {"passed": False, "max_abs_diff": None, "argmax_agreement": None, "problem": str(exc)}
    if got.shape != expected.shape:
        return {"passed": False, "max_abs_diff": None, "argmax_agreement": None,
                "problem": f"output shape {got.shape} != expected {expected.shape}"}
    diffs = np.abs(got - expected)
    max_diff = float(np.max(diffs)) if got.size else 0.0
    agreement = None if task == "regression" else \
        float(np.mean(predicted_classes(task, got) == predicted_classes(task, expected)))
    result = {"max_abs_diff": max_diff, "argmax_agreement": agreement}
    if tolerance.quantile is not None:
        result["quantile_abs_diff"] = float(np.quantile(diffs, tolerance.quantile)) if got.size else 0.0
        passed = result["quantile_abs_diff"] <= tolerance.max_abs_diff
    elif tolerance.max_abs_diff is not None:
        passed = max_diff <= tolerance.allowed(expected)
    else:
        passed = agreement is not None and agreement >= tolerance.min_agreement
    return {"passed": bool(passed), **result}


def headline(spec, labels: np.ndarray, outputs: np.ndarray) -> tuple[str, float]:
    """The task's metric on the test split: accuracy (multiclass), AUC (binary), RMSE (regression)."""
    from tfmlops.evaluation import task_metrics

    metric = HEADLINE[spec.task]
    return metric, float(task_metrics(spec.task, labels, task_outputs(spec.task, outputs), spec.num_classes)[metric])


HEADLINE = {"multiclass": "accuracy", "binary": "auc", "regression": "rmse"}
# a runtime that cannot load or run the artifact for lack of an op or layer: the format does not apply
UNSUPPORTED = re.compile(r"Unknown layer|not supported|[Uu]nsupported|No Op registered|not implemented|"
                         r"NOT_IMPLEMENTED|ShapeInferenceError|INVALID_GRAPH|is not in graph|Unknown op", re.S)


def check(artifact: Path, runtime: str, spec, test, expected: np.ndarray, tolerance: Tolerance, reference=None,
          screenshot: Path | None = None) -> dict:
    """Run one runtime on the artifact over the test split ``test`` (a
    :class:`~tfmlops.model_data.Split`); ``expected`` = the source model's raw outputs on the
    held-out batch (the first ``len(expected)`` test rows). ``reference`` (the source as a callable
    on features) checks the digit drawn in the browser, for the digit demo's models."""
    kwargs = {"screenshot": screenshot} if runtime == "chromium" and screenshot is not None else {}
    prediction = runtimes.predict(runtime, artifact, test.features, spec, **kwargs)
    outputs = np.asarray(prediction.probabilities, np.float32)
    result = compare(outputs[:len(expected)], expected, tolerance, spec.task)
    metric, value = headline(spec, test.labels, outputs) if len(outputs) == len(test) else (HEADLINE[spec.task], None)
    result.update({"runtime": runtime, "latency_ms": prediction.latency_ms, "metric": metric, "score": value,
                   "accuracy": value if metric == "accuracy" else None,
                   "details": {k: v for k, v in prediction.info.items() if k != "drawn"}})
    drawn = prediction.info.get("drawn")
    if drawn is not None and reference is not None:
        pixels = np.asarray(drawn["input"], np.float32)[None, :]
        expected_drawn = reference({next(iter(spec.inputs)): pixels})
        canvas = compare(np.asarray(drawn["probs"])[None, :], expected_drawn, tolerance)
        shown = drawn["displayed"] == str(int(np.argmax(drawn["probs"])))
        result["canvas"] = {**canvas, "displayed": drawn["displayed"], "ink_pixels": int((pixels > 0.1).sum()),
                            "tensorflow_label": int(np.argmax(expected_drawn))}
        if not (canvas["passed"] and shown and result["canvas"]["ink_pixels"] > 20):
            result["passed"] = False
            result["problem"] = f"canvas check failed: {result['canvas']}"
    return result


def not_applicable_row(variant: str, fmt: str, why: str) -> dict:
    return {"artifact": artifact_name(variant, fmt), "variant": variant, "format": fmt, "status": "not_applicable",
            "passed": None, "reason": why, "checks": []}


def export_and_verify(variant: str, fmt: str, out: Path, spec, test, source, model=None,
                      tflite_content: bytes | None = None, tolerance: Tolerance | None = None,
                      held_out_rows: int = HELD_OUT_ROWS) -> dict:
    """Write ``variant`` as ``fmt`` under ``out`` and check it in each of its runtimes on the test
    split ``test`` (a :class:`~tfmlops.model_data.Split` of the model spec ``spec``).

    ``source`` is the model the artifact must reproduce (a callable on a features dict returning its
    raw outputs: the Keras variant, or the float model for post-training quantizations).
    Returns the artifact's row (sizes + one check per runtime, ``status`` passed); raises
    :class:`~tfmlops.formats.NotApplicable` when the converter or a runtime does not support the
    model (an op or layer it lacks: the message names it), :class:`FormatCheckError` with the
    numbers when a check fails. ``verification.json`` (and ``chromium.png``, the page after the
    canvas check) are added to the folder after its sizes were measured.
    """
    name = artifact_name(variant, fmt)
    tolerance = tolerance or tolerance_for(variant, fmt, task=spec.task,
                                           label_std=float(np.std(test.labels)) if spec.task == "regression" else None)
    batch = test.head(held_out_rows)
    expected = np.asarray(source(batch.features), np.float32)
    out = Path(out)
    writers.write(fmt, out, spec, model=model, tflite_content=tflite_content, smoke_inputs=batch.head(8).features)
    row = {"artifact": name, "variant": variant, "format": fmt, **sizes(out), "tolerance": tolerance.describe(),
           "held_out_rows": len(batch), "test_rows": len(test), "task": spec.task}
    checks = []
    for runtime in RUNTIMES[fmt]:
        screenshot = out / "chromium.png" if runtime == "chromium" else None
        try:
            checks.append(check(out, runtime, spec, test, expected, tolerance, reference=source,
                                screenshot=screenshot))
        except runtimes.RuntimeUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a load/predict error in the runtime is a failed check, with its message
            if UNSUPPORTED.search(str(exc)):
                raise NotApplicable(f"{fmt} in {runtime}: {writers.reason(exc)}") from exc
            checks.append({"runtime": runtime, "passed": False, "problem": f"{type(exc).__name__}: {exc}"})
        log.info("%s in %s: %s", name, runtime, {k: v for k, v in checks[-1].items() if k != "details"})
    row["checks"] = checks
    row["passed"] = all(c["passed"] for c in checks)
    row["status"] = "passed" if row["passed"] else "failed"
    (out / CHECK_FILE).write_text(json.dumps(row, indent=2))
    if not row["passed"]:
        failed = "; ".join(f"{c['runtime']}: max|diff|={c.get('max_abs_diff')}, agreement={c.get('argmax_agreement')}"
                           f"{', ' + c['problem'] if c.get('problem') else ''}" for c in checks if not c["passed"])
        raise FormatCheckError(f"{name} failed its check ({tolerance.describe()}): {failed}", [row])
    return row
