"""A mobile bundle per target: one TFLite variant of a version, ready for an app — for any model
the spec describes (its inputs by name, dtype and shape; its task; its class names).

``<model>-v<version>-<variant>-mobile.zip`` holds::

    model.tflite        the variant with TFLite metadata embedded: one entry per input (description,
                        normalization where the module declares one), the output, and — for
                        classification — labels.txt attached (see tfmlops.mobile.metadata)
    labels.txt          classification only: one class name per line (CLASS_NAMES, output order)
    io.json             the serving_default signature: every input (spec name, tensor name, index,
                        shape, dtype, quantization, normalization) and the output (what it means)
    android/            build.gradle.kts dependencies (LiteRT) + <Name>Model.kt
    ios/                Podfile (TensorFlowLiteSwift) + <Name>Model.swift
    README.md           what is where, each input and how to preprocess it

Targets: ``int8`` (full integer: smallest; float32 inputs and the output become int8 — the app
quantizes with the scale/zero point in io.json) and ``float16`` (float16 weights, float32 input and
output). The Kotlin and Swift files are minimal examples that feed the inputs by name through the
interpreter's signature runner; they are not compiled here (no Android/iOS toolchain), and the
Gradle / CocoaPods coordinates were not resolved here (no access to those repositories).

App-side preprocessing (``client_normalization``, a module's optional ``MOBILE_INPUTS``): per float32
input, ``x = (value - mean) / std`` before the model — the MNIST example takes pixels 0..255 and
divides by 255. Inputs without one are fed as the model takes them.

:func:`smoke` runs a bundle from its own files only: the normalization from the model's metadata,
the quantization and the input names from io.json, the labels from labels.txt and the metadata;
LiteRT's signature runner runs it and the outputs are compared with the source model's.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np

from tfmlops.mobile import metadata as md
from tfmlops.modelspec import ModelSpec

TARGETS = {"int8": "full integer (int8 weights and activations; float inputs and the output quantized to int8)",
           "float16": "float16 weights, float32 input and output"}
SIGNATURE = "serving_default"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed: the same inputs give the same zip bytes
LABELS_FILE = "labels.txt"

GRADLE = """\
// app/build.gradle.kts — LiteRT (the TensorFlow Lite runtime, renamed; Google Maven, google()) and
// its support library (MetadataExtractor reads labels.txt from model.tflite). The 1.x artifacts
// keep the Interpreter API used in {cls}.kt (2.x moves to CompiledModel).
dependencies {{
    implementation("com.google.ai.edge.litert:litert:1.0.1")
    implementation("com.google.ai.edge.litert:litert-support:1.0.1")
    implementation("com.google.ai.edge.litert:litert-metadata:1.0.1")
}}
android {{
    androidResources {{ noCompress += "tflite" }}  // memory-map the model from the APK
}}
// Put model.tflite under app/src/main/assets/.
"""

PODFILE = """\
# ios/Podfile — the TensorFlow Lite (LiteRT) Swift API. Google publishes it as a CocoaPod; there is
# no official Swift package (SwiftPM users wrap the TensorFlowLiteC xcframework as a binary target).
# SignatureRunner (inputs by name, used in {cls}.swift) is in TensorFlowLiteSwift 2.10 and later.
platform :ios, '12.0'
target 'App' do  # your app target
  use_frameworks!
  pod 'TensorFlowLiteSwift', '~> 2.17.0'
end
# Add {resources} to the app target's resources.
"""

KOTLIN_HARD_KEYWORDS = {
    "as", "break", "class", "continue", "do", "else", "false", "for", "fun", "if", "in", "interface", "is",
    "null", "object", "package", "return", "super", "this", "throw", "true", "try", "typealias", "typeof",
    "val", "var", "when", "while"}
SWIFT_KEYWORDS = {
    "associatedtype", "class", "deinit", "enum", "extension", "fileprivate", "func", "import", "init", "inout",
    "internal", "let", "open", "operator", "private", "protocol", "public", "rethrows", "static", "struct",
    "subscript", "typealias", "var", "break", "case", "continue", "default", "defer", "do", "else", "fallthrough",
    "for", "guard", "if", "in", "repeat", "return", "switch", "where", "while", "as", "Any", "catch", "false",
    "is", "nil", "super", "self", "Self", "throw", "throws", "true", "try", "Type", "Protocol"}
# names the snippets use themselves (properties, helpers, locals): a parameter never takes them
SNIPPET_NAMES = {"model", "interpreter", "runner", "labels", "context", "feeds", "probs", "best", "p", "path",
                 "text", "feedFloats", "feedLongs", "runModel", "outputValues", "SIGNATURE"}


class BundleError(ValueError):
    """A flatbuffer, a spec or a declared normalization that cannot make a bundle."""


# ------------------------------------------------------------------ naming
def class_name(model_name: str) -> str:
    """The snippets' class: the model name in CamelCase + ``Model`` (``churn`` → ``ChurnModel``)."""
    parts = re.findall(r"[A-Za-z0-9]+", model_name)
    camel = "".join(p[:1].upper() + p[1:] for p in parts)
    if not camel:
        return "Model"
    if camel[0].isdigit():
        return "Model" + camel
    return camel if camel.endswith("Model") else camel + "Model"


