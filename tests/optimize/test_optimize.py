"""Each optimization on a small MNIST sample, with checks that it really did what it says."""

from __future__ import annotations

import numpy as np
import pytest

from tfmlops import optimize
from tfmlops.formats.runtimes import LiteRTModel


def _agreement(a, b):
    return float(np.mean(np.argmax(a, 1) == np.argmax(b, 1)))


def test_int8_model_is_fully_integer_and_calibrated_on_training_rows(small, float_model, float_predict):
    sample = optimize.representative_sample(small.x_train, 150, seed=1)
    assert sample.shape == (150, 784) and sample.dtype == np.float32
    rows = {r.tobytes() for r in small.x_train}
    assert all(r.tobytes() in rows for r in sample)  # real training rows, not noise

    content = optimize.to_tflite(float_model, "int8", sample)
    interpreter = LiteRTModel(content)
    dtypes = interpreter.tensor_dtypes()
    assert dtypes["input"] == "int8" and dtypes["output"] == "int8"
    weights = optimize.tflite_weight_dtypes(content)
    matmuls = {k: v for k, v in weights.items() if "MatMul" in k}
    assert matmuls and set(matmuls.values()) == {"int8"}, weights
    assert "float32" not in set(weights.values()), weights

    probs = interpreter(small.x_test)
    assert _agreement(probs, float_predict(small.x_test)) >= 0.97
    float_bytes = len(optimize.to_tflite(float_model))
    assert len(content) < 0.35 * float_bytes


@pytest.mark.parametrize("mode, weight_dtype", [("dynamic_range", "int8"), ("float16", "float16")])
def test_dynamic_range_and_float16_quantize_the_weights(small, float_model, float_predict, mode, weight_dtype):
    content = optimize.to_tflite(float_model, mode)
    weights = optimize.tflite_weight_dtypes(content)
    assert weight_dtype in set(weights.values()), weights
    probs = LiteRTModel(content)(small.x_test)
    assert LiteRTModel(content).tensor_dtypes()["input"] == "float32"
    assert _agreement(probs, float_predict(small.x_test)) >= 0.98


def test_pruning_reaches_the_target_sparsity_and_keeps_the_source(small, float_model):
    before = optimize.kernel_sparsity(float_model)
    pruned, report = optimize.prune(float_model, small.x_train, small.y_train, target_sparsity=0.75, epochs=2,
                                    batch_size=64, frequency=10)
    assert before < 0.01 and optimize.kernel_sparsity(float_model) == before  # source untouched
    assert report["sparsity"] >= 0.75 and optimize.kernel_sparsity(pruned) >= 0.75
    assert [type(layer).__name__ for layer in pruned.layers] == ["InputLayer", "Dense", "Dense"]  # stripped
    accuracy = optimize.accuracy(pruned.predict(small.x_test, verbose=0), small.y_test)
    assert accuracy > 0.6
    # the zeros pay off once compressed
    import gzip

    dense = gzip.compress(optimize.to_tflite(float_model))
    sparse = gzip.compress(optimize.to_tflite(pruned))
    assert len(sparse) < 0.6 * len(dense)


def test_pruning_below_target_is_an_error(small, float_model):
    with pytest.raises(optimize.OptimizationError, match="too few"):
        optimize.prune(float_model, small.x_train[:200], small.y_train[:200], 0.8, epochs=1, batch_size=64,
                       frequency=10)


