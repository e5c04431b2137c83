// A static page that loads a TF.js model exported by tfmlops (layers or graph model), predicts
// the rows of an inputs manifest (window.tfmlops.predictBatch, used by the test driver) and,
// for an MNIST-style model (one float32 input of 784 values), classifies a digit drawn on the
// canvas. Query parameters: model (URL of model.json, default model/model.json), kind (layers |
// graph, default layers).
//
// Inputs manifest (written by tfmlops.formats.tfjs_runtime):
//   {"rows": B, "inputs": [{"name", "dtype" (spec: float32|int64|string),
//                           "tfjs_dtype" (float32|int32|string), "shape" (no batch dim), "file"}]}
// numeric inputs as raw little-endian float32/int32 files, string inputs as a JSON list of
// B*prod(shape) strings; file URLs relative to the manifest's.
// An ES module (index.html loads it after vendor/tf.min.js, whose global `tf` it uses); running
// the model is tfjs_feed.js, shared with the Node predictor (web/scripts/predict.mjs).
/* global tf */
import { loadModel, modelInputs as inputsOf, predictRows, runner, shortMessage, size } from "./tfjs_feed.js";

const params = new URLSearchParams(window.location.search);
const modelUrl = params.get("model") || "model/model.json";
const kind = params.get("kind") || "layers";
const SIDE = 28;
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const status = document.getElementById("status");
let model = null;
let canvasReason = "model not loaded";  // null when the model can classify the drawing pad
let last = null;

// The model's inputs as [{name, shape}] (shape with the batch dimension).
const modelInputs = () => inputsOf(model, kind);
let run = null;  // run(names, tensors) -> the model's output tensor, once loaded

// --- the drawing pad (MNIST demo) --------------------------------------------------------

function clear() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  document.getElementById("prediction").textContent = "–";
  document.getElementById("probs").innerHTML = "";
  last = null;
}

// Pen: white strokes on black, as MNIST digits are.
let drawing = false;
function point(event) {
  const rect = pad.getBoundingClientRect();
  return [event.clientX - rect.left, event.clientY - rect.top];
}
pad.addEventListener("pointerdown", (e) => {
  drawing = true;
  const [x, y] = point(e);
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 22;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(x, y);
});
pad.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  const [x, y] = point(e);
  ctx.lineTo(x, y);
  ctx.stroke();
});
window.addEventListener("pointerup", () => { drawing = false; });