def _identifier(name: str) -> str:
    """An input's parameter name in Kotlin and Swift (input names are [A-Za-z][A-Za-z0-9_]*)."""
    if name in KOTLIN_HARD_KEYWORDS or name in SWIFT_KEYWORDS or name in SNIPPET_NAMES:
        return name + "Input"
    return name


def _shape_text(shape) -> str:
    return "scalar" if not len(shape) else "[" + ", ".join(str(d) for d in shape) + "]"


# ------------------------------------------------------------------ the flatbuffer's signature
def _select_tf_ops(content: bytes) -> list[str]:
    """The TensorFlow (Flex) ops the flatbuffer needs beyond LiteRT's builtins."""
    from ai_edge_litert import schema_py_generated as tflite

    root = tflite.Model.GetRootAs(content, 0)
    ops = set()
    for i in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(i).CustomCode()
        if code and code.decode().startswith("Flex"):
            ops.add(code.decode())
    return sorted(ops)


def _normalization(spec: ModelSpec, client_normalization: dict | None) -> dict[str, dict]:
    """The declared app-side preprocessing, checked against the spec: float32 inputs only, std != 0."""
    out = {}
    for name, declared in (client_normalization or {}).items():
        if name not in spec.inputs:
            raise BundleError(f"client normalization for {name!r}, which is not an input of {spec.module!r} "
                              f"(inputs: {sorted(spec.inputs)})")
        if spec.inputs[name][0] != "float32":
            raise BundleError(f"client normalization for {name!r}: only float32 inputs are normalized, it is "
                              f"{spec.inputs[name][0]}")
        if not isinstance(declared, dict):
            raise BundleError(f"client normalization for {name!r} must be a dict with mean, std (and optionally "
                              f"description, range), got {declared!r}")
        mean, std = float(declared.get("mean", 0.0)), float(declared.get("std", 1.0))
        if not (math.isfinite(mean) and math.isfinite(std)) or std == 0.0:
            raise BundleError(f"client normalization for {name!r}: mean and std must be finite and std non-zero, "
                              f"got mean={mean}, std={std}")
        entry = {"mean": mean, "std": std, "description": str(declared.get("description") or "")}
        if declared.get("range") is not None:
            low, high = (float(v) for v in declared["range"])
            entry["range"] = [low, high]
        out[name] = entry
    return out


