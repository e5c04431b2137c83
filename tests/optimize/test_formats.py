"""Every export format loaded back in its own runtime and compared with its source model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tfmlops import optimize
from tfmlops.formats import FLOAT_FORMATS, TFJS_FORMATS, artifacts, tolerance_for
from tfmlops.formats import report as report_lib
from tfmlops.formats.verify import FormatCheckError, export_and_verify

from .conftest import require_tfjs_runtimes

PYTHON_FORMATS = [f for f in FLOAT_FORMATS if f not in TFJS_FORMATS]


def test_artifact_matrix_and_tolerances():
    pairs = artifacts(variants=["int8", "pruned"], formats=["onnx"])
    assert pairs == [("float", "onnx"), ("int8", "tflite"), ("pruned", "tflite")]
    assert tolerance_for("float", "onnx").max_abs_diff == 1e-5
    assert tolerance_for("int8", "tflite").min_agreement == 0.99
    assert tolerance_for("qat_int8", "tflite").min_agreement == 0.99
    assert tolerance_for("pruned", "tflite").max_abs_diff == 1e-5
    with pytest.raises(ValueError):
        artifacts(formats=["pickle"])


@pytest.mark.parametrize("fmt", PYTHON_FORMATS)
def test_float_formats_reproduce_the_model_in_their_runtime(small, float_model, float_predict, mnist_spec, test_split,
                                                           tmp_path, fmt):
    row = export_and_verify("float", fmt, tmp_path / fmt, mnist_spec, test_split, float_predict, model=float_model)
    float_accuracy = optimize.accuracy(float_predict(small.x_test), small.y_test)
    (check,) = row["checks"]
    assert check["passed"] and check["max_abs_diff"] <= 1e-5 and check["argmax_agreement"] == 1.0
    assert check["accuracy"] == pytest.approx(float_accuracy)
    assert check["latency_ms"] > 0 and row["bytes"] > row["gzipped_bytes"] > 0
    assert {"saved_model": "tensorflow", "keras": "tf_keras", "h5": "tf_keras", "tflite": "litert",
            "onnx": "onnxruntime"}[fmt] == check["runtime"]
    assert json.loads((tmp_path / fmt / "verification.json").read_text())["passed"]


@pytest.mark.parametrize("mode", ["dynamic_range", "float16", "int8"])
def test_quantized_tflite_checked_in_litert_against_the_float_model(small, float_model, float_predict, mnist_spec,
                                                                     test_split, tmp_path, mode):
    content = optimize.to_tflite(float_model, mode, small.x_train[:300])
    row = export_and_verify(mode, "tflite", tmp_path / mode, mnist_spec, test_split, float_predict,
                            tflite_content=content)
    (check,) = row["checks"]
    assert check["runtime"] == "litert" and check["argmax_agreement"] >= 0.99
    assert check["details"]["input"] == ("int8" if mode == "int8" else "float32")
    assert (tmp_path / mode / "model.tflite").read_bytes() == content


def test_a_check_that_fails_raises_with_the_numbers(float_model, mnist_spec, test_split, tmp_path):
    other = optimize._copy(float_model)
    other.set_weights([w * 1.5 for w in float_model.get_weights()])
    with pytest.raises(FormatCheckError, match=r"max\|diff\|=") as caught:
        export_and_verify("float", "onnx", tmp_path / "onnx", mnist_spec, test_split,
                          lambda x: other.predict(x["pixels"], verbose=0), model=float_model)
    row = caught.value.rows[0]
    assert not row["passed"] and row["checks"][0]["max_abs_diff"] > 1e-3


def test_keras_files_load_with_safe_mode(mnist_spec, test_split, tmp_path):
    """A .keras file with a Lambda layer (arbitrary code) is refused by the runtime check."""
    import tf_keras as keras

    inputs = keras.Input((784,), name="pixels")
    outputs = keras.layers.Lambda(lambda t: t * 0 + 0.1)(keras.layers.Dense(10)(inputs))
    with pytest.raises(FormatCheckError, match="safe_mode|Lambda|unsafe"):
        export_and_verify("float", "keras", tmp_path / "k", mnist_spec, test_split,
                          lambda x: np.full((len(x["pixels"]), 10), 0.1, np.float32),
                          model=keras.Model(inputs, outputs))


@pytest.mark.parametrize("fmt", TFJS_FORMATS)
def test_tfjs_in_node_and_chromium_with_the_canvas_page(float_model, float_predict, mnist_spec, test_split, tmp_path,
                                                        fmt):
    require_tfjs_runtimes(browser=True)
    row = export_and_verify("float", fmt, tmp_path / fmt, mnist_spec, test_split, float_predict, model=float_model)
    node, browser = row["checks"]
    assert (node["runtime"], browser["runtime"]) == ("tfjs-node", "chromium")
    lossy = fmt in ("tfjs_layers_uint8", "tfjs_layers_float16")
    for check in (node, browser):
        assert check["passed"]
        assert check["argmax_agreement"] >= 0.99 if lossy else check["max_abs_diff"] <= 1e-5
        assert check["details"]["kind"] == ("graph" if fmt == "tfjs_graph" else "layers")
    canvas = browser["canvas"]
    assert canvas["passed"] and canvas["ink_pixels"] > 20
    assert canvas["displayed"] == str(canvas["tensorflow_label"])
    assert (tmp_path / fmt / "chromium.png").stat().st_size > 1000
    if fmt == "tfjs_layers_uint8":
        assert row["bytes"] < 0.35 * float_model.count_params() * 4  # 1 byte a weight instead of 4


def test_report_table_markdown_and_chart(tmp_path):
    rows = [{"artifact": "float-onnx", "variant": "float", "format": "onnx", "bytes": 200_000,
             "gzipped_bytes": 180_000, "tolerance": "max |diff| <= 1e-05", "passed": True,
             "checks": [{"runtime": "onnxruntime", "passed": True, "accuracy": 0.9, "max_abs_diff": 2e-7,
                         "argmax_agreement": 1.0, "latency_ms": 0.01}]},
            {"artifact": "int8-tflite", "variant": "int8", "format": "tflite", "bytes": 55_000,
             "gzipped_bytes": 52_000, "tolerance": "argmax agreement >= 99.00%", "passed": False,
             "checks": [{"runtime": "litert", "passed": False, "accuracy": 0.88, "max_abs_diff": 0.01,
                         "argmax_agreement": 0.97, "latency_ms": 0.02}]}]
    variants = [{"variant": "pruned", "status": "rejected", "accuracy": 0.8, "accuracy_drop": 0.1,
                 "reason": "too far"}]
    written = report_lib.write(rows, tmp_path, variants)
    table = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert [r["artifact"] for r in table] == ["float-onnx", "int8-tflite"]
    markdown = (tmp_path / "report.md").read_text()
    assert "| float-onnx | onnxruntime | 200,000 | 180,000 | accuracy | 0.9000 |" in markdown
    assert "**no**" in markdown and "| pruned | rejected |" in markdown
    assert (tmp_path / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written["rows"] == table


def test_tfjs_compat_imports_tensorflowjs_without_leaving_placeholders():
    import sys

    from tfmlops.tfjs_compat import import_tensorflowjs

    tfjs = import_tensorflowjs()
    assert import_tensorflowjs() is tfjs and hasattr(tfjs.converters, "save_keras_model")
    assert not {"jax", "jax.experimental", "jax.experimental.jax2tf", "tensorflow_decision_forests"} & set(sys.modules)


def test_chart_labels_do_not_overlap(tmp_path):
    """Formats of the same model sit on the same spot of the chart: they share one label, and no
    two labels are drawn over each other."""
    rows = []
    for i, (artifact, size, acc) in enumerate([
            ("float-keras", 550e3, 0.9635), ("float-h5", 551e3, 0.9635), ("float-saved_model", 552e3, 0.9635),
            ("float-onnx", 190e3, 0.9635), ("float-tflite", 190e3, 0.9635), ("float-tfjs_layers", 191e3, 0.9635),
            ("int8-tflite", 48e3, 0.9636), ("dynamic_range-tflite", 49e3, 0.9635),
            ("float-tfjs_layers_uint8", 45e3, 0.9632), ("pruned-tflite", 53e3, 0.9593)]):
        rows.append({"artifact": artifact, "runtime": "litert", "gzipped_bytes": size, "accuracy": acc,
                     "latency_ms": 0.1 + i / 10, "passed": True})
    labels = report_lib.plot(rows, tmp_path / "chart.png")
    texts = [t.get_text() for t in labels]
    assert "float-keras\nfloat-h5\nfloat-saved_model" in texts and len(texts) < len(rows)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(labels[0].figure).get_renderer()  # the figure was closed after saving
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]


def test_report_compares_quantization_aware_with_post_training_int8(tmp_path):
    variants = [{"variant": "int8", "status": "passed", "accuracy": 0.9636, "accuracy_drop": -0.0001,
                 "details": {"tflite_bytes": 54_816, "tflite_gzipped_bytes": 48_618, "calibration_rows": 200}},
                {"variant": "qat_int8", "status": "passed", "accuracy": 0.9702, "accuracy_drop": -0.0067,
                 "details": {"tflite_bytes": 53_528, "tflite_gzipped_bytes": 47_000, "qat_epochs": 2}}]
    rows = report_lib.quantization_comparison(variants)
    assert [(r["variant"], r["method"]) for r in rows] == [("int8", "post-training"),
                                                            ("qat_int8", "quantization-aware training")]
    assert rows[1]["accuracy_drop_pp"] == -0.67 and rows[1]["training_epochs"] == 2
    assert rows[0]["calibration_rows"] == 200 and rows[0]["training_epochs"] == 0
    report_lib.write([], tmp_path, variants)
    assert json.loads((tmp_path / "report.json").read_text())["quantization_comparison"] == rows
    markdown = (tmp_path / "report.md").read_text()
    assert "## int8: quantization-aware training vs post-training" in markdown
    assert "| qat_int8 | quantization-aware training | passed | 0.9702 | -0.67 | 53,528 | 47,000 | 2 | 0 |" in markdown
    # one of the two missing (e.g. not selected): no comparison
    assert report_lib.quantization_comparison(variants[:1]) == []
    pruned = [{"variant": "pruned_int8", "status": "passed", "accuracy": 0.95, "accuracy_drop": 0.004,
               "details": {"tflite_bytes": 54_816, "tflite_gzipped_bytes": 18_000, "calibration_rows": 200}},
              {"variant": "pruned_qat_int8", "status": "rejected", "accuracy": 0.9, "accuracy_drop": 0.05,
               "details": {"tflite_bytes": 53_528, "tflite_gzipped_bytes": 17_500, "qat_epochs": 2}}]
    both = report_lib.quantization_comparison(variants + pruned)
    assert [r["variant"] for r in both] == ["int8", "qat_int8", "pruned_int8", "pruned_qat_int8"]
    assert both[3]["status"] == "rejected" and both[3]["accuracy_drop_pp"] == 5.0
