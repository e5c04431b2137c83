// Open a model card (a standalone HTML file) in headless Chromium (Debian's, via playwright-core)
// and report what the browser rendered:
//   node card_check.mjs --page file:///.../model_card.html --result result.json
//        [--screenshot card.png] [--chromium /usr/bin/chromium]
// result.json: title, the section headings and ids, per section its table headers and row
// count and its definition terms, the number of <script> elements, page errors and console lines.
import { writeFileSync } from "node:fs";
import { parseArgs } from "./args.mjs";
import { launch } from "./chromium.mjs";

const args = parseArgs(process.argv, ["page", "result"]);
const { context, page, consoleLines, close } = await launch(args, { width: 1100, height: 900 });
try {
  await page.goto(args.page);
  const rendered = await page.evaluate(() => ({
    title: document.title,
    h1: document.querySelector("h1")?.textContent ?? null,
    scripts: document.querySelectorAll("script").length,
    sections: [...document.querySelectorAll("section")].map((s) => ({
      id: s.id,
      heading: s.querySelector("h2")?.textContent ?? null,
      terms: Object.fromEntries([...s.querySelectorAll("dt")].map((dt) => [dt.textContent,
        dt.nextElementSibling?.textContent ?? null])),
      headers: [...s.querySelectorAll("th")].map((th) => th.textContent),
      rows: [...s.querySelectorAll("tbody tr")].map((tr) => [...tr.children].map((td) => td.textContent)),
      items: [...s.querySelectorAll("li")].map((li) => li.textContent),
      visible: s.getBoundingClientRect().height > 0,
    })),
  }));
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
  writeFileSync(args.result, JSON.stringify({ ...rendered, browser: context.browser()?.version() ?? null,
    console: consoleLines }));
} finally {
  await close();
}
