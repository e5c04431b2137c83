// Trigger a DAG as a person does, in headless Chromium (chromium.mjs):
//   node trigger_check.mjs --airflow http://HOST:PORT --user U --password PW --dag D --out DIR
//        --result result.json [--name PREFIX] [--conf '{"field": "value", ...}']
// logs in through the login form (the simple auth manager's, or FAB's), opens the DAG's page and
// records whether the "Trigger Dag" button is there; if it is, clicks it, types --conf into the
// form's "Configuration JSON" editor (Advanced Options: the form's fields follow it), clicks
// Trigger and records the HTTP status of the run the page asked for (``trigger_status``: POST
// …/dagRuns) and the run it landed on (``run_id``). A person whose role may not trigger: no button,
// or ``trigger_status`` 403 with no run and the form's text (its error above the fields) in
// ``dialog_text``. Screenshots PREFIX_form.png, PREFIX_after.png. The result JSON is what the
// calling test asserts on.
import { parseArgs } from "./args.mjs";
import { asPerson } from "./chromium.mjs";

const args = parseArgs(process.argv, ["airflow", "user", "password", "dag", "out", "result"]);
const prefix = args.name ?? "trigger";
await asPerson(args, { width: 1400, height: 1100 }, prefix, async ({ page, result, shot }) => {
  await page.goto(`${args.airflow}/dags/${args.dag}`);
  await page.getByText(args.dag, { exact: true }).first().waitFor();
  await page.waitForTimeout(1500);  // the header's buttons come with the DAG's details
  const open = page.getByRole("button", { name: "Trigger Dag" });
  result.trigger_button = await open.count() > 0 && await open.first().isVisible();
  if (!result.trigger_button) {
    await shot(`${prefix}_no_button.png`);
  } else {
    result.trigger_button_enabled = await open.first().isEnabled();
    await open.first().click();
    const dialog = page.getByRole("dialog");
    await dialog.waitFor();
    await dialog.getByRole("button", { name: "Run Parameters" }).waitFor();
    if (args.conf !== undefined) {
      await dialog.getByText("Advanced Options", { exact: true }).click();
      const label = dialog.getByText("Configuration JSON", { exact: true });
      await label.waitFor();
      await page.waitForTimeout(1000);  // the section slides open
      // Airflow's JSON editor is Monaco (array fields of the form have their own, hidden above)
      const editor = label.locator("xpath=ancestor::*[.//*[contains(@class, 'monaco-editor')]][1]")
        .locator(".monaco-editor").first();
      await editor.scrollIntoViewIfNeeded();
      await editor.click({ position: { x: 150, y: 10 } });
      await page.keyboard.press("ControlOrMeta+a");
      await page.keyboard.press("Delete");
      await page.keyboard.insertText(JSON.stringify(JSON.parse(args.conf)));  // one line: no auto-indent
      await page.waitForTimeout(1000);
    }
    await page.waitForTimeout(500);
    result.errors = await dialog.locator("[aria-invalid=true]").evaluateAll(
      (els) => els.map((e) => e.getAttribute("name") || e.id || e.tagName));
    await shot(`${prefix}_form.png`, dialog);
    const answered = page.waitForResponse((response) => response.request().method() === "POST"
      && /\/dags\/[^/]+\/dagRuns$/.test(new URL(response.url()).pathname));
    await dialog.getByRole("button", { name: "Trigger", exact: true }).click();
    const response = await answered;
    result.trigger_status = response.status();
    if (response.ok()) {
      await page.waitForURL((url) => url.pathname.includes("/runs/"));
      result.run_id = decodeURIComponent(new URL(page.url()).pathname.split("/runs/")[1].split("/")[0]);
    } else {
      await page.waitForTimeout(1000);  // the form shows the API's answer above its fields
      result.dialog_text = (await dialog.innerText()).slice(0, 1000);
    }
    await shot(`${prefix}_after.png`);
  }
});
