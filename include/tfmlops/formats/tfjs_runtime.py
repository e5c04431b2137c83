"""TF.js runtimes for any model a spec describes: Node (``web/scripts/predict.mjs``) and headless
Chromium (``web/scripts/browser_check.mjs`` driving ``web/static/index.html``), the model and the
data served by a local HTTP server on 127.0.0.1.

The rows travel as an inputs manifest, ``inputs.json``::

    {"rows": B,
     "inputs": [{"name": "image", "dtype": "float32", "tfjs_dtype": "float32", "shape": [8, 8, 1],
                 "file": "input-0.f32"}, ...]}

one entry per spec input, in the spec's order: ``dtype`` is the spec's (float32 / int64 / string),
``tfjs_dtype`` what TF.js gets (float32 / int32 / string: TF.js has no int64), ``shape`` the shape
of one row (no batch dimension). Numeric inputs are raw little-endian files of B*prod(shape)
values (``.f32`` float32, ``.i32`` int32), string inputs a JSON list of B*prod(shape) UTF-8
strings (``.json``), row-major. Layers models get the tensors in the order of
``model.inputNames``, graph models a map keyed by their input names (``name`` or ``name:0``).

The scripts write the model's raw (first/single) output as little-endian float32 and a
``result.json`` with its shape, the backend, the TF.js version and the median one-row latency. A
model that does not load or predict makes them exit 1 with the JS error message on stderr (e.g.
``Unknown layer: StringLookup``), raised here as ``RuntimeError``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from tfmlops.formats.runtimes import (LATENCY_RUNS, WEB_DIR, Prediction, _run_node, _tfjs_kind, chromium_binary,
                                      node_binary, serve)

MANIFEST = "inputs.json"
CANVAS_INPUT = ("float32", (28 * 28,))  # the drawing pad's MNIST input: 28x28 grey levels in [0, 1]
_INT32 = np.iinfo(np.int32)


def _strings(name: str, values: np.ndarray) -> list[str]:
    out = []
    for v in values.reshape(-1).tolist():
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"input {name}: string value is not UTF-8 ({err})") from None
        elif not isinstance(v, str):
            raise ValueError(f"input {name}: expected str or bytes values, got {type(v).__name__}")
        out.append(v)
    return out


def _int32(name: str, values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise ValueError(f"input {name}: int64 input has non-integer values")
    elif values.dtype.kind not in "iub":
        raise ValueError(f"input {name}: int64 input has {values.dtype} values")
    if values.size and (values.min() < _INT32.min or values.max() > _INT32.max):
        raise ValueError(f"input {name}: int64 values outside the int32 range TF.js supports "
                         f"(min {values.min()}, max {values.max()})")
    return values.astype("<i4")


def write_inputs(folder: Path, features: dict[str, np.ndarray],
                 inputs: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    """Write the inputs manifest ``folder/inputs.json`` and its data files for ``features`` (the
    spec ``inputs``' rows, ``features[name]`` of shape [B, *shape]); returns B. Raises
    ``ValueError`` for a missing input, a shape or row count that does not match, an unknown
    dtype, int64 values outside int32 or strings that are not UTF-8."""
    folder = Path(folder)
    if not inputs:
        raise ValueError("the spec has no inputs")
    entries, rows = [], None
    for i, (name, (dtype, shape)) in enumerate(inputs.items()):
        shape = tuple(int(d) for d in shape)
        if name not in features:
            raise ValueError(f"input {name} is missing from the features (given: {', '.join(sorted(features))})")
        values = np.asarray(features[name])
        if dtype == "string" and values.dtype.kind not in "OUS":
            raise ValueError(f"input {name}: string input has {values.dtype} values")
        if tuple(values.shape[1:]) != shape or values.ndim != len(shape) + 1:
            raise ValueError(f"input {name}: rows of shape {tuple(values.shape)}, expected {('B', *shape)}")
        if rows is None:
            rows = len(values)
        elif len(values) != rows:
            raise ValueError(f"input {name}: {len(values)} rows, other inputs have {rows}")
        if dtype == "float32":
            file, tfjs_dtype = f"input-{i}.f32", "float32"
            try:
                values = np.ascontiguousarray(values, dtype="<f4")
            except (TypeError, ValueError) as err:
                raise ValueError(f"input {name}: float32 input has {values.dtype} values ({err})") from None
            values.tofile(folder / file)
        elif dtype == "int64":
            file, tfjs_dtype = f"input-{i}.i32", "int32"
            np.ascontiguousarray(_int32(name, values)).tofile(folder / file)
        elif dtype == "string":
            file, tfjs_dtype = f"input-{i}.json", "string"
            (folder / file).write_text(json.dumps(_strings(name, values), ensure_ascii=False), encoding="utf-8")
        else:
            raise ValueError(f"input {name}: dtype {dtype!r} is not float32, int64 or string")
        entries.append({"name": name, "dtype": dtype, "tfjs_dtype": tfjs_dtype, "shape": list(shape), "file": file})
    if not rows:
        raise ValueError("no rows to predict")
    (folder / MANIFEST).write_text(json.dumps({"rows": rows, "inputs": entries}, indent=1))
    return rows


def _read_output(folder: Path, result: dict) -> np.ndarray:
    return np.fromfile(folder / "y.f32", dtype="<f4").reshape(result["shape"]).astype(np.float32)


def predict_tfjs_node(artifact: Path, features: dict[str, np.ndarray],
                      inputs: dict[str, tuple[str, tuple[int, ...]]]) -> Prediction:
    """The TF.js model in ``artifact`` (``model.json``, layers or graph) in Node, on the pure-JS
    cpu backend: ``probabilities`` is the model's raw output (float32, its own shape)."""
    artifact = Path(artifact)
    node = node_binary()
    kind = _tfjs_kind(artifact)
    with tempfile.TemporaryDirectory(prefix="tfmlops-tfjs-") as tmp:
        tmp = Path(tmp)
        write_inputs(tmp, features, inputs)
        with serve({"/model/": artifact}) as url:
            _run_node([node, str(WEB_DIR / "scripts" / "predict.mjs"), "--model", f"{url}/model/model.json",
                       "--kind", kind, "--inputs", str(tmp / MANIFEST), "--output", str(tmp / "y.f32"),
                       "--result", str(tmp / "result.json"), "--latency-runs", str(LATENCY_RUNS)],
                      f"TF.js in Node on {artifact}")
        result = json.loads((tmp / "result.json").read_text())
        output = _read_output(tmp, result)
    return Prediction("tfjs-node", output, float(result["latency_ms"]),
                      {"kind": kind, "backend": result["backend"], "tfjs_version": result["tfjs_version"]})


def predict_tfjs_browser(artifact: Path, features: dict[str, np.ndarray],
                         inputs: dict[str, tuple[str, tuple[int, ...]]], screenshot: Path | None = None,
                         canvas: bool = False) -> Prediction:
    """The static page in headless Chromium: batch predictions of the rows (``probabilities``:
    the raw output) and, with ``canvas`` (the MNIST demo, one float32 input of 28x28 values), a digit
    drawn with the mouse on the canvas (``info["drawn"]``: the pixels the page fed the model, its
    probabilities and the digit it displayed)."""
    artifact = Path(artifact)
    if canvas and [(d, tuple(int(n) for n in shape)) for d, shape in inputs.values()] != [CANVAS_INPUT]:
        raise ValueError(f"canvas=True needs one float32 input of shape {CANVAS_INPUT[1]}, the spec has {inputs}")
    node, chromium = node_binary(), chromium_binary()
    kind = _tfjs_kind(artifact)
    with tempfile.TemporaryDirectory(prefix="tfmlops-chromium-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        data.mkdir()
        write_inputs(data, features, inputs)
        routes = {"/model/": artifact, "/data/": data,
                  "/vendor/tf.min.js": WEB_DIR / "node_modules" / "@tensorflow" / "tfjs" / "dist" / "tf.min.js",
                  "/": WEB_DIR / "static"}
        with serve(routes) as url:
            argv = [node, str(WEB_DIR / "scripts" / "browser_check.mjs"),
                    "--page", f"{url}/index.html?model=/model/model.json&kind={kind}",
                    "--inputs", f"{url}/data/{MANIFEST}", "--output", str(tmp / "y.f32"),
                    "--result", str(tmp / "result.json"), "--latency-runs", str(LATENCY_RUNS),
                    "--chromium", chromium]
            if canvas:
                argv += ["--canvas", "1"]
            if screenshot is not None:
                argv += ["--screenshot", str(screenshot)]
            _run_node(argv, f"TF.js in Chromium on {artifact}")
        result = json.loads((tmp / "result.json").read_text())
        output = _read_output(tmp, result)
    info = {"kind": kind, "backend": result["backend"], "tfjs_version": result["tfjs_version"],
            "browser": result.get("browser")}
    if canvas:
        info["drawn"] = result["drawn"]
    return Prediction("chromium", output, float(result["latency_ms"]), info)
