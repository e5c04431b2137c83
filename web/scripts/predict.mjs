// Run an exported TF.js model in Node with @tensorflow/tfjs (pure-JS "cpu" backend).
//   node predict.mjs --model http://127.0.0.1:PORT/model/model.json --kind layers|graph
//                    --inputs inputs.json --output y.f32 --result result.json [--latency-runs 50]
// The model is loaded over HTTP (tfjs-node's file:// handler needs its native binary, which
// cannot be installed here). inputs.json is the inputs manifest written by
// tfmlops.formats.tfjs_runtime:
//   {"rows": B, "inputs": [{"name", "dtype" (spec: float32|int64|string),
//                           "tfjs_dtype" (float32|int32|string), "shape" (no batch dim), "file"}]}
// with numeric inputs as raw little-endian float32/int32 files and string inputs as a JSON list
// of B*prod(shape) strings, files relative to the manifest. The model's (first/single) output is
// written as raw little-endian float32; the result JSON has its shape, the backend, the TF.js
// version and the median one-row latency. Any failure: exit 1 with the error message on stderr.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { parseArgs } from "./args.mjs";
import { loadModel, predictRows, runner, shortMessage, size } from "../static/tfjs_feed.js";

// Drop the cpu backend's "install tfjs-node" banner, so stderr only carries real errors.
const warn = console.warn;
console.warn = (...a) => { if (!String(a[0]).includes("looks like you are running TensorFlow.js")) warn(...a); };

// The manifest's inputs as {name, dtype, shape, values} (values: the typed array / string list).
function readInputs(path) {
  const manifest = JSON.parse(readFileSync(path, "utf8"));
  const rows = manifest.rows;
  const inputs = manifest.inputs.map((spec) => {
    const file = resolve(dirname(path), spec.file);
    const n = rows * size(spec.shape);
    let values;
    if (spec.tfjs_dtype === "string") {
      values = JSON.parse(readFileSync(file, "utf8"));
    } else {
      const raw = readFileSync(file);
      const bytes = raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength);
      values = spec.tfjs_dtype === "int32" ? new Int32Array(bytes) : new Float32Array(bytes);
    }
    if (values.length !== n) {
      throw new Error(`input ${spec.name}: ${values.length} values, expected ${rows} x [${spec.shape}]`);
    }
    return { name: spec.name, dtype: spec.tfjs_dtype, shape: spec.shape, values };
  });
  return { rows, inputs };
}

async function main() {
  const args = parseArgs(process.argv, ["model", "kind", "inputs", "output", "result"]);
  const latencyRuns = Number(args["latency-runs"] ?? 50);
  const tf = await import("@tensorflow/tfjs");
  await tf.setBackend("cpu");
  await tf.ready();
  const kind = args.kind;
  const model = await loadModel(tf, args.model, kind);
  const { rows, inputs } = readInputs(args.inputs);
  const run = runner(tf, model, kind);
  const { values: probs, shape, latencyMs } = await predictRows(tf, run, inputs, rows, latencyRuns);
  const values = Float32Array.from(probs);
  writeFileSync(args.output, Buffer.from(values.buffer, values.byteOffset, values.byteLength));
  writeFileSync(args.result, JSON.stringify({
    shape, backend: tf.getBackend(), tfjs_version: tf.version.tfjs,
    latency_ms: latencyMs,
  }));
}

try {
  await main();
} catch (err) {
  process.stderr.write(`${shortMessage(err)}\n`);
  process.exitCode = 1;
}
