// A static page that loads a TF.js model exported by tfmlops (layers or graph model) and
// classifies a digit drawn on the canvas. Query parameters: model (URL of model.json, default
// model/model.json), kind (layers | graph, default layers). The test driver uses window.tfmlops.
/* global tf */
(function () {
  "use strict";
  const params = new URLSearchParams(window.location.search);
  const modelUrl = params.get("model") || "model/model.json";
  const kind = params.get("kind") || "layers";
  const SIDE = 28;
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const status = document.getElementById("status");
  let model = null;
  let last = null;

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

  function run(x) {
    return tf.tidy(() => {
      const out = model.predict(x);
      return Array.isArray(out) ? out[0] : out;
    });
  }

  async function classifyCanvas() {
    const pixels = canvasPixels();
    const y = run(tf.tensor2d(pixels, [1, pixels.length]));
    const probs = Array.from(await y.data());
    y.dispose();
    const label = probs.indexOf(Math.max(...probs));
    document.getElementById("prediction").textContent = String(label);
    document.getElementById("probs").innerHTML = probs.map((p, d) =>
      `<tr><td>${d}</td><td><div class="bar" style="width:${Math.round(p * 200)}px"></div></td>` +
      `<td>${p.toFixed(4)}</td></tr>`).join("");
    last = { input: Array.from(pixels), probs, label };
    return last;
  }

  // Batch prediction of float32 rows fetched from a URL (used to compare with TensorFlow),
  // plus the median latency of one-row predictions.
  async function predictBatch(url, rows, features, latencyRuns) {
    const buffer = await (await fetch(url)).arrayBuffer();
    const x = tf.tensor2d(new Float32Array(buffer, 0, rows * features), [rows, features]);
    const y = run(x);
    const probs = Array.from(await y.data());
    const shape = y.shape;
    x.dispose();
    y.dispose();
    const one = tf.tensor2d(new Float32Array(buffer, 0, features), [1, features]);
    const times = [];
    for (let i = 0; i < (latencyRuns || 0) + 3; i++) {
      const t0 = performance.now();
      const out = run(one);
      await out.data();
      out.dispose();
      if (i >= 3) times.push(performance.now() - t0);
    }
    one.dispose();
    times.sort((a, b) => a - b);
    const latencyMs = times.length ? times[Math.floor(times.length / 2)] : null;
    return { probs, shape, latencyMs, backend: tf.getBackend(), version: tf.version.tfjs };
  }

  async function load() {
    model = kind === "graph" ? await tf.loadGraphModel(modelUrl) : await tf.loadLayersModel(modelUrl);
    status.textContent = `model ${modelUrl} (${kind}) loaded; TF.js ${tf.version.tfjs}, backend ${tf.getBackend()}`;
    return { kind, modelUrl, backend: tf.getBackend() };
  }

  document.getElementById("classify").addEventListener("click", () => { classifyCanvas(); });
  document.getElementById("clear").addEventListener("click", clear);
  clear();
  const ready = load().catch((err) => {
    status.textContent = `failed to load ${modelUrl}: ${err}`;
    throw err;
  });
  window.tfmlops = { ready, classifyCanvas, predictBatch, clear, canvasPixels, get last() { return last; } };
})();
