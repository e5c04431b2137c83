// Drive the Airflow UI as a person does, in headless Chromium (Debian's /usr/bin/chromium) with
// playwright-core:
//   node airflow_ui_check.mjs --airflow http://127.0.0.1:PORT --user admin --password PW
//        --dags a,b,c --out DIR --result result.json [--grid-dag a] [--mlflow-page URL --mlflow-text T]
// 1. logs in through the login form and screenshots the DAG list;
// 2. for every DAG: opens its page, clicks "Trigger", records whether the form shows errors and
//    whether its Trigger button is enabled with the default values, submits it and records the
//    page it lands on (a screenshot of each form);
// 3. with --fill-dag D --fill '{"field": "value"}': triggers D once more with those values typed
//    into its form (a non-default model module, say) and records that run;
// 4. screenshots the grid of the run triggered for --grid-dag and the --mlflow-page (once it shows
//    --mlflow-text: MLflow's UI polls, so the network never goes idle).
// The result JSON is what the calling test asserts on.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { parseArgs } from "./args.mjs";

const args = parseArgs(process.argv, ["airflow", "user", "password", "dags", "out", "result"]);
const executablePath = args.chromium || process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const profile = mkdtempSync(join(tmpdir(), "tfmlops-chromium-"));
const flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"];
const context = await chromium.launchPersistentContext(profile, {
  executablePath, headless: true, args: flags, viewport: { width: 1400, height: 1000 },
});
context.setDefaultTimeout(Number(args.timeout ?? 60000));
const result = { dags: {}, screenshots: [], console: [] };
const shot = async (page, name, options = {}) => {
  const path = join(args.out, name);
  await page.screenshot({ path, ...options });
  result.screenshots.push(path);
};
try {
  const page = context.pages()[0] || await context.newPage();
  page.on("pageerror", (err) => result.console.push(`pageerror: ${err.message}`));

  await page.goto(args.airflow);
  await page.locator("input[name=username]").fill(args.user);
  await page.locator("input[name=password]").fill(args.password);
  await page.locator("button[type=submit]").click();
  await page.waitForURL((url) => !url.pathname.startsWith("/auth/login"));
  await page.goto(`${args.airflow}/dags`);
  for (const dagId of args.dags.split(",")) await page.getByText(dagId, { exact: true }).first().waitFor();
  await shot(page, "dag_list.png", { fullPage: true });

  for (const dagId of args.dags.split(",")) {
    const entry = { errors: [] };
    result.dags[dagId] = entry;
    await page.goto(`${args.airflow}/dags/${dagId}`);
    await page.getByRole("button", { name: "Trigger Dag" }).click();
    const dialog = page.getByRole("dialog");
    await dialog.waitFor();
    const runParameters = dialog.getByRole("button", { name: "Run Parameters" });
    await runParameters.waitFor();
    await page.waitForTimeout(500);  // the form validates its fields once they are rendered
    const submit = dialog.getByRole("button", { name: "Trigger", exact: true });
    entry.trigger_enabled = await submit.isEnabled();
    // A form with an invalid field shows its section title in red and a message under the field.
    entry.errors = await dialog.locator("[aria-invalid=true]").evaluateAll(
      (els) => els.map((e) => e.getAttribute("name") || e.id || e.tagName));
    await dialog.screenshot({ path: join(args.out, `trigger_form_${dagId}.png`) });
    result.screenshots.push(join(args.out, `trigger_form_${dagId}.png`));
    if (!entry.trigger_enabled) continue;
    await submit.click();
    await dialog.waitFor({ state: "detached" });
    await page.waitForURL((url) => url.pathname.includes("/runs/"));
    entry.landed_on = new URL(page.url()).pathname;
    entry.run_id = decodeURIComponent(entry.landed_on.split("/runs/")[1].split("/")[0]);
  }

  // a run with values typed into the form (e.g. a non-default model module): --fill-dag D --fill JSON
  if (args["fill-dag"]) {
    const dagId = args["fill-dag"];
    const values = JSON.parse(args.fill);
    const entry = { filled: values };
    result.filled = entry;
    await page.goto(`${args.airflow}/dags/${dagId}`);
    await page.getByRole("button", { name: "Trigger Dag" }).click();
    const dialog = page.getByRole("dialog");
    await dialog.waitFor();
    const first = dialog.locator(`[name=element_${Object.keys(values)[0]}]`);
    if (!(await first.isVisible())) await dialog.getByRole("button", { name: "Run Parameters" }).click();
    for (const [name, value] of Object.entries(values)) {
      const field = dialog.locator(`[name=element_${name}]`);
      await field.scrollIntoViewIfNeeded();
      await field.fill(String(value));
    }
    await page.waitForTimeout(500);
    entry.errors = await dialog.locator("[aria-invalid=true]").evaluateAll(
      (els) => els.map((e) => e.getAttribute("name") || e.id || e.tagName));
    await dialog.screenshot({ path: join(args.out, `trigger_form_${dagId}_filled.png`) });
    result.screenshots.push(join(args.out, `trigger_form_${dagId}_filled.png`));
    await dialog.getByRole("button", { name: "Trigger", exact: true }).click();
    await dialog.waitFor({ state: "detached" });
    await page.waitForURL((url) => url.pathname.includes("/runs/"));
    entry.run_id = decodeURIComponent(new URL(page.url()).pathname.split("/runs/")[1].split("/")[0]);
  }

  const gridDag = args["grid-dag"];
  if (gridDag && result.dags[gridDag]?.run_id) {
    await page.goto(`${args.airflow}/dags/${gridDag}/runs/${encodeURIComponent(result.dags[gridDag].run_id)}`);
    await page.getByText(result.dags[gridDag].run_id).first().waitFor();
    await page.waitForTimeout(1000);
    await shot(page, `run_grid_${gridDag}.png`, { fullPage: true });
  }
  if (args["mlflow-page"]) {
    await page.goto(args["mlflow-page"]);
    await page.getByText(args["mlflow-text"] ?? "Registered", { exact: false }).first().waitFor();
    await page.waitForTimeout(1500);
    await shot(page, "mlflow_model.png", { fullPage: true });
    result.mlflow_title = await page.title();
    result.mlflow_text = (await page.locator("body").innerText()).slice(0, 4000);
  }
} catch (err) {
  result.error = `${err.name}: ${err.message}`;
} finally {
  writeFileSync(args.result, JSON.stringify(result, null, 1));
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
