// Drive the static page (web/index.html) in headless Chromium (Debian's /usr/bin/chromium, no
// browser download) with playwright-core:
//   node browser_check.mjs --page http://127.0.0.1:PORT/index.html?model=...&kind=layers
//        --input http://127.0.0.1:PORT/data/x.f32 --rows N --features F --output probs.f32
//        --result result.json [--screenshot page.png] [--chromium /usr/bin/chromium]
// 1. loads the model in the page and predicts the float32 rows (compared with TensorFlow by
//    the caller), with the median one-row latency;
// 2. draws a digit with the mouse on the canvas, clicks "Classify" and records the canvas
//    pixels the page fed to the model, its probabilities and the digit it displays.
import { writeFileSync } from "node:fs";
import { parseArgs } from "./args.mjs";
import { launch } from "./chromium.mjs";

const args = parseArgs(process.argv, ["page", "input", "rows", "features", "output", "result"]);
const { context, page, consoleLines, close } = await launch(args, { width: 900, height: 560 });
try {
  await page.goto(args.page);
  const loaded = await page.evaluate(() => window.tfmlops.ready);

  const batch = await page.evaluate(
    ([url, rows, features, runs]) => window.tfmlops.predictBatch(url, rows, features, runs),
    [args.input, Number(args.rows), Number(args.features), Number(args["latency-runs"] ?? 50)]);
  const probs = Float32Array.from(batch.probs);
  writeFileSync(args.output, Buffer.from(probs.buffer));

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
  await page.waitForFunction(() => window.tfmlops.last !== null);
  const drawn = await page.evaluate(() => window.tfmlops.last);
  const displayed = (await page.locator("#prediction").textContent()).trim();
  if (args.screenshot) await page.screenshot({ path: args.screenshot });
  writeFileSync(args.result, JSON.stringify({
    loaded, shape: batch.shape, backend: batch.backend, tfjs_version: batch.version,
    latency_ms: batch.latencyMs, browser: context.browser()?.version() ?? null,
    drawn: { ...drawn, displayed }, console: consoleLines.slice(-20),
  }));
} finally {
  await close();
}
