// Answer a human-in-the-loop approval as a person does, in headless Chromium (chromium.mjs):
//   node approval_check.mjs --airflow http://127.0.0.1:PORT --user U --password PW
//        --page REQUIRED_ACTIONS_URL --option Approve --note "why" --out DIR --result result.json
//        [--name PREFIX] [--answer-wait-ms 30000]
// logs in through the login form (the simple auth manager's, or FAB's: an <input type=submit>),
// opens the task's "Required actions" page (the link the approval sends), records what it shows
// (subject, body), types the note into the form's Note field, clicks the option's button and waits
// until the page says the response was received (the options stay, disabled); screenshots before
// and after (PREFIX_pending.png …); ``answer_status`` is the HTTP status of the answer the page
// sent. A person whose role may not answer: ``answer_status`` 403, ``clicked`` stays unset, ``error``
// says what did not happen and ``alerts`` holds the toasts the UI showed. The result JSON is what
// the calling test asserts on.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "./args.mjs";
import { launch } from "./chromium.mjs";

const args = parseArgs(process.argv, ["airflow", "user", "password", "page", "option", "out", "result"]);
const { context, page, consoleLines, close } = await launch(args, { width: 1400, height: 1100 });
context.setDefaultTimeout(Number(args.timeout ?? 60000));
const result = { screenshots: [] };
const prefix = args.name ?? "approval";
// the answer the page sends (PATCH …/hitlDetails): its HTTP status says whether the API took it
page.on("response", (response) => {
  if (response.request().method() === "PATCH" && response.url().includes("/hitlDetails")) {
    result.answer_status = response.status();
  }
});
const shot = async (name) => {
  const path = join(args.out, name);
  await page.screenshot({ path, fullPage: true });
  result.screenshots.push(path);
};
try {
  await page.goto(args.airflow);
  await page.locator("input[name=username]").fill(args.user);
  await page.locator("input[name=password]").fill(args.password);
  await page.locator("button[type=submit], input[type=submit]").first().click();
  await page.waitForURL((url) => !url.pathname.startsWith("/auth/login"));
  result.logged_in = true;
  await page.goto(args.page);
  const button = page.getByRole("button", { name: args.option, exact: true });
  await button.waitFor();
  await page.waitForTimeout(500);
  result.text = (await page.locator("body").innerText()).slice(0, 8000);
  await shot(`${prefix}_pending.png`);
  if (args.note !== undefined) {
    const note = page.locator("[name=element_note]");
    await note.scrollIntoViewIfNeeded();
    await note.fill(args.note);
  }
  result.enabled = await button.isEnabled();
  await button.click();
  // answered: the page says so and keeps the options, disabled
  await page.getByText("Response received", { exact: false }).first().waitFor({
    timeout: Number(args["answer-wait-ms"] ?? 30000) });
  result.enabled_after = await button.isEnabled();
  result.after = (await page.locator("body").innerText()).slice(0, 4000);
  result.clicked = true;
  await shot(`${prefix}_answered.png`);
} catch (err) {
  result.error = `${err.name}: ${err.message}`;
  try {
    result.alerts = await page.locator("[role=alert], [role=status]").allInnerTexts();
    await shot(`${prefix}_error.png`);
  } catch { /* the page may be gone */ }
} finally {
  result.console = consoleLines.slice(-50);
  writeFileSync(args.result, JSON.stringify(result, null, 1));
  await close();
}
