// Debian's headless Chromium (no browser download) through playwright-core, in a fresh profile
// that close() removes, with one page whose console lines and page errors are collected: what the
// browser scripts here launch.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"];

export async function launch(args, viewport) {
  const executablePath = args.chromium || process.env.CHROMIUM_PATH || "/usr/bin/chromium";
  const profile = mkdtempSync(join(tmpdir(), "tfmlops-chromium-"));
  // launchPersistentContext passes the fresh profile as --user-data-dir.
  const context = await chromium.launchPersistentContext(profile, {
    executablePath, headless: true, args: FLAGS, viewport,
  });
  const close = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  const consoleLines = [];
  const page = context.pages()[0] || await context.newPage();
  page.on("console", (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`));
  page.on("pageerror", (err) => consoleLines.push(`pageerror: ${err.message}`));
  return { context, page, consoleLines, close };
}
