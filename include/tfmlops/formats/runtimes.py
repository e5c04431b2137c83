"""Load an exported artifact in the runtime that will use it and predict.

Each ``predict_*`` takes the artifact folder and float32 rows and returns a :class:`Prediction`:
the class probabilities for every row and the median latency of a one-row prediction in that
runtime. TF.js runs in Node (``web/scripts/predict.mjs``) and in headless Chromium
(``web/scripts/browser_check.mjs`` driving ``web/index.html``), the model and data served by a
local HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import tfmlops  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from tfmlops.export import SIGNATURE
from tfmlops.formats import RuntimeUnavailable
from tfmlops.model_files import load_keras_file

WEB_DIR = Path(os.environ.get("TFMLOPS_WEB_DIR", Path(__file__).resolve().parents[3] / "web"))
LATENCY_RUNS = 50
NODE_TIMEOUT_S = 300


@dataclass
class Prediction:
    runtime: str
    probabilities: np.ndarray
    latency_ms: float
    info: dict = field(default_factory=dict)


def _median_latency_ms(fn, runs: int = LATENCY_RUNS, warmup: int = 3) -> float:
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        fn()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return float(statistics.median(times))


def features_for(spec, features) -> dict[str, np.ndarray]:
    """``features`` (a dict by input name, or the one input's rows) as the spec's dtypes: float32,
    int64, and object arrays of ``bytes`` for strings."""
    from tfmlops.export import as_features

    out = {}
    for name, value in as_features(spec, features).items():
        dtype = spec.inputs[name][0]
        if dtype == "string":
            out[name] = np.array([v if isinstance(v, bytes) else str(v).encode("utf-8") for v in value.reshape(-1)],
                                 dtype=object).reshape(value.shape)
        else:
            out[name] = np.ascontiguousarray(value, dtype=dtype)
    return out


def _one(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v[:1] for k, v in features.items()}


def predict_keras(artifact: Path, features: dict, spec) -> Prediction:
    """``model.keras`` or ``model.h5`` through :func:`tfmlops.model_files.load_keras_file`: the
    architecture is checked first (Keras objects only, no Lambda layer) for both formats, because
    tf_keras' ``safe_mode`` protects ``.keras`` files only; then tf_keras loads it in safe mode."""
    from tfmlops.trainer import inputs_for

    path = next(p for p in (Path(artifact) / "model.keras", Path(artifact) / "model.h5") if p.exists())
    model = load_keras_file(path, compile=False)
    outputs = model.predict(inputs_for(model, features), batch_size=1024, verbose=0)
    one = inputs_for(model, _one(features))
    return Prediction("tf_keras", outputs, _median_latency_ms(lambda: model(one, training=False)),
                      {"file": path.name})


def predict_saved_model(artifact: Path, features: dict, spec) -> Prediction:
    """The ``serving_default`` signature (named raw inputs) of the SavedModel."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(Path(artifact) / "saved_model")).signatures[SIGNATURE]
    tensors = {k: tf.constant(v) for k, v in features.items()}
    outputs = signature(**tensors)[spec.output_name].numpy()
    one = {k: v[:1] for k, v in tensors.items()}
    return Prediction("tensorflow", outputs, _median_latency_ms(lambda: signature(**one)), {"signature": SIGNATURE})


class LiteRTModel:
    """A TFLite flatbuffer in ``ai_edge_litert``'s interpreter, called through its signature
    (``serving_default``: inputs by name); quantizes int8 inputs and dequantizes an int8 output with
    the tensors' own scale and zero point. Called with a dict of features, or the one input's rows."""

    def __init__(self, content: bytes):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=content)
        signatures = self.interpreter.get_signature_list()
        self.signature = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
        self.runner = self.interpreter.get_signature_runner(self.signature)
        self.inputs = self.runner.get_input_details()
        (self.output_name, self.output), = self.runner.get_output_details().items()

    def __call__(self, x) -> np.ndarray:
        if not isinstance(x, dict):
            if len(self.inputs) != 1:
                raise ValueError(f"the model has inputs {sorted(self.inputs)}: pass a dict of arrays")
            x = {next(iter(self.inputs)): x}
        missing = set(self.inputs) - set(x)
        if missing:
            raise ValueError(f"missing inputs {sorted(missing)} (the model's: {sorted(self.inputs)})")
        feed = {}
        for name, detail in self.inputs.items():
            value = np.asarray(x[name])
            dtype = np.dtype(detail["dtype"])
            if dtype.kind in "SO" or value.dtype == object:
                value = np.array([v if isinstance(v, bytes) else str(v).encode("utf-8") for v in value.reshape(-1)],
                                 dtype=object).reshape(value.shape)
            elif dtype == np.int8 and value.dtype.kind == "f":
                scale, zero = detail["quantization"]
                info = np.iinfo(np.int8)
                value = np.clip(np.round(value / scale + zero), info.min, info.max).astype(np.int8)
            else:
                value = np.ascontiguousarray(value, dtype=dtype)
            feed[name] = value
        y = self.runner(**feed)[self.output_name]
        if np.issubdtype(self.output["dtype"], np.integer):
            scale, zero = self.output["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)

    def tensor_dtypes(self) -> dict:
        """Input/output dtypes and the dtypes of the weight tensors (constant tensors)."""
        details = self.interpreter.get_tensor_details()
        dtypes = {name: np.dtype(d["dtype"]).name for name, d in self.inputs.items()}
        return {"input": dtypes[next(iter(dtypes))] if len(dtypes) == 1 else dtypes,
                "output": np.dtype(self.output["dtype"]).name,
                "tensors": sorted({np.dtype(d["dtype"]).name for d in details})}


def predict_litert(artifact: Path, features: dict, spec) -> Prediction:
    content = (Path(artifact) / "model.tflite").read_bytes()
    batch, single = LiteRTModel(content), LiteRTModel(content)
    outputs = batch(features)
    one = _one(features)
    return Prediction("litert", outputs, _median_latency_ms(lambda: single(one)), batch.tensor_dtypes())


def predict_onnx(artifact: Path, features: dict, spec) -> Prediction:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(Path(artifact) / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def feed(rows: dict) -> dict:
        out = {}
        for name, value in rows.items():
            if value.dtype == object:  # onnxruntime takes strings as str objects
                value = np.array([v.decode("utf-8") for v in value.reshape(-1)], dtype=object).reshape(value.shape)
            out[name] = value
        return out

    names = {i.name for i in session.get_inputs()}
    if names != set(features):
        raise ValueError(f"the ONNX model's inputs {sorted(names)} are not the model's {sorted(features)}")
    outputs = session.run(None, feed(features))[0]
    one = feed(_one(features))
    return Prediction("onnxruntime", outputs, _median_latency_ms(lambda: session.run(None, one)),
                      {"inputs": sorted(names)})


# --- TF.js: Node and Chromium ---------------------------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves URL prefixes from folders: ``routes = {"/model/": Path, "/": Path}``."""

    routes: dict[str, Path] = {}

    def translate_path(self, path):
        path = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, folder in sorted(self.routes.items(), key=lambda kv: -len(kv[0])):
            if path.startswith(prefix):
                relative = Path(path[len(prefix):].lstrip("/"))
                if ".." in relative.parts:
                    return str(folder / "__forbidden__")
                return str(Path(folder) / relative)
        return str(Path("/nonexistent"))

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def serve(routes: dict[str, Path]):
    """A static HTTP server on 127.0.0.1 (free port) for the duration of the block; yields its URL."""
    handler = type("Handler", (_Handler,), {"routes": {k: Path(v) for k, v in routes.items()}})
    handler.extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                              ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
                              ".bin": "application/octet-stream"}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise RuntimeUnavailable("node is not installed (Debian: apt-get install -y nodejs npm)")
    if not (WEB_DIR / "node_modules" / "@tensorflow" / "tfjs").is_dir():
        raise RuntimeUnavailable(f"{WEB_DIR}/node_modules is missing: run `npm ci --prefix {WEB_DIR}`")
    return node