def tensor_io(content: bytes, spec: ModelSpec, client_normalization: dict | None = None) -> dict:
    """io.json: the flatbuffer's ``serving_default`` signature as LiteRT sees it, each input under its
    spec name (tensor name, index among the interpreter's inputs, shape, dtype, quantization) with
    the app-side normalization, and the one output with what it means for the task."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    signatures = interpreter.get_signature_list()
    if SIGNATURE not in signatures:
        raise BundleError(f"the flatbuffer has no {SIGNATURE!r} signature (signatures: {sorted(signatures)}); "
                          "convert with TFLiteConverter.from_keras_model")
    runner = interpreter.get_signature_runner(SIGNATURE)
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    if set(inputs) != set(spec.inputs):
        raise BundleError(f"the flatbuffer's {SIGNATURE} inputs are {sorted(inputs)}, the spec's inputs "
                          f"{sorted(spec.inputs)}")
    if len(outputs) != 1:
        raise BundleError(f"a bundle needs one output, the flatbuffer's {SIGNATURE} has {sorted(outputs)}")
    order = {d["index"]: i for i, d in enumerate(interpreter.get_input_details())}
    normalization = _normalization(spec, client_normalization)

    def describe(detail: dict) -> dict:
        scale, zero = detail["quantization"]
        dtype = np.dtype(detail["dtype"])
        return {"tensor": detail["name"], "shape": [int(d) for d in detail["shape"]],
                "dtype": "string" if dtype.kind in "SOU" else dtype.name,
                "quantization": {"scale": float(scale), "zero_point": int(zero)} if scale else None}

    described = []
    for name, detail in inputs.items():
        dtype, shape = spec.inputs[name]
        entry = {"name": name, "index": order[detail["index"]], **describe(detail),
                 "spec_dtype": dtype, "spec_shape": list(shape), "normalization": None}
        if name in normalization:
            entry["normalization"] = {k: normalization[name][k] for k in ("mean", "std")}
        if name in normalization and normalization[name]["description"]:
            entry["description"] = normalization[name]["description"]
        described.append(entry)
    order_of = {name: i for i, name in enumerate(spec.inputs)}
    described.sort(key=lambda e: order_of[e["name"]])  # the module's INPUTS order ("index": the tensors')
    (out_name, out_detail), = outputs.items()
    output = {"name": out_name, **describe(out_detail), "meaning": _meaning(spec),
              "labels": LABELS_FILE if spec.task != "regression" else None}
    return {"signature": SIGNATURE, "task": spec.task, "module": spec.module, "inputs": described,
            "output": output, "select_tf_ops": _select_tf_ops(content),
            "formulas": {"normalize": "x = (value - mean) / std (inputs with a normalization; the others as given)",
                         "quantize": "q = clamp(round(x / scale) + zero_point, -128, 127) (int8 inputs)",
                         "dequantize": "y = (q - zero_point) * scale (int8 output)"}}


def _meaning(spec: ModelSpec) -> str:
    if spec.task == "multiclass":
        return f"probabilities of the {spec.num_classes} classes (softmax), in labels.txt order"
    if spec.task == "binary":
        negative, positive = spec.class_names
        return (f"probability of {positive!r} (labels.txt line 2): {positive!r} when >= 0.5, else "
                f"{negative!r} (line 1)")
    return f"the regressed value of {spec.label!r}"


# ------------------------------------------------------------------ metadata
def with_metadata(content: bytes, model_name: str, version: int, variant: str, spec: ModelSpec,
                  io: dict, normalization: dict[str, dict]) -> bytes:
    """``content`` with the TFLite metadata of this model: one TensorInfo per input (in the model's
    input order), normalization only where declared, labels.txt attached for classification."""
    tensors = []
    for entry in sorted(io["inputs"], key=lambda e: e["index"]):  # the metadata follows the input tensors
        name = entry["name"]
        declared = normalization.get(name)
        dtype, shape = spec.inputs[name]
        if declared is None:
            tensors.append(md.TensorInfo(name, f"{name}: {dtype} {list(shape)}"))
            continue
        description = declared["description"] or f"{name}: {dtype} {list(shape)}"
        low = high = None
        if "range" in declared:
            low = [(declared["range"][0] - declared["mean"]) / declared["std"]]
            high = [(declared["range"][1] - declared["mean"]) / declared["std"]]
        tensors.append(md.TensorInfo(name, description.rstrip(".") + "; normalized as (x - mean) / std.",
                                     [declared["mean"]], [declared["std"]], low, high))
    files = {}
    if spec.task == "regression":
        output = md.TensorInfo(spec.output_name, f"The regressed value of {spec.label!r}.")
    else:
        files[LABELS_FILE] = _labels_text(spec)
        output = md.TensorInfo(spec.output_name, _meaning(spec)[:1].upper() + _meaning(spec)[1:] + ".",
                               min=[0.0], max=[1.0], label_file=LABELS_FILE,
                               label_type="DESCRIPTIONS" if spec.task == "binary" else "TENSOR_AXIS_LABELS")
    task = {"multiclass": f"Multiclass classifier ({spec.num_classes} classes)",
            "binary": f"Binary classifier ({' / '.join(spec.class_names)})",
            "regression": f"Regression of {spec.label!r}"}[spec.task]
    info = md.ModelInfo(
        name=f"{model_name} v{version} ({variant})",
        description=f"{task} from {spec.module}, {TARGETS[variant]}.",
        version=str(version), author="tfmlops", license="Apache-2.0",
        # display names (ML binding names its generated accessors after them): the spec's input
        # names; io.json keeps the interpreter's tensor names
        inputs=tensors, outputs=[output], files=files)
    return md.populate(content, info)


def _labels_text(spec: ModelSpec) -> bytes:
    return ("\n".join(spec.class_names) + "\n").encode()


# ------------------------------------------------------------------ Kotlin and Swift
def _header(model_name, version, variant, spec: ModelSpec, io: dict, slashes: str = "//") -> str:
    lines = [f"{model_name} version {version}, {variant}: {TARGETS[variant]}.",
             f"Inputs, fed by name through the model's {SIGNATURE!r} signature (one row; io.json has each):"]
    for entry in io["inputs"]:
        dtype, shape = spec.inputs[entry["name"]]
        text = entry.get("description") or f"{dtype} {_shape_text(shape)}"
        if entry["normalization"]:
            n = entry["normalization"]
            text += f"; normalized as (x - {n['mean']}) / {n['std']}"
        lines.append(f"  {entry['name']}: {text}")
    lines.append(f"Output {io['output']['name']!r}: {io['output']['meaning']}.")
    lines.append("Not compiled here (no Android/iOS toolchain): a starting point.")
    return "\n".join(f"{slashes} {line}" for line in lines) + "\n"


def _kotlin_type(dtype: str, shape) -> str:
    scalar = not len(shape)
    return {"float32": "Float" if scalar else "FloatArray", "int64": "Long" if scalar else "LongArray",
            "string": "String" if scalar else "Array<String>"}[dtype]


def _kotlin_feed(entry: dict, spec: ModelSpec) -> str:
    name = entry["name"]
    dtype, shape = spec.inputs[name]
    arg = _identifier(name)
    if dtype == "float32":
        values = f"floatArrayOf({arg})" if not len(shape) else arg
        n = entry["normalization"]
        if not n:
            return f'"{name}" to feedFloats("{name}", {values}),'
        normalize = f"{{ p -> (p - {n['mean']}f) / {n['std']}f }},  // the metadata's NormalizationOptions"
        return f'"{name}" to feedFloats("{name}", {values}) {normalize}'
    if dtype == "int64":
        values = f"longArrayOf({arg})" if not len(shape) else arg
        return f'"{name}" to feedLongs("{name}", {values}),'
    return f'"{name}" to arrayOf({arg}),  // a string tensor of shape {[1, *shape]}'


def kotlin(model_name: str, version: int, variant: str, spec: ModelSpec, io: dict) -> str:
    cls = class_name(model_name)
    dtypes = {spec.inputs[e["name"]][0] for e in io["inputs"]}
    params = ", ".join(f"{_identifier(e['name'])}: {_kotlin_type(*spec.inputs[e['name']])}" for e in io["inputs"])
    feeds = "\n".join(f"            {_kotlin_feed(e, spec)}" for e in io["inputs"])  # each ends with ","
    out = io["output"]["name"]
    body = [f"        val feeds = mapOf<String, Any>(\n{feeds}\n        )"]
    if spec.task == "multiclass":
        signature = f"fun classify({params}): Pair<String, Float>"
        body += ["        val probs = runModel(feeds)",
                 "        val best = probs.indices.maxBy { probs[it] }",
                 "        return this.labels[best] to probs[best]"]
    elif spec.task == "binary":
        signature = f"fun classify({params}): Pair<String, Float>"
        body += [f"        val p = runModel(feeds)[0]  // probability of {spec.class_names[1]!r}",
                 "        return (if (p >= 0.5f) this.labels[1] else this.labels[0]) to p"]
    else:
        signature = f"fun predict({params}): Float"
        body += [f"        return runModel(feeds)[0]  // {spec.label}"]
    lines = [_header(model_name, version, variant, spec, io).rstrip("\n"),
             "import android.content.Context",
             "import org.tensorflow.lite.DataType",
             "import org.tensorflow.lite.Interpreter",
             "import org.tensorflow.lite.support.common.FileUtil"]
    if spec.task != "regression":
        lines.append("import org.tensorflow.lite.support.metadata.MetadataExtractor")
    lines += ["import java.nio.ByteBuffer", "import java.nio.ByteOrder"]
    if "float32" in dtypes:
        lines.append("import kotlin.math.roundToInt")
    lines += ["", f"class {cls}(context: Context) {{",
              '    private val model = FileUtil.loadMappedFile(context, "model.tflite")',
              "    private val interpreter = Interpreter(model)"]
    if spec.task != "regression":
        lines += ["    // labels.txt travels inside model.tflite (TFLite metadata, associated file)",
                  '    val labels: List<String> = MetadataExtractor(model).getAssociatedFile("labels.txt")',
                  "        .bufferedReader().readLines()"]
    lines += ["", f"    {signature} {{", *body, "    }", "",
              "    // runs the signature with the inputs by name; the output as floats (int8: dequantized)",
              "    private fun runModel(feeds: Map<String, Any>): FloatArray {",
              f'        val output = interpreter.getOutputTensorFromSignature("{out}", SIGNATURE)',
              "        val out = ByteBuffer.allocateDirect(output.numBytes()).order(ByteOrder.nativeOrder())",
              f'        interpreter.runSignature(feeds, mapOf<String, Any>("{out}" to out), SIGNATURE)',
              "        out.rewind()",
              "        val q = output.quantizationParams()",
              "        return FloatArray(output.numElements()) {",
              "            if (output.dataType() == DataType.INT8) (out.get().toInt() - q.zeroPoint) * q.scale",
              "            else out.float",
              "        }",
              "    }"]
    if "float32" in dtypes:
        lines += ["",
                  "    // a float32 input, normalized; quantized with the tensor's scale/zero point when it is int8",
                  "    private fun feedFloats(name: String, values: FloatArray,"
                  " normalize: (Float) -> Float = { it }): ByteBuffer {",
                  "        val input = interpreter.getInputTensorFromSignature(name, SIGNATURE)",
                  "        val buffer = ByteBuffer.allocateDirect(input.numBytes()).order(ByteOrder.nativeOrder())",
                  "        val q = input.quantizationParams()",
                  "        for (p in values) {",
                  "            val x = normalize(p)",
                  "            if (input.dataType() == DataType.INT8) {",
                  "                buffer.put((x / q.scale + q.zeroPoint).roundToInt().coerceIn(-128, 127).toByte())",
                  "            } else {",
                  "                buffer.putFloat(x)",
                  "            }",
                  "        }",
                  "        buffer.rewind()",
                  "        return buffer",
                  "    }"]
    if "int64" in dtypes:
        lines += ["",
                  "    private fun feedLongs(name: String, values: LongArray): ByteBuffer {",
                  "        val input = interpreter.getInputTensorFromSignature(name, SIGNATURE)",
                  "        val buffer = ByteBuffer.allocateDirect(input.numBytes()).order(ByteOrder.nativeOrder())",
                  "        for (v in values) buffer.putLong(v)",
                  "        buffer.rewind()",
                  "        return buffer",
                  "    }"]
    lines += ["", f'    companion object {{ const val SIGNATURE = "{SIGNATURE}" }}', "}", ""]
    return "\n".join(lines)


def _swift_type(dtype: str, shape) -> str:
    base = {"float32": "Float", "int64": "Int64", "string": "String"}[dtype]
    return base if not len(shape) else f"[{base}]"


def _swift_feed(entry: dict, spec: ModelSpec) -> str:
    name = entry["name"]
    dtype, shape = spec.inputs[name]
    arg = _identifier(name)
    values = f"[{arg}]" if not len(shape) else arg
    if dtype == "float32":
        n = entry["normalization"]
        if not n:
            return f'"{name}": feedFloats("{name}", {values}),'
        normalize = f"{{ ($0 - {n['mean']}) / {n['std']} }},  // the metadata's NormalizationOptions"
        return f'"{name}": feedFloats("{name}", {values}) {normalize}'
    return f'"{name}": feedLongs({values}),'


def swift(model_name: str, version: int, variant: str, spec: ModelSpec, io: dict) -> str:
    cls = class_name(model_name)
    dtypes = {spec.inputs[e["name"]][0] for e in io["inputs"]}
    params = ", ".join(f"{_identifier(e['name'])}: {_swift_type(*spec.inputs[e['name']])}" for e in io["inputs"])
    out = io["output"]["name"]
    strings = [e["name"] for e in io["inputs"] if spec.inputs[e["name"]][0] == "string"]
    if spec.task == "regression":
        signature = f"func predict({params}) throws -> Float"
    else:
        signature = f"func classify({params}) throws -> (label: String, probability: Float)"
    if strings:
        # TensorFlowLiteSwift's Tensor.DataType has no string type and copy(_:toInputNamed:) checks the
        # byte size of a fixed-size tensor: a string tensor cannot be filled from this API
        body = [f"        // {', '.join(strings)}: string inputs; TensorFlowLiteSwift cannot fill string tensors",
                "        // (see README.md). Encode them in the app into the model's numeric inputs, or use the",
                "        // TensorFlowLiteC API directly.",
                f'        throw {cls}Error.stringInputs({strings!r})'.replace("'", '"')]
    else:
        feeds = "\n".join(f"            {_swift_feed(e, spec)}" for e in io["inputs"])  # each ends with ","
        body = [f"        try runner.invoke(with: [\n{feeds}\n        ])",
                f'        let values = try outputValues(runner.output(named: "{out}"))']
        if spec.task == "multiclass":
            body += ["        let best = values.indices.max { values[$0] < values[$1] }!",
                     "        return (self.labels[best], values[best])"]
        elif spec.task == "binary":
            body += [f"        let p = values[0]  // probability of {spec.class_names[1]!r}".replace("'", '"'),
                     "        return (p >= 0.5 ? self.labels[1] : self.labels[0], p)"]
        else:
            body += [f"        return values[0]  // {spec.label}"]
    resource = [] if spec.task == "regression" else [
        '        let text = try String(contentsOfFile: Bundle.main.path(forResource: "labels", ofType: "txt")!)',
        '        labels = text.split(separator: "\\n").map(String.init)']
    lines = [_header(model_name, version, variant, spec, io).rstrip("\n"),
             "import Foundation", "import TensorFlowLite", ""]
    if strings:
        lines += [f"enum {cls}Error: Error {{ case stringInputs([String]) }}", ""]
    lines += [f"final class {cls} {{",
              "    private let interpreter: Interpreter",
              "    private let runner: SignatureRunner"]
    if spec.task != "regression":
        lines.append("    let labels: [String]")
    lines += ["", "    init() throws {",
              '        let path = Bundle.main.path(forResource: "model", ofType: "tflite")!',
              "        interpreter = try Interpreter(modelPath: path)",
              f'        runner = try interpreter.signatureRunner(with: "{SIGNATURE}")',
              *resource, "    }", "",
              f"    {signature} {{", *body, "    }", "",
              "    // the output as floats (int8: dequantized with the tensor's scale/zero point)",
              "    private func outputValues(_ tensor: Tensor) -> [Float] {",
              "        if let q = tensor.quantizationParameters {",
              "            return tensor.data.map { Float(Int(Int8(bitPattern: $0)) - q.zeroPoint) * q.scale }",
              "        }",
              "        return tensor.data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }",
              "    }"]
    if "float32" in dtypes:
        lines += ["",
                  "    // a float32 input, normalized; quantized (int8) when the tensor has quantization parameters",
                  "    private func feedFloats(_ name: String, _ values: [Float],"
                  " _ normalize: (Float) -> Float = { $0 }) throws -> Data {",
                  "        let x = values.map(normalize)",
                  "        if let q = try runner.input(named: name).quantizationParameters {",
                  "            let bytes = x.map { Int8(clamping: Int(($0 / q.scale).rounded()) + q.zeroPoint) }",
                  "            return bytes.withUnsafeBufferPointer { Data(buffer: $0) }",
                  "        }",
                  "        return x.withUnsafeBufferPointer { Data(buffer: $0) }",
                  "    }"]
    if "int64" in dtypes:
        lines += ["",
                  "    private func feedLongs(_ values: [Int64]) -> Data {",
                  "        return values.withUnsafeBufferPointer { Data(buffer: $0) }",
                  "    }"]
    lines += ["}", ""]
    return "\n".join(lines)


def readme(model_name: str, version: int, variant: str, spec: ModelSpec, io: dict, check: str) -> str:
    cls = class_name(model_name)
    rows = []
    for entry in io["inputs"]:
        dtype, shape = spec.inputs[entry["name"]]
        tensor = entry["dtype"]
        if entry["quantization"]:
            q = entry["quantization"]
            tensor += f" (scale {q['scale']:.8g}, zero point {q['zero_point']})"
        n = entry["normalization"]
        prep = f"(x - {n['mean']}) / {n['std']}" if n else "none: as the model takes it"
        what = entry.get("description", "")
        rows.append(f"| `{entry['name']}` | {dtype} | {_shape_text(shape)} | `{entry['tensor']}` "
                    f"(input {entry['index']}), {tensor} | {prep} | {what} |")
    output = io["output"]
    out_dtype = output["dtype"]
    if output["quantization"]:
        q = output["quantization"]
        out_dtype += f" (scale {q['scale']:.8g}, zero point {q['zero_point']}: y = (q - zero point) * scale)"
    labels = (" and `labels.txt` (the class names, one per line) as an associated file"
              if spec.task != "regression" else "; no labels (a regression model)")
    notes = []
    if any(e["quantization"] for e in io["inputs"]):
        notes.append("int8 inputs: after normalization, q = clamp(round(x / scale) + zero point, -128, 127), with "
                     "each input's scale and zero point (the table, io.json).")
    strings = [e["name"] for e in io["inputs"] if spec.inputs[e["name"]][0] == "string"]
    if strings:
        notes.append(f"String inputs ({', '.join(strings)}): the Kotlin file passes them as `String` arrays (LiteRT's "
                     "Java API fills string tensors); the Swift file cannot — TensorFlowLiteSwift has no string "
                     "tensor type — and throws: encode those values in the app or use the TensorFlowLiteC API.")
    if io["select_tf_ops"]:
        notes.append(f"The model uses TensorFlow ops outside LiteRT's builtins ({', '.join(io['select_tf_ops'])}): "
                     "the app needs the Select TF ops (Flex) runtime — on Android the interpreter's own error names "
                     "`org.tensorflow:tensorflow-lite-select-tf-ops` — which build.gradle.kts and the Podfile do not "
                     "include (not resolved here), and the bundle's smoke run cannot run it.")
    return "\n".join([
        f"# {model_name} version {version} — mobile bundle ({variant})", "",
        f"{TARGETS[variant][:1].upper() + TARGETS[variant][1:]}. Model module `{spec.module}` ({spec.task}). "
        "`model.tflite` carries TFLite metadata "
        "(Android Studio's ML model binding and the LiteRT support library read it): one entry per input "
        f"(description, normalization where the module declares one){labels}. `io.json` describes the "
        f"`{SIGNATURE}` signature: each input by name with its tensor, shape, dtype and quantization, and the output.",
        "",
        f"- Android: `android/build.gradle.kts` (LiteRT dependencies), `android/{cls}.kt`;",
        "  or import `model.tflite` with Android Studio's *File ▸ New ▸ Other ▸ TensorFlow Lite Model*.",
        f"- iOS: `ios/Podfile` (TensorFlowLiteSwift), `ios/{cls}.swift`.",
        "- Both feed the inputs by name through the signature runner (`Interpreter.runSignature` in Kotlin, "
        "`Interpreter.signatureRunner(with:)` in Swift). They are minimal examples, not compiled here (no "
        "Android/iOS toolchain); the Gradle and CocoaPods coordinates were not resolved here.",
        "",
        "## Inputs (one row; the tensors carry a batch dimension of 1)", "",
        "| input | dtype | shape | tensor | app-side preprocessing | description |",
        "|---|---|---|---|---|---|", *rows, "",
        f"## Output `{output['name']}`", "",
        f"{output['meaning'][:1].upper() + output['meaning'][1:]}. Tensor `{output['tensor']}`, shape "
        f"{output['shape']}, {out_dtype}.", "",
        *([f"- {note}" for note in notes] + [""] if notes else []),
        f"Checked: {check}", ""])


# ------------------------------------------------------------------ build and smoke
def build(content: bytes, out: Path, model_name: str, version: int, variant: str, spec: ModelSpec,
          check: str = "", client_normalization: dict | None = None) -> Path:
    """Write the bundle of one variant's flatbuffer (converted from the Keras model: its
    ``serving_default`` inputs are the spec's) as a zip under ``out``; returns its path.
    ``client_normalization``: {input: {"mean", "std", "description"[, "range"]}} — the app-side
    preprocessing of float32 inputs (a module's ``MOBILE_INPUTS``); the others are fed as given."""
    if variant not in TARGETS:
        raise ValueError(f"unknown mobile target {variant!r}; choose from {list(TARGETS)}")
    spec = ModelSpec.from_dict(spec)
    io = tensor_io(content, spec, client_normalization)
    normalization = _normalization(spec, client_normalization)
    cls = class_name(model_name)
    files = {"model.tflite": with_metadata(content, model_name, version, variant, spec, io, normalization)}
    if spec.task != "regression":
        files[LABELS_FILE] = _labels_text(spec)
    resources = "model.tflite" if spec.task == "regression" else "model.tflite and labels.txt"
    files.update({
        "io.json": json.dumps(io, indent=2).encode(),
        "android/build.gradle.kts": GRADLE.format(cls=cls).encode(),
        f"android/{cls}.kt": kotlin(model_name, version, variant, spec, io).encode(),
        "ios/Podfile": PODFILE.format(cls=cls, resources=resources).encode(),
        f"ios/{cls}.swift": swift(model_name, version, variant, spec, io).encode(),
        "README.md": readme(model_name, version, variant, spec, io,
                            check or "see smoke.json in the MLflow run").encode(),
    })
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{model_name}-v{version}-{variant}-mobile.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=ZIP_DATE), data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _feed(values, entry: dict, tensor: md.TensorInfo | None) -> tuple[np.ndarray, dict | None]:
    """One input as the app would feed it: the metadata's normalization, then io.json's dtype and
    quantization."""
    x = np.asarray(values)
    normalization = None
    if tensor is not None and tensor.mean is not None:
        normalization = {"mean": tensor.mean, "std": tensor.std}
        x = (x.astype(np.float32) - np.float32(tensor.mean[0])) / np.float32(tensor.std[0])
    dtype, q = entry["dtype"], entry["quantization"]
    if dtype == "int8" and q:
        info8 = np.iinfo(np.int8)
        x = np.clip(np.round(x.astype(np.float32) / q["scale"]) + q["zero_point"], info8.min, info8.max)
        return np.ascontiguousarray(x.astype(np.int8)), normalization
    if dtype == "string":
        flat = [v.encode() if isinstance(v, str) else bytes(v) for v in x.ravel()]
        return np.array(flat, dtype=object).reshape(x.shape), normalization
    return np.ascontiguousarray(x.astype(dtype)), normalization


