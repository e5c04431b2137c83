"""A mobile bundle per target: one TFLite variant of a version, ready for an app.

``<model>-v<version>-<variant>-mobile.zip`` holds::

    model.tflite        the variant with TFLite metadata (normalization, ranges, labels) embedded
                        and labels.txt attached (see tfmlops.mobile.metadata)
    labels.txt          one class name per line, in output order
    io.json             input/output: name, shape, dtype, quantization, normalization
    android/            build.gradle.kts dependencies (LiteRT) + DigitClassifier.kt
    ios/                Podfile (TensorFlowLiteSwift) + DigitClassifier.swift
    README.md           what is where, how to preprocess

Targets: ``int8`` (full integer: smallest, int8 input/output — the app quantizes with the
scale/zero point in io.json) and ``float16`` (float16 weights, float32 input/output). The
Kotlin and Swift files are minimal examples, not compiled here (no Android/iOS toolchain), and the
Gradle / CocoaPods coordinates were not resolved here (no access to those repositories).

:func:`smoke` runs a bundle from its own files only: it reads the normalization and labels from the
model's metadata, normalizes raw 0–255 pixels, quantizes when the input is int8, runs LiteRT and
compares with the source model's outputs.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from tfmlops.mobile import metadata as md

TARGETS = {"int8": "full integer (int8 weights, activations, input and output)",
           "float16": "float16 weights, float32 input and output"}
PIXEL_MEAN, PIXEL_STD = 0.0, 255.0  # the model takes pixel / 255
LABELS = [str(d) for d in range(10)]
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed: the same inputs give the same zip bytes

GRADLE = """\
// app/build.gradle.kts — LiteRT (the TensorFlow Lite runtime, renamed; Google Maven, google()) and
// its support library (MetadataExtractor reads labels.txt from model.tflite). The 1.x artifacts
// keep the Interpreter API used in DigitClassifier.kt (2.x moves to CompiledModel).
dependencies {
    implementation("com.google.ai.edge.litert:litert:1.0.1")
    implementation("com.google.ai.edge.litert:litert-support:1.0.1")
    implementation("com.google.ai.edge.litert:litert-metadata:1.0.1")
}
android {
    androidResources { noCompress += "tflite" }  // memory-map the model from the APK
}
// Put model.tflite under app/src/main/assets/.
"""

KOTLIN = """\
// {model} version {version}, {variant}: {target}.
// Input: 784 raw pixels 0..255 (28x28, row-major, white digit on black). Output: 10 probabilities.
import android.content.Context
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.support.common.FileUtil
import org.tensorflow.lite.support.metadata.MetadataExtractor
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.roundToInt

class DigitClassifier(context: Context) {{
    private val model = FileUtil.loadMappedFile(context, "model.tflite")
    private val interpreter = Interpreter(model)
    // labels.txt travels inside model.tflite (TFLite metadata, associated file)
    val labels: List<String> = MetadataExtractor(model).getAssociatedFile("labels.txt")
        .bufferedReader().readLines()

    fun classify(pixels: FloatArray): Pair<String, Float> {{
        val input = interpreter.getInputTensor(0)
        val buffer = ByteBuffer.allocateDirect(input.numBytes()).order(ByteOrder.nativeOrder())
        for (p in pixels) {{
            val x = (p - {mean}f) / {std}f  // the metadata's NormalizationOptions
            if (input.dataType() == DataType.INT8) {{
                val q = input.quantizationParams()
                buffer.put((x / q.scale + q.zeroPoint).roundToInt().coerceIn(-128, 127).toByte())
            }} else {{
                buffer.putFloat(x)
            }}
        }}
        val output = interpreter.getOutputTensor(0)
        val out = ByteBuffer.allocateDirect(output.numBytes()).order(ByteOrder.nativeOrder())
        interpreter.run(buffer.rewind(), out)
        out.rewind()
        val probs = FloatArray({classes}) {{
            if (output.dataType() == DataType.INT8) {{
                val q = output.quantizationParams()
                (out.get().toInt() - q.zeroPoint) * q.scale
            }} else out.float
        }}
        val best = probs.indices.maxBy {{ probs[it] }}
        return labels[best] to probs[best]
    }}
}}
"""

PODFILE = """\
# ios/Podfile — the TensorFlow Lite (LiteRT) Swift API. Google publishes it as a CocoaPod; there is
# no official Swift package (SwiftPM users wrap the TensorFlowLiteC xcframework as a binary target).
platform :ios, '12.0'
target 'DigitApp' do
  use_frameworks!
  pod 'TensorFlowLiteSwift', '~> 2.17.0'
