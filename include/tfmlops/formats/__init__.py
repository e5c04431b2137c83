"""Multi-format export, each artifact verified in the runtime that will use it.

An *artifact* is one model (a *variant*: ``float`` — the registered model itself —, or an
optimized one from :mod:`tfmlops.optimize`) written in one *format*:

============================  ===========================  ==================================
format                        files                        verified in
============================  ===========================  ==================================
``saved_model``               ``saved_model/``, smoke.json  TensorFlow, ``serving_default``
``keras``                     ``model.keras``              tf_keras, config checked, safe mode
``h5``                        ``model.h5``                 tf_keras, config checked (*)
``tflite``                    ``model.tflite``             LiteRT (``ai_edge_litert``)
``onnx``                      ``model.onnx``               onnxruntime
``tfjs_layers``               ``model.json`` + shards      @tensorflow/tfjs in Node + Chromium
``tfjs_layers_uint8``         idem, uint8 weights          idem
``tfjs_layers_float16``       idem, float16 weights        idem
``tfjs_graph``                idem (from the SavedModel)   idem
============================  ===========================  ==================================

The float model gets every format; each optimized variant gets ``tflite`` (see
:func:`artifacts`). Every check loads the artifact back, predicts the test split and
compares the first rows (a fixed held-out batch) with the *source* model — the Keras variant
it was written from, or the float model for the post-training quantizations — within the
artifact's tolerance (:func:`tolerance_for`): ``max |diff| <= 1e-5`` for float artifacts,
argmax agreement ``>= 99 %`` for quantized ones. It also measures accuracy on the whole test
split, bytes, gzipped bytes and the median one-row latency in that runtime.

(*) Keras' ``safe_mode`` does not apply to ``.h5`` files: a Lambda layer's bytecode would run on
load. Both Keras formats are therefore loaded only after :mod:`tfmlops.model_files` has checked
the architecture config (Keras objects only, no Lambda layer); an ``.h5`` file that fails the
check is never loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

# The optimized variants (tfmlops.optimize builds them); each is exported as TFLite.
QUANTIZATIONS = ("dynamic_range", "float16", "int8")
VARIANTS = (*QUANTIZATIONS, "qat_int8", "pruned", "pruned_int8", "pruned_qat_int8", "distilled")
FLOAT_FORMATS = ("saved_model", "keras", "h5", "tflite", "onnx", "tfjs_layers", "tfjs_layers_uint8",
                 "tfjs_layers_float16", "tfjs_graph")
TFJS_FORMATS = ("tfjs_layers", "tfjs_layers_uint8", "tfjs_layers_float16", "tfjs_graph")
RUNTIMES = {
    "saved_model": ("tensorflow",), "keras": ("tf_keras",), "h5": ("tf_keras",), "tflite": ("litert",),
    "onnx": ("onnxruntime",), **{fmt: ("tfjs-node", "chromium") for fmt in TFJS_FORMATS},
}
LOSSY = {("dynamic_range", "tflite"), ("float16", "tflite"), ("int8", "tflite"), ("qat_int8", "tflite"),
         ("pruned_int8", "tflite"), ("pruned_qat_int8", "tflite"), ("float", "tfjs_layers_uint8"),
         ("float", "tfjs_layers_float16")}


def artifacts(variants=VARIANTS, formats=FLOAT_FORMATS) -> list[tuple[str, str]]:
    """The (variant, format) pairs to export: every requested format of the float model, and
    the TFLite flatbuffer of each optimized variant."""
    unknown = set(formats) - set(FLOAT_FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {list(FLOAT_FORMATS)}")
    return [("float", fmt) for fmt in formats] + [(variant, "tflite") for variant in variants]



def artifact_name(variant: str, fmt: str) -> str:
    return f"{variant}-{fmt}"


# lossy artifacts of a regressor: 95 % of the rows within this share of the test labels' std (int8 of
# the diabetes example: RMSE unchanged, 55.1 vs 55.3, while single values move by ~12 % of the std)
REGRESSION_LOSSY_SHARE = 0.2
REGRESSION_LOSSY_QUANTILE = 0.95


@dataclass(frozen=True)
class Tolerance:
    """A float artifact must match within ``max_abs_diff``, relative to the outputs' magnitude when
    they exceed 1 (a regressor's values: float32 rounding grows with them); a quantized classifier
    must agree on the predicted class for at least ``min_agreement`` of the held-out batch; a
    quantized regressor must keep the ``quantile`` of its |diff| within ``max_abs_diff``, set from
    the labels' spread (``basis`` says how)."""

    max_abs_diff: float | None = 1e-5
    min_agreement: float | None = None
    basis: str = ""
    quantile: float | None = None

    def allowed(self, expected) -> float:
        """The |diff| allowed against ``expected`` outputs."""
        import numpy as np

        if self.quantile is not None:
            return self.max_abs_diff
        scale = float(np.max(np.abs(expected))) if np.size(expected) else 1.0
        return self.max_abs_diff * max(1.0, scale)

    def describe(self) -> str:
        if self.quantile is not None:
            return f"{self.quantile:.0%} of |diff| <= {self.max_abs_diff:.4g} ({self.basis})"
        if self.max_abs_diff is not None:
            return f"max |diff| <= {self.max_abs_diff:g} x max(1, max |output|)"
        return f"predicted-class agreement >= {self.min_agreement:.2%}"


def tolerance_for(variant: str, fmt: str, max_abs_diff: float = 1e-5, min_agreement: float = 0.99,
                  task: str = "multiclass", label_std: float | None = None) -> Tolerance:
    if (variant, fmt) not in LOSSY:
        return Tolerance(max_abs_diff=max_abs_diff)
    if task == "regression":
        if not label_std:
            raise ValueError("a lossy regression artifact's tolerance needs the test labels' standard deviation")
        return Tolerance(max_abs_diff=REGRESSION_LOSSY_SHARE * label_std, quantile=REGRESSION_LOSSY_QUANTILE,
                         basis=f"{REGRESSION_LOSSY_SHARE:.0%} of the test labels' std {label_std:.4g}")
    return Tolerance(max_abs_diff=None, min_agreement=min_agreement)


def task_outputs(task: str, raw):
    """A model's raw output by task: class probabilities [B, C] (multiclass), the positive class's
    probability [B] (binary: from [B, 1], [B] or the serving signature's [B, 2]), the value [B]."""
    import numpy as np

    out = np.asarray(raw, np.float32)
    if task == "multiclass":
        return out
    if task == "binary" and out.ndim == 2 and out.shape[1] == 2:
        return out[:, 1]
    return out.reshape(len(out))


def predicted_classes(task: str, outputs):
    """Class indices from :func:`task_outputs` (binary: p >= 0.5)."""
    import numpy as np

    return np.argmax(outputs, axis=1) if task == "multiclass" else (np.asarray(outputs) >= 0.5).astype(np.int64)


class NotApplicable(RuntimeError):
    """A format (or variant) does not apply to this model: the converter or the runtime does not
    support an op or layer it has. The message names them; the artifact is reported, not failed."""


class FormatCheckError(RuntimeError):
    """An exported artifact does not reproduce its source model in its runtime; ``rows`` holds
    the measured numbers of every check that ran."""

    def __init__(self, message: str, rows: list[dict]):
        super().__init__(message)
        self.rows = rows


class RuntimeUnavailable(RuntimeError):
    """The runtime needed to check a format is not installed (node, web/node_modules, chromium)."""
