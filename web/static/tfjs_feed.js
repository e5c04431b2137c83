// Running a TF.js model exported by tfmlops (layers or graph model), shared by the Node predictor
// (web/scripts/predict.mjs) and the browser page (web/static/app.js). An ES module of pure
// functions: TF.js itself (`tf`), the model and its kind ("layers" | "graph") are arguments.
//
// Inputs (as read from an inputs manifest by either caller): [{name, dtype (tfjs: float32 |
// int32 | string), shape (no batch dim), values (typed array / string list, rows x shape)}].

export const size = (shape) => shape.reduce((a, b) => a * b, 1);

// The first line of an error's message, without TF.js's "This may be due to ..." advice.
export function shortMessage(err) {
  const text = String(err && err.message ? err.message : err).split("\n")[0].trim();
  const cut = text.indexOf(" This may be due to");
  return (cut > 0 ? text.slice(0, cut) : text).slice(0, 500);
}

// The model's inputs as [{name, shape}] (shape with the batch dimension, -1/null for unknown). A
// graph model's lookup tables are inputs of its signature too (DT_RESOURCE, with a resourceId):
// TF.js feeds them from the model's initializer, the caller never does.
export function modelInputs(model, kind) {
  if (kind === "graph") {
    const signature = (model.signature && model.signature.inputs) || {};
    const tables = new Set(Object.values(signature).filter((s) => s.resourceId != null)
      .map((s) => s.name.replace(/:\d+$/, "")));
    return model.inputs.filter((t) => !tables.has(t.name.replace(/:\d+$/, "")))
      .map((t) => ({ name: t.name, shape: t.shape || [] }));
  }
  return model.inputNames.map((name, i) => ({ name, shape: model.inputs[i].shape }));
}

// Feed for the model from tensors named `names`: layers models take an array in the order of
// model.inputNames, graph models a NamedTensorMap keyed by their input names ("name" or "name:0").
export function feedFor(model, kind, names, tensors) {
  const byName = new Map(names.map((n, i) => [n, tensors[i]]));
  const modelNames = modelInputs(model, kind).map((x) => x.name);
  const pick = (name) => {
    const base = name.replace(/:\d+$/, "");
    if (byName.has(name)) return byName.get(name);
    if (byName.has(base)) return byName.get(base);
    if (modelNames.length === 1 && tensors.length === 1) return tensors[0];
    throw new Error(`model input ${base} is not among the inputs given (${names.join(", ")})`);
  };
  if (modelNames.length !== tensors.length) {
    throw new Error(`model has inputs (${modelNames.join(", ")}), ${tensors.length} given (${names.join(", ")})`);
  }
  if (kind === "graph") return Object.fromEntries(modelNames.map((n) => [n, pick(n)]));
  const ordered = modelNames.map(pick);
  return ordered.length === 1 ? ordered[0] : ordered;
}

// The model's one output (the first, for a layers model with several).
export function singleOutput(model, kind, out) {
  if (out && typeof out.dataSync === "function") return out;
  const values = Array.isArray(out) ? out : Object.values(out);
  if (kind === "graph" && values.length !== 1) {
    const names = Array.isArray(out) ? model.outputs.map((t) => t.name) : Object.keys(out);
    throw new Error(`graph model has ${values.length} outputs (${names.join(", ")}), expected one`);
  }
  return values[0];
}

// run(names, tensors) -> the model's (first/single) output tensor for the named tensors; graph
// models with control flow go through executeAsync (remembered once execute asked for it).
export function runner(tf, model, kind) {
  let useAsync = false;
  return async function run(names, tensors) {
    const feed = feedFor(model, kind, names, tensors);
    if (kind !== "graph") return tf.tidy(() => singleOutput(model, kind, model.predict(feed)));
    if (!useAsync) {
      try {
        return tf.tidy(() => singleOutput(model, kind, model.execute(feed)));
      } catch (err) {
        if (!/executeAsync/.test(String(err && err.message))) throw err;
        useAsync = true;
      }
    }
    const out = await model.executeAsync(feed);
    const y = singleOutput(model, kind, out);
    const all = Array.isArray(out) ? out : (out === y ? [] : Object.values(out));
    for (const t of all) if (t !== y) t.dispose();
    return y;
  };
}

// Tensors of rows [start, start + count) of every input.
export function tensorsFor(tf, inputs, start, count) {
  return inputs.map((x) => {
    const per = size(x.shape);
    return tf.tensor(x.values.slice(start * per, (start + count) * per), [count, ...x.shape], x.dtype);
  });
}

// Predicts all `rows` rows of the inputs with run (from runner), then times latencyRuns one-row
// predictions (after 3 warm-up runs). Returns {values (the output's data as an Array), shape,
// latencyMs (median, null without timed runs)}.
export async function predictRows(tf, run, inputs, rows, latencyRuns) {
  const names = inputs.map((x) => x.name);
  const batch = tensorsFor(tf, inputs, 0, rows);
  const y = await run(names, batch);
  const values = Array.from(await y.data());
  const shape = y.shape;
  tf.dispose([...batch, y]);
  const one = tensorsFor(tf, inputs, 0, 1);
  const times = [];
  for (let i = 0; i < latencyRuns + 3; i++) {
    const t0 = performance.now();
    const out = await run(names, one);
    await out.data();
    out.dispose();
    if (i >= 3) times.push(performance.now() - t0);
  }
  tf.dispose(one);
  times.sort((a, b) => a - b);
  return { values, shape, latencyMs: times.length ? times[Math.floor(times.length / 2)] : null };
}

// TF.js has no int64: a layers model exported from an int64 Keras input declares dtype "int64",
// which TF.js cannot feed or cast to; load it as int32 (what the inputs manifest sends, and
// what the graph converter does to int64 tensors).
export function int64AsInt32(config) {
  if (Array.isArray(config)) config.forEach(int64AsInt32);
  else if (config && typeof config === "object") {
    for (const [k, v] of Object.entries(config)) {
      if (k === "dtype" && v === "int64") config[k] = "int32";
      else int64AsInt32(v);
    }
  }
  return config;
}

// The model.json at url (over HTTP) as a graph model or, int64 inputs as int32, a layers model.
export async function loadModel(tf, url, kind) {
  if (kind === "graph") return tf.loadGraphModel(url);
  const handler = tf.io.http(url);
  const load = handler.load.bind(handler);
  handler.load = async () => {
    const artifacts = await load();
    int64AsInt32(artifacts.modelTopology);
    return artifacts;
  };
  return tf.loadLayersModel(handler);
}
