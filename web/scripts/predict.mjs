// Run an exported TF.js model in Node with @tensorflow/tfjs (pure-JS "cpu" backend).
//   node predict.mjs --model http://127.0.0.1:PORT/model/model.json --kind layers|graph
//                    --input x.f32 --rows N --features F --output probs.f32 --result result.json
//                    [--latency-runs 50]
// The model is loaded over HTTP (tfjs-node's file:// handler needs its native binary, which
// cannot be installed here). Inputs/outputs are raw little-endian float32 files; the result
// JSON has the output shape, the backend, the TF.js version and the median one-row latency.
import { readFileSync, writeFileSync } from "node:fs";
import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "./args.mjs";

const args = parseArgs(process.argv, ["model", "kind", "input", "rows", "features", "output", "result"]);
const rows = Number(args.rows);
const features = Number(args.features);
const latencyRuns = Number(args["latency-runs"] ?? 50);

await tf.setBackend("cpu");
await tf.ready();
const model = args.kind === "graph" ? await tf.loadGraphModel(args.model) : await tf.loadLayersModel(args.model);
const raw = readFileSync(args.input);
const x = new Float32Array(raw.buffer, raw.byteOffset, rows * features);

function run(t) {
  return tf.tidy(() => {
    const out = model.predict(t);
    return Array.isArray(out) ? out[0] : out;
  });
}

const y = run(tf.tensor2d(x, [rows, features]));
const probs = await y.data();
writeFileSync(args.output, Buffer.from(probs.buffer, probs.byteOffset, probs.byteLength));

const one = tf.tensor2d(x.subarray(0, features), [1, features]);
const times = [];
for (let i = 0; i < latencyRuns + 3; i++) {
  const t0 = performance.now();
  const out = run(one);
  await out.data();
  out.dispose();
  if (i >= 3) times.push(performance.now() - t0);
}
times.sort((a, b) => a - b);
writeFileSync(args.result, JSON.stringify({
  shape: y.shape, backend: tf.getBackend(), tfjs_version: tf.version.tfjs,
  latency_ms: times.length ? times[Math.floor(times.length / 2)] : null,
}));