end
# Add model.tflite and labels.txt to the app target's resources.
"""

SWIFT = """\
// {model} version {version}, {variant}: {target}.
// Input: 784 raw pixels 0..255 (28x28, row-major, white digit on black). Output: 10 probabilities.
import Foundation
import TensorFlowLite

final class DigitClassifier {{
    private let interpreter: Interpreter
    let labels: [String]

    init() throws {{
        let model = Bundle.main.path(forResource: "model", ofType: "tflite")!
        interpreter = try Interpreter(modelPath: model)
        try interpreter.allocateTensors()
        let text = try String(contentsOfFile: Bundle.main.path(forResource: "labels", ofType: "txt")!)
        labels = text.split(separator: "\\n").map(String.init)
    }}

    func classify(pixels: [Float]) throws -> (label: String, probability: Float) {{
        let input = try interpreter.input(at: 0)
        let normalized = pixels.map {{ ($0 - {mean}) / {std} }}  // the metadata's NormalizationOptions
        let data: Data
        if input.dataType == .int8, let q = input.quantizationParameters {{
            let bytes = normalized.map {{ Int8(clamping: Int(($0 / q.scale).rounded()) + q.zeroPoint) }}
            data = bytes.withUnsafeBufferPointer {{ Data(buffer: $0) }}
        }} else {{
            data = normalized.withUnsafeBufferPointer {{ Data(buffer: $0) }}
        }}
        try interpreter.copy(data, toInputAt: 0)
        try interpreter.invoke()
        let output = try interpreter.output(at: 0)
        let probs: [Float]
        if output.dataType == .int8, let q = output.quantizationParameters {{
            probs = output.data.map {{ Float(Int(Int8(bitPattern: $0)) - q.zeroPoint) * q.scale }}
        }} else {{
            probs = output.data.withUnsafeBytes {{ Array($0.bindMemory(to: Float.self)) }}
        }}
        let best = probs.indices.max {{ probs[$0] < probs[$1] }}!
        return (labels[best], probs[best])
    }}
}}
"""

README = """\
# {model} version {version} — mobile bundle ({variant})

{target}. `model.tflite` carries TFLite metadata (Android Studio's ML model binding and the LiteRT
support library read it): input normalization `(pixel - {mean}) / {std}`, value range, and
`labels.txt` as an associated file. `io.json` describes the tensors (shape, dtype, quantization).

- Android: `android/build.gradle.kts` (LiteRT dependencies), `android/DigitClassifier.kt`;
  or import `model.tflite` with Android Studio's *File ▸ New ▸ Other ▸ TensorFlow Lite Model*.
- iOS: `ios/Podfile` (TensorFlowLiteSwift), `ios/DigitClassifier.swift`.

Input: 784 pixels 0..255 of a 28×28 grayscale image, row-major, white digit on black (MNIST).
{quantization}
Checked: {check}
"""


def tensor_io(content: bytes) -> dict:
    """Input/output of a flatbuffer as LiteRT sees it, plus the normalization the app applies."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)

    def describe(detail: dict) -> dict:
        scale, zero = detail["quantization"]
        return {"name": detail["name"], "shape": [int(d) for d in detail["shape"]],
                "dtype": np.dtype(detail["dtype"]).name,
                "quantization": {"scale": float(scale), "zero_point": int(zero)} if scale else None}

    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"a bundle needs one input and one output tensor, got {len(inputs)} and {len(outputs)}")
    normalization = {"mean": [PIXEL_MEAN], "std": [PIXEL_STD],
                     "formula": "x = (pixel - mean) / std, pixel 0..255; int8: q = round(x / scale) + zero_point"}
    return {"input": {**describe(inputs[0]), "normalization": normalization, "range": [0.0, 1.0]},
            "output": {**describe(outputs[0]), "labels": "labels.txt",
                       "meaning": "class probabilities (softmax); int8: p = (q - zero_point) * scale"}}


