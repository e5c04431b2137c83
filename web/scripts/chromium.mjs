// Debian's headless Chromium (no browser download) through playwright-core, in a fresh profile
// that close() removes, with one page whose console lines and page errors are collected: what the
// browser scripts here launch.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
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

// A person's session in the Airflow UI: logs in through the login form (the simple auth manager's,
// or FAB's: an <input type=submit>), then runs ``steps({ page, result, shot })``; whatever happens,
// writes ``result`` (with ``logged_in``, the ``error`` and the page's toasts if a step failed — a
// screenshot PREFIX_error.png — and the console's last lines) to --result. ``shot(name, target,
// options)`` screenshots the page (or a locator) into --out.
export async function asPerson(args, viewport, prefix, steps) {
  const { context, page, consoleLines, close } = await launch(args, viewport);
  context.setDefaultTimeout(Number(args.timeout ?? 60000));
  const result = { screenshots: [] };
  const shot = async (name, target = page, options = {}) => {
    const path = join(args.out, name);
    await target.screenshot({ path, ...options });
    result.screenshots.push(path);
  };
  try {
    await page.goto(args.airflow);
    await page.locator("input[name=username]").fill(args.user);
    await page.locator("input[name=password]").fill(args.password);
    await page.locator("button[type=submit], input[type=submit]").first().click();
    await page.waitForURL((url) => !url.pathname.startsWith("/auth/login"));
    result.logged_in = true;
    await steps({ page, result, shot });
  } catch (err) {
    result.error = `${err.name}: ${err.message}`;
    try {
      result.alerts = await page.locator("[role=alert], [role=status]").allInnerTexts();
      await shot(`${prefix}_error.png`, page, { fullPage: true });
    } catch { /* the page may be gone */ }
  } finally {
    result.console = consoleLines.slice(-50);
    writeFileSync(args.result, JSON.stringify(result, null, 1));
    await close();
  }
}
