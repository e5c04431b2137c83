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
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import tfmlops  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from tfmlops.export import INPUT_NAME, OUTPUT_NAME, SIGNATURE
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


def predict_keras(artifact: Path, x: np.ndarray) -> Prediction:
    """``model.keras`` or ``model.h5`` through :func:`tfmlops.model_files.load_keras_file`: the
    architecture is checked first (Keras objects only, no Lambda layer) for both formats, because
    tf_keras' ``safe_mode`` protects ``.keras`` files only; then tf_keras loads it in safe mode."""
    path = next(p for p in (Path(artifact) / "model.keras", Path(artifact) / "model.h5") if p.exists())
    model = load_keras_file(path, compile=False)
    probs = model.predict(x, batch_size=1024, verbose=0)
    one = x[:1]
    return Prediction("tf_keras", probs, _median_latency_ms(lambda: model(one, training=False)),
                      {"file": path.name})


def predict_saved_model(artifact: Path, x: np.ndarray) -> Prediction:
    import tensorflow as tf

    signature = tf.saved_model.load(str(Path(artifact) / "saved_model")).signatures[SIGNATURE]
    probs = signature(**{INPUT_NAME: tf.constant(x)})[OUTPUT_NAME].numpy()
    one = tf.constant(x[:1])
    return Prediction("tensorflow", probs, _median_latency_ms(lambda: signature(**{INPUT_NAME: one})),
                      {"signature": SIGNATURE})


class LiteRTModel:
    """A TFLite flatbuffer in ``ai_edge_litert``'s interpreter; quantizes int8 inputs and
    dequantizes int8 outputs with the tensors' own scale and zero point."""

    def __init__(self, content: bytes):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=content)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.rows = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        it = self.interpreter
        if self.rows != len(x):
            it.resize_tensor_input(self.input["index"], [len(x), x.shape[1]])
            it.allocate_tensors()
            self.input, self.output = it.get_input_details()[0], it.get_output_details()[0]
            self.rows = len(x)
        if np.issubdtype(self.input["dtype"], np.integer):
            scale, zero = self.input["quantization"]
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(self.input["dtype"])
        it.set_tensor(self.input["index"], x)
        it.invoke()
        y = it.get_tensor(self.output["index"])
        if np.issubdtype(self.output["dtype"], np.integer):
            scale, zero = self.output["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)

    def tensor_dtypes(self) -> dict:
        """Input/output dtypes and the dtypes of the weight tensors (constant tensors)."""
        details = self.interpreter.get_tensor_details()
        return {"input": np.dtype(self.input["dtype"]).name, "output": np.dtype(self.output["dtype"]).name,
                "tensors": sorted({np.dtype(d["dtype"]).name for d in details})}


def predict_litert(artifact: Path, x: np.ndarray) -> Prediction:
    content = (Path(artifact) / "model.tflite").read_bytes()
    batch, single = LiteRTModel(content), LiteRTModel(content)
    probs = batch(x)
    one = x[:1]
    return Prediction("litert", probs, _median_latency_ms(lambda: single(one)), batch.tensor_dtypes())


def predict_onnx(artifact: Path, x: np.ndarray) -> Prediction:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(Path(artifact) / "model.onnx"), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    probs = session.run(None, {name: x})[0]
    one = x[:1]
    return Prediction("onnxruntime", probs, _median_latency_ms(lambda: session.run(None, {name: one})),
                      {"input": name})


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


def predict_tfjs_node(artifact: Path, x: np.ndarray) -> Prediction:
    node = node_binary()
    kind = _tfjs_kind(artifact)
    with tempfile.TemporaryDirectory(prefix="tfmlops-tfjs-") as tmp:
        tmp = Path(tmp)
        np.ascontiguousarray(x, dtype="<f4").tofile(tmp / "x.f32")
        with serve({"/model/": artifact}) as url:
            _run_node([node, str(WEB_DIR / "scripts" / "predict.mjs"), "--model", f"{url}/model/model.json",
                       "--kind", kind, "--input", str(tmp / "x.f32"), "--rows", str(len(x)),
                       "--features", str(x.shape[1]), "--output", str(tmp / "y.f32"),
                       "--result", str(tmp / "result.json"), "--latency-runs", str(LATENCY_RUNS)],
                      f"TF.js in Node on {artifact}")
        result = json.loads((tmp / "result.json").read_text())
        probs = np.fromfile(tmp / "y.f32", dtype="<f4").reshape(result["shape"])
    return Prediction("tfjs-node", probs, float(result["latency_ms"]),
                      {"kind": kind, "backend": result["backend"], "tfjs_version": result["tfjs_version"]})


def predict_tfjs_browser(artifact: Path, x: np.ndarray, screenshot: Path | None = None) -> Prediction:
    """The static page in headless Chromium: batch predictions + a digit drawn with the mouse
    on the canvas (``info["drawn"]``: the pixels the page fed the model, its probabilities and
    the digit it displayed)."""
    node, chromium = node_binary(), chromium_binary()
    kind = _tfjs_kind(artifact)
    with tempfile.TemporaryDirectory(prefix="tfmlops-chromium-") as tmp:
        tmp = Path(tmp)
        np.ascontiguousarray(x, dtype="<f4").tofile(tmp / "x.f32")
        routes = {"/model/": artifact, "/data/": tmp,
                  "/vendor/tf.min.js": WEB_DIR / "node_modules" / "@tensorflow" / "tfjs" / "dist" / "tf.min.js",
                  "/": WEB_DIR / "static"}
        with serve(routes) as url:
            argv = [node, str(WEB_DIR / "scripts" / "browser_check.mjs"),
                    "--page", f"{url}/index.html?model=/model/model.json&kind={kind}",
                    "--input", f"{url}/data/x.f32", "--rows", str(len(x)), "--features", str(x.shape[1]),
                    "--output", str(tmp / "y.f32"), "--result", str(tmp / "result.json"),
                    "--latency-runs", str(LATENCY_RUNS), "--chromium", chromium]
            if screenshot is not None:
                argv += ["--screenshot", str(screenshot)]
            _run_node(argv, f"TF.js in Chromium on {artifact}")
        result = json.loads((tmp / "result.json").read_text())
        probs = np.fromfile(tmp / "y.f32", dtype="<f4").reshape(result["shape"])
    info = {"kind": kind, "backend": result["backend"], "tfjs_version": result["tfjs_version"],
            "browser": result.get("browser"), "drawn": result["drawn"]}
    return Prediction("chromium", probs, float(result["latency_ms"]), info)


PREDICTORS = {"tensorflow": predict_saved_model, "tf_keras": predict_keras, "litert": predict_litert,
              "onnxruntime": predict_onnx, "tfjs-node": predict_tfjs_node, "chromium": predict_tfjs_browser}


def predict(runtime: str, artifact: Path, x: np.ndarray, **kwargs) -> Prediction:
    return PREDICTORS[runtime](Path(artifact), np.ascontiguousarray(x, dtype=np.float32), **kwargs)