// The canvas as the model's input, prepared like MNIST digits: the ink's bounding box scaled
// to fit 20x20 (aspect kept), centred in 28x28; grey levels in [0, 1], row-major, 784 values.
function inkBox() {
  const rgba = ctx.getImageData(0, 0, pad.width, pad.height).data;
  let x0 = pad.width, y0 = pad.height, x1 = -1, y1 = -1;
  for (let y = 0; y < pad.height; y++) {
    for (let x = 0; x < pad.width; x++) {
      if (rgba[4 * (y * pad.width + x)] > 32) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  return x1 < 0 ? null : { x: x0, y: y0, w: x1 - x0 + 1, h: y1 - y0 + 1 };
}

function canvasPixels() {
  const small = document.createElement("canvas");
  small.width = SIDE;
  small.height = SIDE;
  const sctx = small.getContext("2d");
  sctx.fillStyle = "#000";
  sctx.fillRect(0, 0, SIDE, SIDE);
  sctx.imageSmoothingEnabled = true;
  sctx.imageSmoothingQuality = "high";
  const box = inkBox();
  if (box) {
    const scale = 20 / Math.max(box.w, box.h);
    const w = box.w * scale, h = box.h * scale;
    sctx.drawImage(pad, box.x, box.y, box.w, box.h, (SIDE - w) / 2, (SIDE - h) / 2, w, h);
  }
  const rgba = sctx.getImageData(0, 0, SIDE, SIDE).data;
  const pixels = new Float32Array(SIDE * SIDE);
  for (let i = 0; i < pixels.length; i++) pixels[i] = rgba[4 * i] / 255;
  return pixels;
}

async function classifyCanvas() {
  if (canvasReason) throw new Error(`the drawing pad cannot classify with this model: ${canvasReason}`);
  const pixels = canvasPixels();
  const x = tf.tensor2d(pixels, [1, pixels.length]);
  const y = await run([modelInputs()[0].name], [x]);
  const probs = Array.from(await y.data());
  x.dispose();
  y.dispose();
  const label = probs.indexOf(Math.max(...probs));
  document.getElementById("prediction").textContent = String(label);
  document.getElementById("probs").innerHTML = probs.map((p, d) =>
    `<tr><td>${d}</td><td><div class="bar" style="width:${Math.round(p * 200)}px"></div></td>` +
    `<td>${p.toFixed(4)}</td></tr>`).join("");
  last = { input: Array.from(pixels), probs, label };
  return last;
}

// Why the pad cannot feed this model (null when it can): it needs one input of 784 values.
function padReason() {
  const inputs = modelInputs();
  const shapes = inputs.map((x) => `${x.name.replace(/:\d+$/, "")} [${(x.shape || []).slice(1).join(", ")}]`);
  if (inputs.length !== 1) return `the model has ${inputs.length} inputs (${shapes.join(", ")})`;
  const shape = inputs[0].shape || [];
  if (shape.length !== 2 || shape[1] !== SIDE * SIDE) return `its input is ${shapes[0]}, not [${SIDE * SIDE}]`;
  const dtype = model.inputs[0].dtype;
  if (dtype && dtype !== "float32") return `its input is ${dtype}, not float32`;
  return null;
}

// --- batch prediction of an inputs manifest (compared with TensorFlow by the caller) ------

async function readInputs(manifestUrl) {
  const base = new URL(manifestUrl, window.location.href);
  const response = await fetch(base);
  if (!response.ok) throw new Error(`${base}: HTTP ${response.status}`);
  const manifest = await response.json();
  const rows = manifest.rows;
  const inputs = await Promise.all(manifest.inputs.map(async (spec) => {
    const url = new URL(spec.file, base);
    const r = await fetch(url);
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    let values;
    if (spec.tfjs_dtype === "string") values = await r.json();
    else if (spec.tfjs_dtype === "int32") values = new Int32Array(await r.arrayBuffer());
    else values = new Float32Array(await r.arrayBuffer());
    if (values.length !== rows * size(spec.shape)) {
      throw new Error(`input ${spec.name}: ${values.length} values, expected ${rows} x [${spec.shape}]`);
    }
    return { name: spec.name, dtype: spec.tfjs_dtype, shape: spec.shape, values };
  }));
  return { rows, inputs };
}

// Predicts every row of the manifest, then the median latency of one-row predictions.
// Returns {probs (flat raw output), shape, latencyMs, backend, version}.
async function predictBatch(manifestUrl, latencyRuns) {
  const { rows, inputs } = await readInputs(manifestUrl);
  const { values: probs, shape, latencyMs } = await predictRows(tf, run, inputs, rows, latencyRuns || 0);
  return { probs, shape, latencyMs, backend: tf.getBackend(), version: tf.version.tfjs };
}

async function load() {
  model = await loadModel(tf, modelUrl, kind);
  run = runner(tf, model, kind);
  canvasReason = padReason();
  const described = modelInputs().map((x) => `${x.name.replace(/:\d+$/, "")} [${(x.shape || []).slice(1).join(", ")}]`);
  status.textContent = `model ${modelUrl} (${kind}) loaded, inputs: ${described.join(", ")}; ` +
    `TF.js ${tf.version.tfjs}, backend ${tf.getBackend()}`;
  document.getElementById("demo").hidden = canvasReason !== null;
  document.getElementById("title").textContent = canvasReason === null ? "Draw a digit" : "TF.js model";
  return { kind, modelUrl, backend: tf.getBackend(), canvas: canvasReason === null, canvasReason };
}

document.getElementById("classify").addEventListener("click", () => {
  classifyCanvas().catch((err) => { status.textContent = shortMessage(err); });
});
document.getElementById("clear").addEventListener("click", clear);
clear();
const ready = load().catch((err) => {
  status.textContent = `failed to load ${modelUrl}: ${shortMessage(err)}`;
  throw err;
});
ready.catch(() => {});  // the driver reads the rejection; no unhandled-rejection noise
window.tfmlops = {
  ready, classifyCanvas, predictBatch, clear, canvasPixels, shortMessage,
  get last() { return last; },
};