def test_distilled_student_learns_the_teachers_outputs_not_the_labels(small, float_model, float_predict):
    """Labels are deliberately wrong ((y + 1) mod 10): with alpha = 0 the student can only have
    learned from the teacher's soft targets; with alpha = 1 it follows the labels instead."""
    wrong = (small.y_train + 1) % 10
    teacher_weights = [w.copy() for w in float_model.get_weights()]
    teacher_probs = float_predict(small.x_test)

    student, history = optimize.distill(float_model, small.x_train, wrong, temperature=3.0, alpha=0.0, epochs=3,
                                        batch_size=64)
    assert all(np.array_equal(a, b) for a, b in zip(teacher_weights, float_model.get_weights()))  # frozen
    assert history["distillation_loss"][-1] < history["distillation_loss"][0]
    student_probs = student.predict(small.x_test, verbose=0)
    assert _agreement(student_probs, teacher_probs) >= 0.8
    assert float(np.mean(np.argmax(student_probs, 1) == (small.y_test + 1) % 10)) < 0.2

    labels_only, _ = optimize.distill(float_model, small.x_train, wrong, temperature=3.0, alpha=1.0, epochs=3,
                                      batch_size=64)
    assert _agreement(labels_only.predict(small.x_test, verbose=0), teacher_probs) < 0.3


def test_gate_compares_with_the_float_model():
    assert optimize.accuracy_drop_gate(0.95, 0.945, 0.01).passed
    decision = optimize.accuracy_drop_gate(0.95, 0.93, 0.01)
    assert not decision.passed and "2.00 pp" in decision.reason


def test_a_failing_variant_does_not_block_the_others(small, float_model):
    config = optimize.OptimizeConfig(int8_samples=100, pruning_epochs=1, batch_size=1024, max_accuracy_drop=0.03,
                                     teacher="source", distill_epochs=1, temperature=2.0, alpha=0.5)
    config_strict = optimize.OptimizeConfig(**{**config.to_dict(), "max_accuracy_drop": -1.0})
    passed, results = optimize.optimize(float_model, small, ["pruned", "int8"], config)
    status = {r["variant"]: r["status"] for r in results}
    assert status == {"pruned": "failed", "int8": "passed"}, results
    assert "too few" in results[0]["reason"]
    assert list(passed) == ["int8"] and passed["int8"].tflite

    _, rejected = optimize.optimize(float_model, small, ["float16"], config_strict)
    assert rejected[0]["status"] == "rejected" and "below the float model" in rejected[0]["reason"]


def test_pruned_int8_is_fully_integer_and_keeps_the_zeros(small, float_model):
    config = optimize.OptimizeConfig(int8_samples=100, target_sparsity=0.75, pruning_epochs=2, batch_size=64,
                                     pruning_frequency=10)
    cache = {}
    pruned = optimize.build_variant("pruned", float_model, small, config, cache=cache)
    variant = optimize.build_variant("pruned_int8", float_model, small, config, cache=cache)
    assert variant.model is pruned.model  # one pruning run, shared
    content = variant.tflite
    dtypes = LiteRTModel(content).tensor_dtypes()
    assert dtypes["input"] == "int8" and dtypes["output"] == "int8"
    weights = optimize.tflite_weight_dtypes(content)
    matmuls = {k: v for k, v in weights.items() if "MatMul" in k}
    assert matmuls and set(matmuls.values()) == {"int8"}, weights
    assert "float32" not in set(weights.values()), weights
    # the zeros of the pruned kernels are still exact zeros in the int8 weights
    assert optimize.tflite_weight_sparsity(content) >= 0.75
    assert variant.details["int8_weight_sparsity"] >= 0.75 and variant.details["sparsity"] >= 0.75
    assert optimize.tflite_weight_sparsity(optimize.to_tflite(float_model, "int8",
                                                              optimize.representative_sample(small.x_train, 100))) < 0.1
    # it reproduces the pruned model it was quantized from, and compresses far below plain int8
    agreement = _agreement(variant.predict(small.x_test), pruned.model.predict(small.x_test, verbose=0))
    assert agreement >= 0.95 and abs(variant.score - pruned.score) < 0.03
    plain_int8 = optimize.build_variant("int8", float_model, small, config)
    assert variant.details["tflite_gzipped_bytes"] < 0.6 * plain_int8.details["tflite_gzipped_bytes"]
    assert variant.details["tflite_gzipped_bytes"] == optimize.gzipped_size(content)

    # pruning-preserving QAT from the same pruning run: full int8, the zeros kept through training
    config = optimize.OptimizeConfig(**{**config.to_dict(), "qat_epochs": 1})
    pqat = optimize.build_variant("pruned_qat_int8", float_model, small, config, cache=cache)
    dtypes = LiteRTModel(pqat.tflite).tensor_dtypes()
    assert dtypes["input"] == "int8" and dtypes["output"] == "int8"
    assert optimize.tflite_weight_sparsity(pqat.tflite) >= 0.75 and pqat.details["int8_weight_sparsity"] >= 0.75
    assert pqat.details["qat_scheme"] == "prune-preserving 8-bit" and pqat.details["qat_epochs"] == 1
    assert [type(layer).__name__ for layer in pqat.model.layers] == ["InputLayer", "Dense", "Dense"]
    assert optimize.kernel_sparsity(pqat.model) >= 0.75  # its Keras source kept the zeros too
    assert not np.array_equal(pqat.model.get_weights()[0], pruned.model.get_weights()[0])  # and was fine-tuned
    assert _agreement(pqat.predict(small.x_test), pqat.model.predict(small.x_test, verbose=0)) >= 0.95
    assert pqat.details["tflite_gzipped_bytes"] < 0.6 * plain_int8.details["tflite_gzipped_bytes"]