def smoke(bundle: Path, features: dict[str, np.ndarray], expected: np.ndarray, spec: ModelSpec,
          min_agreement: float = 0.99, max_value_diff: float | None = None, quantile: float | None = None) -> dict:
    """Run the bundle from its own files: the metadata → each input's normalization (and the labels),
    io.json → input names, dtypes and quantization, LiteRT's signature runner → the output
    (dequantized); compare with ``expected`` (the source model's raw outputs on ``features`` after the
    declared normalization). Classification: agreement of the predicted class (binary: p >= 0.5) >=
    ``min_agreement`` and the labels as the spec's; regression: max |diff| (or its ``quantile``, the
    format check's rule for lossy regressors) <= ``max_value_diff`` (required). Returns the numbers,
    with ``passed``."""
    from ai_edge_litert.interpreter import Interpreter

    spec = ModelSpec.from_dict(spec)
    if spec.task == "regression" and max_value_diff is None:
        raise ValueError("a regression bundle's smoke run needs max_value_diff (the largest |difference| "
                         "from the source model's values, in the label's unit)")
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        model, io = archive.read("model.tflite"), json.loads(archive.read("io.json"))
        labels = archive.read(LABELS_FILE).decode().splitlines() if LABELS_FILE in names else None
    if io.get("select_tf_ops"):
        raise BundleError(f"{Path(bundle).name} needs TensorFlow Select ops ({', '.join(io['select_tf_ops'])}), "
                          "which LiteRT's Python interpreter does not run: no smoke run here")
    info = md.read(model)
    by_name = {t.name: t for t in info.inputs}
    (output,) = info.outputs
    missing = [e["name"] for e in io["inputs"] if e["name"] not in features]
    if missing:
        raise ValueError(f"smoke features lack the bundle's inputs {missing}")
    feeds, normalization = {}, {}
    for entry in io["inputs"]:
        feeds[entry["name"]], used = _feed(features[entry["name"]], entry, by_name.get(entry["name"]))
        if used:
            normalization[entry["name"]] = used
    rows = len(next(iter(feeds.values())))
    runner = Interpreter(model_content=model).get_signature_runner(io["signature"])
    got = runner(**feeds)[io["output"]["name"]]
    qo = io["output"]["quantization"]
    got = (got.astype(np.float32) - qo["zero_point"]) * qo["scale"] if qo else got.astype(np.float32)
    got = got.reshape(rows, -1)
    expected = np.asarray(expected, np.float32).reshape(rows, -1)
    max_abs_diff = float(np.max(np.abs(got - expected)))
    measured = float(np.quantile(np.abs(got - expected), quantile)) if quantile is not None else max_abs_diff

    if spec.task == "regression":
        agreement = None
        labels_match = None  # no labels: passes when there are none anywhere
        labels_ok = labels is None and output.label_file is None
    else:
        embedded = info.files.get(output.label_file or "", b"").decode().splitlines()
        labels_match = labels is not None and embedded == labels == list(spec.class_names)
        labels_ok = labels_match
        if spec.task == "binary":
            agreement = float(np.mean((got[:, 0] >= 0.5) == (expected[:, 0] >= 0.5)))
        else:
            agreement = float(np.mean(np.argmax(got, axis=1) == np.argmax(expected, axis=1)))
    passed = labels_ok and (agreement is None or agreement >= min_agreement) and \
        (max_value_diff is None or measured <= max_value_diff)
    dtypes = {e["name"]: e["dtype"] for e in io["inputs"]}
    return {"bundle": Path(bundle).name, "task": spec.task, "rows": int(rows),
            "argmax_agreement": agreement, "min_agreement": min_agreement if agreement is not None else None,
            "max_abs_diff": max_abs_diff, "max_value_diff": max_value_diff, "quantile": quantile,
            "quantile_abs_diff": measured if quantile is not None else None, "labels_match": labels_match,
            "labels": (labels[:3] + ["…"] if len(labels) > 3 else labels) if labels is not None else None,
            "input_dtype": "/".join(sorted(set(dtypes.values()))), "input_dtypes": dtypes,
            "normalization": normalization, "min_parser_version": info.min_parser_version,
            "bytes": Path(bundle).stat().st_size, "passed": bool(passed)}