def with_metadata(content: bytes, model_name: str, version: int, variant: str, labels=LABELS) -> bytes:
    """``content`` with the TFLite metadata of this model (normalization, ranges, labels attached)."""
    info = md.ModelInfo(
        name=f"{model_name} v{version} ({variant})",
        description=f"Handwritten digit classifier (MNIST-style 28x28 grayscale), {TARGETS[variant]}.",
        version=str(version), author="tfmlops", license="Apache-2.0",
        # display names (ML binding names its generated accessors after them); io.json keeps
        # the interpreter's tensor names
        inputs=[md.TensorInfo("pixels", "784 pixels of a 28x28 grayscale image, row-major, "
                              "white digit on black; normalized as (pixel - mean) / std.",
                              [PIXEL_MEAN], [PIXEL_STD], [0.0], [1.0])],
        outputs=[md.TensorInfo("probabilities", f"Probabilities of the {len(labels)} classes.",
                               min=[0.0], max=[1.0], label_file="labels.txt")],
        files={"labels.txt": ("\n".join(labels) + "\n").encode()})
    return md.populate(content, info)


def build(content: bytes, out: Path, model_name: str, version: int, variant: str, check: str = "") -> Path:
    """Write the bundle of one variant's flatbuffer as a zip under ``out``; returns its path."""
    if variant not in TARGETS:
        raise ValueError(f"unknown mobile target {variant!r}; choose from {list(TARGETS)}")
    model = with_metadata(content, model_name, version, variant)
    spec = tensor_io(content)
    fill = {"model": model_name, "version": version, "variant": variant, "target": TARGETS[variant],
            "mean": PIXEL_MEAN, "std": PIXEL_STD, "classes": len(LABELS)}
    quantization = spec["input"]["quantization"]
    files = {
        "model.tflite": model,
        "labels.txt": ("\n".join(LABELS) + "\n").encode(),
        "io.json": json.dumps(spec, indent=2).encode(),
        "android/build.gradle.kts": GRADLE.encode(),
        "android/DigitClassifier.kt": KOTLIN.format(**fill).encode(),
        "ios/Podfile": PODFILE.encode(),
        "ios/DigitClassifier.swift": SWIFT.format(**fill).encode(),
        "README.md": README.format(**fill, check=check or "see smoke.json in the MLflow run", quantization=(
            f"int8 input: q = round(x / {quantization['scale']:.8g}) + {quantization['zero_point']}; "
            "output the same way back." if quantization else "float32 input and output.")).encode(),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{model_name}-v{version}-{variant}-mobile.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=ZIP_DATE), data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def smoke(bundle: Path, pixels: np.ndarray, expected: np.ndarray, min_agreement: float = 0.99) -> dict:
    """Run the bundle from its own files: metadata → normalization and labels, io.json →
    quantization, LiteRT → probabilities; compare with ``expected`` (the source model on
    ``pixels`` / 255). Returns the numbers, with ``passed``."""
    from ai_edge_litert.interpreter import Interpreter

    with zipfile.ZipFile(bundle) as archive:
        model, spec = archive.read("model.tflite"), json.loads(archive.read("io.json"))
        labels = archive.read("labels.txt").decode().split()
    info = md.read(model)
    (tensor,), (output,) = info.inputs, info.outputs
    if tensor.mean is None or output.label_file is None:
        raise md.MetadataError("the bundle's metadata lacks the input normalization or the output labels")
    embedded = info.files[output.label_file].decode().split()
    x = (np.asarray(pixels, np.float32) - np.float32(tensor.mean[0])) / np.float32(tensor.std[0])
    interpreter = Interpreter(model_content=model)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], [len(x), x.shape[1]])
    interpreter.allocate_tensors()
    q = spec["input"]["quantization"]
    if q:
        info8 = np.iinfo(np.int8)
        x = np.clip(np.round(x / q["scale"]) + q["zero_point"], info8.min, info8.max).astype(np.int8)
    interpreter.set_tensor(inp["index"], np.ascontiguousarray(x))
    interpreter.invoke()
    probs = interpreter.get_tensor(out["index"])
    if spec["output"]["quantization"]:
        qo = spec["output"]["quantization"]
        probs = (probs.astype(np.float32) - qo["zero_point"]) * qo["scale"]
    predicted = np.argmax(probs, axis=1)
    agreement = float(np.mean(predicted == np.argmax(expected, axis=1)))
    return {"bundle": Path(bundle).name, "rows": int(len(x)), "argmax_agreement": agreement,
            "max_abs_diff": float(np.max(np.abs(probs - expected))), "labels_match": embedded == labels,
            "labels": labels[:3] + ["…"], "input_dtype": spec["input"]["dtype"],
            "normalization": {"mean": tensor.mean, "std": tensor.std},
            "min_parser_version": info.min_parser_version, "bytes": Path(bundle).stat().st_size,
            "passed": bool(agreement >= min_agreement and embedded == labels)}