def test_qat_int8_trains_with_fake_quantization_and_converts_to_full_int8(small, float_model, float_predict, tmp_path):
    from tfmlops.model_files import load_keras_file

    before = [w.copy() for w in float_model.get_weights()]
    config = optimize.OptimizeConfig(qat_epochs=2, batch_size=64)
    variant = optimize.build_variant("qat_int8", float_model, small, config)
    assert all(np.array_equal(a, b) for a, b in zip(before, float_model.get_weights()))  # source untouched
    assert variant.details["quantized_layers"] == 2 and variant.details["qat_epochs"] == 2

    dtypes = LiteRTModel(variant.tflite).tensor_dtypes()
    assert dtypes["input"] == "int8" and dtypes["output"] == "int8"
    weights = optimize.tflite_weight_dtypes(variant.tflite)
    matmuls = {k: v for k, v in weights.items() if "MatMul" in k}
    assert matmuls and set(matmuls.values()) == {"int8"}, weights
    assert "float32" not in set(weights.values()), weights
    assert "calibration_rows" not in variant.details  # ranges come from training, not from a sample

    # the Keras model kept with it is plain (safe to load), holds the fine-tuned weights, and the
    # flatbuffer reproduces it as closely as post-training int8 reproduces the float model
    fine_tuned = variant.model
    assert [type(layer).__name__ for layer in fine_tuned.layers] == ["InputLayer", "Dense", "Dense"]
    assert not np.array_equal(fine_tuned.get_weights()[0], before[0])
    fine_tuned.save(str(tmp_path / "model.keras"))
    reloaded = load_keras_file(tmp_path / "model.keras")
    source = reloaded.predict(small.x_test, verbose=0)
    assert _agreement(variant.predict(small.x_test), source) >= 0.97
    assert abs(variant.details["fake_quant_score"] - variant.score) <= 0.01
    assert variant.details["tflite_bytes"] == len(variant.tflite) < 0.35 * len(optimize.to_tflite(float_model))

    float_accuracy = optimize.accuracy(float_predict(small.x_test), small.y_test)
    assert optimize.accuracy_drop_gate(float_accuracy, variant.score, config.max_accuracy_drop).passed


def test_qat_needs_an_epoch(small, float_model):
    config = optimize.OptimizeConfig(qat_epochs=0)
    _, result = optimize.optimize_one("qat_int8", float_model, small, config)
    assert result["status"] == "failed" and "at least one epoch" in result["reason"]


def test_fine_tuning_copies_are_trainable_even_from_a_frozen_source(float_model):
    """Distillation freezes its teacher (possibly the source model itself): pruning and QAT must
    still train their copy, else tfmot's prune-preserving scheme skips the layers."""
    frozen = optimize._copy(float_model)
    frozen.trainable = False
    assert not frozen.trainable_weights
    copy = optimize._copy(frozen)
    assert len(copy.trainable_weights) == len(float_model.weights) and not frozen.trainable_weights
