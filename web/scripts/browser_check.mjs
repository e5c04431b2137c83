// Drive the static page (web/static/index.html) in headless Chromium (Debian's /usr/bin/chromium,
// no browser download) with playwright-core:
//   node browser_check.mjs --page http://127.0.0.1:PORT/index.html?model=...&kind=layers
//        --inputs http://127.0.0.1:PORT/data/inputs.json --output y.f32 --result result.json
//        [--latency-runs 50] [--canvas 1] [--screenshot page.png] [--chromium /usr/bin/chromium]
// 1. loads the model in the page and predicts the rows of the inputs manifest (see app.js;
//    compared with TensorFlow by the caller): the raw output as little-endian float32 in
//    --output, its shape and the median one-row latency in --result;
// 2. with --canvas 1 only (the MNIST demo: one float32 input of 784 values): draws a digit with
//    the mouse on the canvas, clicks "Classify" and records the canvas pixels the page fed to
//    the model, its probabilities and the digit it displays ("drawn" in the result).
// Any failure (model that does not load or predict, ...): exit 1 with the error message on stderr.
import { writeFileSync } from "node:fs";
import { parseArgs } from "./args.mjs";
import { launch } from "./chromium.mjs";

function shortMessage(err) {
  const text = String(err && err.message ? err.message : err).split("\n")[0].trim()
    .replace(/^page\.evaluate: /, "").replace(/^Error: /, "");
  const cut = text.indexOf(" This may be due to");
  return (cut > 0 ? text.slice(0, cut) : text).slice(0, 500);
}

// Runs fn(arg) in the page; a rejection comes back as an Error with the page's short message.
async function inPage(page, fn, arg) {
  const wrapped = async ([source, value]) => {
    try {
      // eslint-disable-next-line no-new-func
      return { ok: true, value: await (0, eval)(`(${source})`)(value) };
    } catch (err) {
      return { ok: false, error: window.tfmlops ? window.tfmlops.shortMessage(err) : String(err) };
    }
  };
  const out = await page.evaluate(wrapped, [fn.toString(), arg]);
  if (!out.ok) throw new Error(out.error);
  return out.value;
}

async function main() {
  const args = parseArgs(process.argv, ["page", "inputs", "output", "result"]);
  const canvas = ["1", "true", "yes"].includes(String(args.canvas ?? "").toLowerCase());
  const { context, page, consoleLines, close } = await launch(args, { width: 900, height: 560 });
  try {
    await page.goto(args.page);
    await page.waitForFunction(() => window.tfmlops !== undefined, null, { timeout: 30000 }).catch(() => {
      throw new Error(`the page did not start (${consoleLines.slice(-3).join("; ") || "no console output"})`);
    });
    const loaded = await inPage(page, () => window.tfmlops.ready);

    const batch = await inPage(page, ([url, runs]) => window.tfmlops.predictBatch(url, runs),
      [args.inputs, Number(args["latency-runs"] ?? 50)]);
    const probs = Float32Array.from(batch.probs);
    writeFileSync(args.output, Buffer.from(probs.buffer));

    let drawn;
    if (canvas) {
      if (!loaded.canvas) throw new Error(`--canvas: the drawing pad cannot classify with this model: ${loaded.canvasReason}`);
      // A "7": a top bar, then a diagonal down to the bottom left, drawn with the mouse.
      const box = await page.locator("#pad").boundingBox();
      const at = (fx, fy) => [box.x + fx * box.width, box.y + fy * box.height];
      const strokes = [[[0.28, 0.25], [0.72, 0.25], [0.45, 0.8]]];
      for (const stroke of strokes) {
        await page.mouse.move(...at(...stroke[0]));
        await page.mouse.down();
        for (const p of stroke.slice(1)) await page.mouse.move(...at(...p), { steps: 12 });
        await page.mouse.up();
      }
      await page.click("#classify");
      await page.waitForFunction(() => window.tfmlops.last !== null, null, { timeout: 60000 }).catch(async () => {
        throw new Error(`the page did not classify the drawing: ${await page.locator("#status").textContent()}`);
      });
      drawn = await page.evaluate(() => window.tfmlops.last);
      drawn.displayed = (await page.locator("#prediction").textContent()).trim();
    }
    if (args.screenshot) await page.screenshot({ path: args.screenshot });
    writeFileSync(args.result, JSON.stringify({
      loaded, shape: batch.shape, backend: batch.backend, tfjs_version: batch.version,
      latency_ms: batch.latencyMs, browser: context.browser()?.version() ?? null,
      ...(drawn ? { drawn } : {}), console: consoleLines.slice(-20),
    }));
  } finally {
    await close();
  }
}

try {
  await main();
} catch (err) {
  process.stderr.write(`${shortMessage(err)}\n`);
  process.exitCode = 1;
}