def chromium_binary() -> str:
    for candidate in (os.environ.get("CHROMIUM_PATH"), "chromium", "chromium-browser"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    raise RuntimeUnavailable("chromium is not installed (Debian: apt-get install -y chromium)")


def _run_node(argv: list[str], what: str) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=NODE_TIMEOUT_S, cwd=WEB_DIR)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {out.returncode}): {(out.stderr or out.stdout)[-2000:]}")


def _tfjs_kind(artifact: Path) -> str:
    topology = json.loads((Path(artifact) / "model.json").read_text())
    return "graph" if topology.get("format") == "graph-model" else "layers"


def predict_tfjs_node(artifact: Path, features: dict, spec) -> Prediction:
    from tfmlops.formats.tfjs_runtime import predict_tfjs_node as run

    return run(artifact, features, spec.inputs)


def predict_tfjs_browser(artifact: Path, features: dict, spec, screenshot: Path | None = None) -> Prediction:
    from tfmlops.formats.tfjs_runtime import predict_tfjs_browser as run

    return run(artifact, features, spec.inputs, screenshot=screenshot, canvas=is_digit_demo(spec))


def is_digit_demo(spec) -> bool:
    """The draw-a-digit page applies to models of its input: one float32 input of the canvas's
    28x28 pixels, and ten classes (the digits it displays)."""
    from tfmlops.formats.tfjs_runtime import CANVAS_INPUT

    return (spec.task == "multiclass" and spec.num_classes == 10 and len(spec.inputs) == 1
            and next(iter(spec.inputs.values())) == CANVAS_INPUT)


PREDICTORS = {"tensorflow": predict_saved_model, "tf_keras": predict_keras, "litert": predict_litert,
              "onnxruntime": predict_onnx, "tfjs-node": predict_tfjs_node, "chromium": predict_tfjs_browser}


def predict(runtime: str, artifact: Path, features, spec, **kwargs) -> Prediction:
    """Run ``runtime`` on the artifact with ``features`` (a dict by input name, or the one input's
    rows); ``Prediction.probabilities`` is the model's raw output."""
    return PREDICTORS[runtime](Path(artifact), features_for(spec, features), spec, **kwargs)
