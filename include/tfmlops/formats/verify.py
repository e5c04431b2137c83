"""Export one artifact and check it in each of its runtimes against the source model."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np

from tfmlops.formats import RUNTIMES, FormatCheckError, Tolerance, artifact_name, tolerance_for
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


def compare(got: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> dict:
    got, expected = np.asarray(got, np.float32), np.asarray(expected, np.float32)
    if got.shape != expected.shape:
        return {"passed": False, "max_abs_diff": None, "argmax_agreement": None,
                "problem": f"output shape {got.shape} != expected {expected.shape}"}
    max_diff = float(np.max(np.abs(got - expected)))
    agreement = float(np.mean(np.argmax(got, axis=1) == np.argmax(expected, axis=1)))
    if tolerance.max_abs_diff is not None:
        passed = max_diff <= tolerance.max_abs_diff
    else:
        passed = agreement >= tolerance.min_agreement
    return {"passed": bool(passed), "max_abs_diff": max_diff, "argmax_agreement": agreement}


def check(artifact: Path, runtime: str, x_test: np.ndarray, y_test: np.ndarray, expected: np.ndarray,
          tolerance: Tolerance, reference=None, screenshot: Path | None = None) -> dict:
    """Run one runtime on the artifact; ``expected`` = the source model's outputs on the
    held-out batch (the first ``len(expected)`` test rows). ``reference`` (the source as a
    callable on float32 rows) checks the digit drawn in the browser."""
    kwargs = {"screenshot": screenshot} if runtime == "chromium" and screenshot is not None else {}
    prediction = runtimes.predict(runtime, artifact, x_test, **kwargs)
    result = compare(prediction.probabilities[:len(expected)], expected, tolerance)
    probs = prediction.probabilities
    result.update({"runtime": runtime, "latency_ms": prediction.latency_ms,
                   "accuracy": float(np.mean(np.argmax(probs, axis=1) == y_test)) if len(probs) == len(y_test)
                   else None, "details": {k: v for k, v in prediction.info.items() if k != "drawn"}})
    drawn = prediction.info.get("drawn")
    if drawn is not None and reference is not None:
        pixels = np.asarray(drawn["input"], np.float32)[None, :]
        canvas = compare(np.asarray(drawn["probs"])[None, :], reference(pixels), tolerance)
        shown = drawn["displayed"] == str(int(np.argmax(drawn["probs"])))
        result["canvas"] = {**canvas, "displayed": drawn["displayed"], "ink_pixels": int((pixels > 0.1).sum()),
                            "tensorflow_label": int(np.argmax(reference(pixels)))}
        if not (canvas["passed"] and shown and result["canvas"]["ink_pixels"] > 20):
            result["passed"] = False
            result["problem"] = f"canvas check failed: {result['canvas']}"
    return result


def export_and_verify(variant: str, fmt: str, out: Path, x_test: np.ndarray, y_test: np.ndarray,
                      source, model=None, tflite_content: bytes | None = None,
                      tolerance: Tolerance | None = None, held_out_rows: int = HELD_OUT_ROWS) -> dict:
    """Write ``variant`` as ``fmt`` under ``out`` and check it in each of its runtimes.

    ``source`` is the model the artifact must reproduce (a callable on float32 rows returning
    probabilities: the Keras variant, or the float model for post-training quantizations).
    Returns the artifact's row (sizes + one check per runtime); raises :class:`FormatCheckError`
    with the numbers when a check fails. ``verification.json`` (and ``chromium.png``, the page
    after the canvas check) are added to the folder after its sizes were measured.
    """
    name = artifact_name(variant, fmt)
    tolerance = tolerance or tolerance_for(variant, fmt)
    x_test = np.ascontiguousarray(x_test, np.float32)
    batch = x_test[:held_out_rows]
    expected = np.asarray(source(batch), np.float32)
    out = Path(out)
    writers.write(fmt, out, model=model, tflite_content=tflite_content, smoke_inputs=batch[:8])
    row = {"artifact": name, "variant": variant, "format": fmt, **sizes(out), "tolerance": tolerance.describe(),
           "held_out_rows": len(batch), "test_rows": len(x_test)}
    checks = []
    for runtime in RUNTIMES[fmt]:
        screenshot = out / "chromium.png" if runtime == "chromium" else None
        try:
            checks.append(check(out, runtime, x_test, y_test, expected, tolerance, reference=source,
                                screenshot=screenshot))
        except runtimes.RuntimeUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a load/predict error in the runtime is a failed check, with its message
            checks.append({"runtime": runtime, "passed": False, "problem": f"{type(exc).__name__}: {exc}"})
        log.info("%s in %s: %s", name, runtime, {k: v for k, v in checks[-1].items() if k != "details"})
    row["checks"] = checks
    row["passed"] = all(c["passed"] for c in checks)
    (out / CHECK_FILE).write_text(json.dumps(row, indent=2))
    if not row["passed"]:
        failed = "; ".join(f"{c['runtime']}: max|diff|={c.get('max_abs_diff')}, agreement={c.get('argmax_agreement')}"
                           f"{', ' + c['problem'] if c.get('problem') else ''}" for c in checks if not c["passed"])
        raise FormatCheckError(f"{name} failed its check ({tolerance.describe()}): {failed}", [row])
    return row
